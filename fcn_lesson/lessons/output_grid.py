"""The output grid of a convolutionalized classifier (notebook 1): which score-map cell reads which
224-pixel window and which receptive field, for any input size, and its static figures.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.patches import Rectangle

from fcn_lesson.core.geometry import VGG_INPUT, Stage, meta_vgg16, stage_table
from fcn_lesson.core.models import FCN32s
from fcn_lesson.datasets.shapes import ShapesDataset

# head name -> (score map row of stage_table, builder of a weightless model with that head)
HEADS = {
    "convolutionalized VGG16": ("fc8", lambda: meta_vgg16(convolutional=True)),
    "FCN (fc6 padding 3)": ("score_fr", lambda: _meta(FCN32s)),
}


MAX_SIDE = 640


def _meta(cls):
    with torch.device("meta"):
        return cls(num_classes=21)


@functools.cache
def _head_model(head: str):
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    return HEADS[head][1]()


@dataclass(frozen=True)
class OutputGrid:
    """The score map of `head` on a (height, width) image, and one cell's two boxes
    (top, left, bottom, right) in pixel-edge coordinates (see `Stage.box`)."""

    height: int
    width: int
    head: str
    stage: Stage  # the score map's row of `stage_table`
    cell: tuple[int, int]
    window: tuple[float, ...]  # the 224-pixel window the classifier reads for this cell
    receptive_field: tuple[float, ...]  # every pixel the cell's score can depend on

    @property
    def map_size(self) -> tuple[int, int]:
        return self.stage.shape[1], self.stage.shape[2]

    def centers(self) -> np.ndarray:
        """(h w, 2) x, y of every cell's centre, in pixel-edge coordinates."""
        h, w = self.map_size
        ys = self.stage.center + 0.5 + self.stage.stride * np.arange(h)
        xs = self.stage.center + 0.5 + self.stage.stride * np.arange(w)
        return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)

    def frame(self, margin: int = 8) -> tuple[float, ...]:
        """(top, left, bottom, right): the image and every cell's receptive field, `margin`
        pixels more on each side. It depends on the image size and head only, so a picture
        of this extent holds still while the chosen cell moves."""
        h, w = self.map_size
        first, last = self.stage.box(0, 0), self.stage.box(h - 1, w - 1)
        return (min(0, first[0]) - margin, min(0, first[1]) - margin,
                max(self.height, last[2]) + margin, max(self.width, last[3]) + margin)


def output_grid(height: int, width: int, row: int = 0, col: int = 0,
                head: str = "convolutionalized VGG16") -> OutputGrid:
    """The explorer's computation, without drawing: the score map size for an image of
    (height, width), and the 224-px window and receptive field of cell (row, col)."""
    model = _head_model(head)
    stage = next(r for r in stage_table(model, height, width) if r.name == HEADS[head][0])
    return OutputGrid(height, width, head, stage, (row, col),
                      window=stage.box(row, col, VGG_INPUT),
                      receptive_field=stage.box(row, col))


def draw_output_grid(figure, grid: OutputGrid, image: np.ndarray) -> None:
    """Draw `grid` on `figure`: the image with the stride grid, every cell's centre, and the
    chosen cell's window and receptive field; beside it the score map with the chosen cell."""
    ax, map_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": (3, 1.2)})
    h, w = grid.map_size
    row, col = grid.cell
    ax.set_facecolor("0.85")  # outside the image: what zero padding sees
    ax.imshow(image[:grid.height, :grid.width], interpolation="nearest",
              extent=(0, grid.width, grid.height, 0))
    stride = grid.stage.stride
    xs, ys = np.arange(0, grid.width + 1, stride), np.arange(0, grid.height + 1, stride)
    ax.add_collection(LineCollection([((x, 0), (x, grid.height)) for x in xs]
                                     + [((0, y), (grid.width, y)) for y in ys],
                                     colors="white", linewidths=0.5, alpha=0.6))
    ax.scatter(*grid.centers().T, s=8, color="black", label="cell centres")
    rf_top, rf_left, rf_bottom, rf_right = grid.receptive_field
    ax.add_patch(Rectangle((rf_left, rf_top), rf_right - rf_left, rf_bottom - rf_top, fill=False,
                           edgecolor="tab:red", linestyle="--", linewidth=2,
                           label="receptive field"))
    top, left, bottom, right = grid.window
    ax.add_patch(Rectangle((left, top), right - left, bottom - top,
                           facecolor=(0.12, 0.47, 0.71, 0.25), edgecolor="tab:blue",
                           linewidth=2.5, label=f"{VGG_INPUT}-px window"))
    ax.plot([(left + right) / 2], [(top + bottom) / 2], "X", color="tab:red", markersize=10)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    # Room for every cell's receptive field, as in the explorer.
    frame_top, frame_left, frame_bottom, frame_right = grid.frame()
    ax.set_xlim(frame_left, frame_right)
    ax.set_ylim(frame_bottom, frame_top)
    ax.set_title(f"{grid.height} x {grid.width} image: cell ({row}, {col}) of the "
                 f"{h} x {w} score map", fontsize=10)
    map_ax.imshow(np.zeros((h, w)), cmap="Greys", vmin=0, vmax=1)
    map_ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, facecolor="tab:blue",
                               edgecolor="tab:red"))
    map_ax.set_xticks(np.arange(w + 1) - 0.5, minor=True)
    map_ax.set_yticks(np.arange(h + 1) - 0.5, minor=True)
    map_ax.grid(which="minor", color="0.7", linewidth=0.5)
    map_ax.tick_params(which="minor", length=0)
    map_ax.set_xlabel("column")
    map_ax.set_ylabel("row")
    map_ax.set_title(f"score map {h} x {w}\n({grid.head})", fontsize=9)


def sample_canvas(seed: int = 1) -> np.ndarray:
    image, _ = ShapesDataset(1, (MAX_SIDE, MAX_SIDE), seed=seed)[0]
    return image.permute(1, 2, 0).numpy()


def plot_output_grid(grid: OutputGrid, image: np.ndarray | None = None):
    """A pyplot figure of `grid`: the explorer's static picture (`draw_output_grid`)."""
    import matplotlib.pyplot as plt

    image = sample_canvas() if image is None else image
    if image.shape[0] < grid.height or image.shape[1] < grid.width:
        raise ValueError(f"image {image.shape[:2]} is smaller than the grid's input "
                         f"{(grid.height, grid.width)}")
    fig = plt.figure(figsize=(11, 4.6))
    draw_output_grid(fig, grid, image)
    fig.tight_layout()
    return fig


def plot_window_mismatch(mismatch: torch.Tensor, title: str = ""):
    """(7, 7) per-cell relative differences between the pool5 features of a 224-pixel crop
    and the same 7x7 window of pool5 in the whole image, annotated in percent."""
    import matplotlib.pyplot as plt

    values = mismatch.detach().cpu().double().numpy()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(values * 100, cmap="magma", vmin=0)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j] * 100
            label = f"{v:.0f}" if v >= 0.5 or v == 0 else f"{v:.0e}"
            ax.text(j, i, label, ha="center", va="center",
                    fontsize=7, color="white" if v < 60 * values.max() else "black")
    fig.colorbar(im, ax=ax, label="relative difference (%)")
    ax.set_xlabel("pool5 column within the window")
    ax.set_ylabel("pool5 row within the window")
    ax.set_title(title or "pool5 of the crop vs the same window of the whole image", fontsize=10)
    fig.tight_layout()
    return fig
