import re

from matplotlib import colormaps

from fcn_lesson.lessons.legends import colour_bar, swatch


def test_swatch_shows_the_colour_and_escapes_the_label():
    html = swatch((255, 0, 10), "a<b")
    assert "background:rgb(255,0,10)" in html and html.rstrip().endswith("a&lt;b</span>")


def test_colour_bar_runs_through_the_colour_map_between_its_end_values():
    html = colour_bar("viridis", -0.000123456, 10.0, " (note)", width=80)
    assert html.startswith("-0.000123<span") and html.endswith("10 (note)") and "width:80px" in html
    stops = [tuple(map(int, m)) for m in re.findall(r"rgb\((\d+),(\d+),(\d+)\)", html)]
    ends = colormaps["viridis"]([0.0, 1.0], bytes=True)[:, :3]
    assert len(stops) == 9 and stops[0] == tuple(ends[0]) and stops[-1] == tuple(ends[1])
