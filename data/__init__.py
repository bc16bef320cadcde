"""The shipped classroom checkpoints, installed as the package `fcn_lesson.checkpoints`.

This folder is mapped to that package in pyproject.toml so that a wheel carries the files;
`fcn_lesson.classroom` reads them through `importlib.resources`. See README.md here for how
each checkpoint was trained.
"""
