"""Notebook 5's fusion explorer: scale or switch off the pool4 and pool3 skips of a trained
FCN-8s (or the pool4 skip of an FCN-16s) and watch the prediction, one class's score map and
the image's mean IoU change.

The backbone runs when the explorer is built, on every image of a small dataset at once
(`ScoreMapCache`); a control move only re-runs `model.fuse` on the cached score maps (well under
a millisecond) and re-encodes the PNGs that change.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fcn_lesson.core.models import FCN
from fcn_lesson.datasets.shapes import CLASSES, PALETTE
from fcn_lesson.lessons.fusion import image_mean_iou
from fcn_lesson.lessons.legends import swatch
from fcn_lesson.lessons.viz import colorize, to_numpy_image
from fcn_lesson.widgets.base import Explorer
from fcn_lesson.widgets.score_cache import ScoreMapCache
from fcn_lesson.widgets.view import encode_png, figure_png, panel_html, row_html, view_html

__all__ = ["FusionExplorer", "FusionView"]

_SCORE_CMAP = colormaps["RdBu_r"]  # as in fcn_lesson.lessons.fusion: red for, blue against


@dataclass(frozen=True)
class FusionView:
    """What the explorer shows for one setting of its controls."""

    image_index: int
    class_index: int
    pool4_gain: float
    pool3_gain: float
    prediction: torch.Tensor  # (H, W) argmax of the re-fused scores
    class_score: torch.Tensor  # (H, W) the chosen class's final score
    score_limit: float  # the colour scale is [-score_limit, score_limit]
    mean_iou: float  # this prediction against the image's ground truth
    trained_mean_iou: float  # ... and the trained net's (both gains 1)


def _score_rgb(score: torch.Tensor, limit: float) -> np.ndarray:
    rgba = _SCORE_CMAP(np.clip(score.numpy() / (2 * limit) + 0.5, 0.0, 1.0), bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


class FusionExplorer(Explorer):
    """Pick an image and a class, set the pool4 and pool3 gains (0 = skip off, 1 = trained).

    Shows the image, its ground truth, the prediction re-fused with those gains (class
    colours as everywhere in the lesson, with a legend) and the chosen class's final score
    map, and reads out the image's mean IoU. `update()` recomputes from the controls' values
    and returns a `FusionView` (kept as `.result`); moving a control calls it. Display with
    `display(explorer)`.

    `dataset[i]` must give (image (3, H, W), mask (H, W)). The model is put in eval mode. The
    backbone runs once, on the whole dataset, while the explorer is built (`ScoreMapCache`: in
    batches, for up to 512 images; a larger dataset is run image by image on first view);
    what each image's moves share is kept for the last `cache_size` images, and the prediction
    for each of the last `cache_size` (image, gains) settings.
    """

    what = "fusion explorer"

    def __init__(self, model: FCN, dataset, image_index: int = 0, class_index: int | None = None,
                 classes=CLASSES, palette=PALETTE, zoom: int = 2, cache_size: int = 8):
        if not isinstance(model, FCN) or model.skips < 1:
            raise ValueError("the fusion explorer needs an FCN-16s or FCN-8s; an FCN-32s has no skip")
        if len(dataset) == 0:
            raise ValueError("the dataset is empty: nothing to explore")
        if not 0 <= image_index < len(dataset):
            raise ValueError(f"image_index {image_index} is outside the dataset of {len(dataset)} images")
        if len(classes) != model.num_classes:
            raise ValueError(f"{len(classes)} class names for a model with {model.num_classes} classes")
        self.model = model.eval()
        self.dataset, self.classes, self.palette, self.zoom = dataset, tuple(classes), palette, zoom
        self.score_maps = ScoreMapCache(self.model, dataset)
        self._entry = lru_cache(maxsize=cache_size)(self._image_entry)
        self._fused = lru_cache(maxsize=cache_size)(self._fuse_with_gains)

        self.image_index = widgets.IntSlider(image_index, min=0, max=len(dataset) - 1,
                                             description="image")
        if class_index is None:  # the first object class in the first image
            present = self._entry(image_index)["mask"].unique().tolist()
            class_index = next((c for c in present if c != 0), 0)
        self.class_index = widgets.Dropdown(options=[(n, k) for k, n in enumerate(self.classes)],
                                            value=class_index, description="class")
        slider = dict(min=0.0, max=2.0, step=0.1, readout_format=".1f",
                      style={"description_width": "initial"})
        self.pool4_gain = widgets.FloatSlider(1.0, description="pool4 gain", **slider)
        self.pool3_gain = widgets.FloatSlider(1.0, description="pool3 gain",
                                              disabled=model.skips < 2, **slider)
        self.view = widgets.HTML()
        colours = colorize(torch.arange(len(self.classes))[None], palette)[0]  # (K, 3) uint8
        self._legend = "".join(swatch(rgb, name)
                               for name, rgb in zip(self.classes, colours, strict=True))
        self._start((self.image_index, self.class_index, self.pool4_gain, self.pool3_gain))

    @torch.no_grad()
    def _image_entry(self, index: int) -> dict:
        """What every move on one image starts from: its score maps (no backbone: they are
        cached), the trained net's prediction and scores, and the image and ground truth as PNGs."""
        image, mask = self.dataset[index]
        maps, size = self.score_maps[index], tuple(image.shape[-2:])
        out = self.model.fuse(maps, None, *size)["out"][0].cpu()
        trained = out.argmax(0)
        return {
            "maps": maps, "size": size, "mask": mask, "trained_pred": trained,
            "trained_mean_iou": image_mean_iou(trained, mask, self.model.num_classes),
            # One colour scale per image and class (the trained scores'), so moving a
            # gain slider changes the colours, not the scale.
            "limits": out.flatten(1).abs().amax(1).clamp_min(1e-6).tolist(),
            "image_png": encode_png(to_numpy_image(image), self.zoom),
            "mask_png": encode_png(colorize(mask, self.palette), self.zoom),
        }

    @torch.no_grad()
    def _fuse_with_gains(self, index: int, pool4_gain: float, pool3_gain: float) -> dict:
        """One image re-fused with these gains: the scores, the prediction (and its PNG), its
        mean IoU and the share of pixels whose class the gains change. A class move reuses it."""
        entry = self._entry(index)
        scores = self.model.fuse(entry["maps"], None, *entry["size"], pool4_gain, pool3_gain)["out"][0]
        scores = scores.cpu()
        prediction = scores.argmax(0)
        return {
            "scores": scores, "prediction": prediction,
            "png": encode_png(colorize(prediction, self.palette), self.zoom),
            "mean_iou": image_mean_iou(prediction, entry["mask"], self.model.num_classes),
            "changed": (prediction != entry["trained_pred"]).float().mean().item(),
        }

    def update(self) -> FusionView:
        index, cls = self.image_index.value, self.class_index.value
        pool4_gain, pool3_gain = self.pool4_gain.value, self.pool3_gain.value
        entry, fused = self._entry(index), self._fused(index, pool4_gain, pool3_gain)
        limit = entry["limits"][cls]
        view = FusionView(
            image_index=index, class_index=cls, pool4_gain=pool4_gain, pool3_gain=pool3_gain,
            prediction=fused["prediction"], class_score=fused["scores"][cls], score_limit=limit,
            mean_iou=fused["mean_iou"], trained_mean_iou=entry["trained_mean_iou"])
        readout = (
            f"image {index}: mean IoU <b>{view.mean_iou:.3f}</b> with pool4 gain {pool4_gain:.1f}, "
            f"pool3 gain {pool3_gain:.1f} (trained net, gains 1: {view.trained_mean_iou:.3f}); "
            f"{100 * fused['changed']:.1f}% of the pixels change class")
        score_png = encode_png(_score_rgb(view.class_score, limit), self.zoom)
        panels = row_html(
            panel_html("<b>image</b>", entry["image_png"], "image"),
            panel_html("<b>ground truth</b>", entry["mask_png"], "ground truth"),
            panel_html("<b>prediction</b>", fused["png"], "prediction"),
            panel_html(f"<b>score for '{self.classes[cls]}'</b>", score_png, "class score"))
        scale = (f"colour scale: blue {-limit:.1f} · white 0 · red {limit:.1f} "
                 "(the trained net's range on this image; beyond it, clipped)")
        self.view.value = view_html(readout, panels, self._legend, scale)
        return view

    def widget(self) -> widgets.Widget:
        controls = widgets.HBox([self.image_index, self.class_index])
        gains = widgets.HBox([self.pool4_gain, self.pool3_gain])
        return widgets.VBox([controls, gains, self.view])

    def static_png(self) -> bytes:
        """The four panels of the current view, with their titles, as one PNG: what a reader
        without a kernel sees in place of the widget."""
        v = self.result
        entry = self._entry(v.image_index)
        image, mask = self.dataset[v.image_index]
        panels = {"image": to_numpy_image(image), "ground truth": colorize(mask, self.palette),
                  "prediction": colorize(v.prediction, self.palette),
                  f"score for '{self.classes[v.class_index]}'": _score_rgb(v.class_score,
                                                                           v.score_limit)}
        height, width = entry["size"]
        figure = Figure(figsize=(4 * width * self.zoom / 72 + 0.8, height * self.zoom / 72 + 0.9),
                        dpi=72)
        FigureCanvasAgg(figure)
        for ax, (title, rgb) in zip(figure.subplots(1, 4), panels.items(), strict=True):
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(title, fontsize=11)
            ax.set_axis_off()
        figure.suptitle(f"image {v.image_index}: pool4 gain {v.pool4_gain:.1f}, pool3 gain "
                        f"{v.pool3_gain:.1f}, mean IoU {v.mean_iou:.3f}", fontsize=11)
        figure.tight_layout()
        return figure_png(figure)
