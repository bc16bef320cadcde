"""What every explorer shares: controls -> `update()` -> `result` and the view.

A subclass builds its controls and its picture, then calls `_start(controls)`. Its `update()`
computes from the controls' values (on cached data: a slider move never reruns a backbone),
draws its pictures, puts the new view on screen as one HTML value with the pictures inlined
(`fcn_lesson.widgets.view`: one message to the browser per move) and returns the result, which
the base keeps as `.result` (the one name tests and notebooks read). `widget()` lays the
controls out; the MIME bundle shows that live widget where a kernel runs and a PNG of the
current view everywhere else (GitHub, nbviewer), so a notebook reads without a kernel.
"""

from __future__ import annotations

import contextlib
import time

import ipywidgets as widgets

from fcn_lesson.widgets.view import static_bundle


def check_models_and_dataset(models, dataset, image: int) -> dict:
    """`models` as a dict name -> FCN (one FCN becomes {its variant: it}), after checking that
    `dataset` has images and that `image` is one of them: what the explorers of trained models
    (layers, pixel) take."""
    from fcn_lesson.core.models import FCN

    if isinstance(models, FCN):
        models = {models.variant: models}
    if not models or not all(isinstance(m, FCN) for m in models.values()):
        raise TypeError("models must be an FCN or a non-empty dict of name -> FCN")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: nothing to explore")
    if not 0 <= image < len(dataset):
        raise ValueError(f"image must be in [0, {len(dataset) - 1}], got {image}")
    return dict(models)


class Explorer:
    """The base of the lesson's explorers (see the module docstring)."""

    #: what the static picture stands for, in its text/plain fallback
    what = "explorer"
    result = None
    #: seconds the last control change took to update the view (the notebooks' speed checks)
    last_update_seconds = 0.0
    _busy = False

    def update(self):
        """Compute from the controls' values, show the new view, return the result."""
        raise NotImplementedError

    def widget(self) -> widgets.Widget:
        """The controls and the picture, laid out."""
        raise NotImplementedError

    def static_png(self) -> bytes:
        """The current view as PNG bytes, for readers without a kernel."""
        raise NotImplementedError

    def _start(self, controls) -> None:
        """The first view, then watch `controls`: every change updates and redraws."""
        self.result = self.update()
        for control in controls:
            control.observe(self._on_change, names="value")

    @contextlib.contextmanager
    def quietly(self):
        """Move controls from inside `update` (e.g. narrowing a slider's range) without their
        observers re-entering `update` halfway through."""
        busy, self._busy = self._busy, True
        try:
            yield
        finally:
            self._busy = busy

    def _on_change(self, _change) -> None:
        if self._busy:
            return
        start = time.perf_counter()
        self.result = self.update()
        self.last_update_seconds = time.perf_counter() - start

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return static_bundle(self.widget(), self.static_png(), self.what)
