"""Tooling outside the lesson: the benchmark and the textbook baseline it times against.

Nothing in `fcn_lesson` imports this package. Run it from the repository root:
`python -m benchmarks --help`.
"""
