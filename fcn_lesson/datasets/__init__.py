"""Data: the classroom shapes and PASCAL VOC. Imports only `fcn_lesson.core`.
"""
