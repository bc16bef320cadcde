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
