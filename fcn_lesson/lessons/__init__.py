"""One module per notebook topic: its computations and static figures (no ipywidgets).
Imports `core`, `datasets` and `engine`.
"""
