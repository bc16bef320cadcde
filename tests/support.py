"""Helpers shared by several test files."""

import time

import torch
from torch import nn

from fcn_lesson.classroom import make_classroom_model


def scored_classroom_model(variant: str, seed: int = 0):
    """An untrained classroom model in eval mode with random score layers: they start at zero,
    and random ones make every skip and score map show in the output."""
    torch.manual_seed(seed)
    model = make_classroom_model(variant).eval()
    with torch.no_grad():
        for name in ("score_fr", "score_pool4", "score_pool3"):
            if hasattr(model, name):
                nn.init.normal_(getattr(model, name).weight, std=0.1)
    return model


def set_controls(explorer, **values):
    """Move an explorer's controls as a student would (`explorer.<name>.value = ...`) and
    return `explorer.result`, which the controls' observers have updated."""
    for name, value in values.items():
        getattr(explorer, name).value = value
    return explorer.result


def fastest_seconds(call, repeats: int = 5) -> float:
    """The fastest of `repeats` timed calls (the least disturbed by other work on the machine)."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return min(timings)


def median_move_seconds(control, values) -> float:
    """The median time of setting `control.value` to each of `values` in turn, as a student's
    move does: the explorer's `update()` and `render()` run inside each assignment."""
    timings = []
    for value in values:
        start = time.perf_counter()
        control.value = value
        timings.append(time.perf_counter() - start)
    return sorted(timings)[len(timings) // 2]


def smallest_text_px(figure, shown_width_px: float = 900, dpi: float = 100) -> float:
    """The height in screen pixels of the figure's smallest visible text when a notebook shows
    it at `dpi` but at most `shown_width_px` wide (wider figures are scaled down to fit)."""
    from matplotlib.text import Text

    scale = min(dpi, shown_width_px / figure.get_figwidth()) / 72  # pixels per point
    sizes = [t.get_fontsize() for t in figure.findobj(Text)
             if t.get_text().strip() and t.get_visible()
             and (t.axes is None or t.axes.get_visible())]
    return min(sizes) * scale
