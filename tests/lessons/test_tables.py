"""The one text-table formatter, and the stage table printed with it."""

import math

import pytest

from fcn_lesson.core.geometry import meta_vgg16, stage_table
from fcn_lesson.lessons.tables import format_stage_table, format_table


def test_format_table_aligns_numbers():
    text = format_table([{"variant": "FCN-8s", "params": 2105242, "gflops": 0.2237, "x": math.nan},
                         {"variant": "FCN-32s", "params": 12, "gflops": 10.0, "x": 1.0}], digits=2)
    lines = text.splitlines()
    assert lines[0].split() == ["variant", "params", "GFLOPs", "x"]
    assert set(lines[1]) == {"-"}
    assert lines[2].split() == ["FCN-8s", "2,105,242", "0.22", "-"]
    assert lines[3].split() == ["FCN-32s", "12", "10.00", "1.00"]
    assert len({len(line) for line in lines}) == 1  # columns aligned
    assert lines[2].startswith("FCN-8s ") and lines[2].endswith(" -")  # words left, numbers right
    mixed = format_table([{"width": "full VGG16", "image": "224 x 224"},
                          {"width": "classroom 1/8", "image": "64 x 64"}]).splitlines()
    assert mixed[2] == "full VGG16     224 x 224"
    assert mixed[3] == "classroom 1/8    64 x 64"
    with pytest.raises(ValueError, match="no rows"):
        format_table([])


def test_format_stage_table():
    text = format_stage_table(stage_table(meta_vgg16(), 375, 500))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["layer", "output"]
    assert lines[2].split() == ["input", "3", "x", "375", "x", "500", "1", "1", "0"]
    assert lines[-1].split() == ["fc8", "1000", "-", "-", "-"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
