"""Training, evaluation, prediction, metrics, checkpoints and the data-parallel plumbing.
Imports `core` and `datasets` only.
"""
