"""Drawing helpers: colours, overlays, legend, sample grid."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from fcn_lesson.datasets.shapes import CLASSES, PALETTE, ShapesDataset
from fcn_lesson.lessons.viz import (
    add_palette_legend,
    colorize,
    overlay,
    show_samples,
    to_numpy_image,
)

K = len(CLASSES)


def _all_labels_mask():
    m = torch.arange(K).repeat_interleave(3).repeat(4, 1)  # (4, 3K) every class
    m[0, 0] = 255
    return m


def test_colorize_maps_classes_and_ignore():
    m = _all_labels_mask()
    out = colorize(m)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (*m.shape, 3)
    pal = PALETTE.numpy()
    for k in range(K):
        sel = (m == k).numpy()
        assert (out[sel] == pal[k]).all()
    assert (out[0, 0] == 255).all()
    # numpy input and a custom palette (floats in [0, 1]) work too
    out2 = colorize(m.numpy().astype(np.uint8), palette=PALETTE.float() / 255)
    assert np.array_equal(out, out2)


def test_colorize_rejects_bad_input():
    with pytest.raises(ValueError):
        colorize(torch.full((2, 2), K))  # label outside the palette, not 255
    with pytest.raises(ValueError):
        colorize(torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        colorize(torch.zeros(2, 2))  # float labels


def test_to_numpy_image():
    x = torch.rand(3, 5, 7)
    a = to_numpy_image(x)
    assert a.shape == (5, 7, 3) and a.dtype == np.uint8
    assert np.array_equal(a, np.rint(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    assert np.array_equal(to_numpy_image(a), a)
    assert np.array_equal(to_numpy_image(torch.from_numpy(a).permute(2, 0, 1)), a)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_overlay_blends_objects_and_keeps_background(alpha):
    image, mask = ShapesDataset(1, 64, seed=2)[0]
    mask = mask.clone()
    mask[0, :4] = 255
    out = overlay(image, mask, alpha=alpha)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    base = to_numpy_image(image).astype(float)
    m = mask.numpy()
    bg = m == 0
    assert np.array_equal(out[bg], base[bg].astype(np.uint8))
    colours = np.concatenate([PALETTE.numpy(), np.zeros((250, 3))]).astype(float)
    colours[255] = 255
    expected = (1 - alpha) * base + alpha * colours[m]
    assert np.abs(out[~bg] - expected[~bg]).max() <= 1.0
    assert (m > 0).any()


def test_overlay_on_background_only_is_the_image():
    image = torch.rand(3, 8, 9)
    out = overlay(image, torch.zeros(8, 9, dtype=torch.long))
    assert np.array_equal(out, to_numpy_image(image))
    with pytest.raises(ValueError):
        overlay(image, torch.zeros(8, 8, dtype=torch.long))


def test_legend_on_axes_and_figure():
    fig, ax = plt.subplots()
    leg = add_palette_legend(ax)
    texts = [t.get_text() for t in leg.get_texts()]
    assert texts == list(CLASSES)
    face = leg.legend_handles[1].get_facecolor()
    assert np.allclose(face[:3], PALETTE[1].numpy() / 255)
    leg2 = add_palette_legend(fig, classes=CLASSES[:3])
    assert len(leg2.get_texts()) == 3
    assert leg2 in fig.legends


def test_show_samples_grid():
    ds = ShapesDataset(5, 48, seed=1)
    fig = show_samples(ds, [0, 3])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * 2
    assert all(not ax.axison for ax in fig.axes)
    assert fig.axes[0].get_title() == "image #0" and fig.axes[1].get_title() == "ground truth"
    assert len(fig.legends) == 1

    preds = {
        "fcn32s": [torch.zeros(48, 48, dtype=torch.long)] * 3,
        "fcn8s": [ds[i][1] for i in (0, 3, 4)],
    }
    fig = show_samples(ds, [0, 3, 4], predictions=preds)
    assert len(fig.axes) == 3 * 4
    assert [ax.get_title() for ax in fig.axes[:4]] == [
        "image #0",
        "ground truth",
        "fcn32s",
        "fcn8s",
    ]
    # the ground-truth panel shows the colourised mask
    shown = fig.axes[5].get_images()[0].get_array()
    assert np.array_equal(np.asarray(shown), colorize(ds[3][1]))
    fig.canvas.draw()  # renders without error
    # every row's titles sit below the images of the row above (in notebook 5's wide grid of
    # six columns they used to overlap them)
    fig = show_samples(ds, [0, 3], {k: [ds[i][1] for i in (0, 3)] for k in "abcd"}, size=2.2)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for upper, lower in zip(fig.axes[:6], fig.axes[6:], strict=True):
        title_top = lower.title.get_window_extent(renderer).y1
        assert title_top <= upper.get_images()[0].get_window_extent(renderer).y0 + 0.5


def test_show_samples_rejects_mismatched_predictions():
    ds = ShapesDataset(3, 32)
    with pytest.raises(ValueError):
        show_samples(ds, [0, 1], predictions={"p": [ds[0][1]]})
    with pytest.raises(ValueError):
        show_samples(ds, [0], predictions={"p": [torch.zeros(16, 16, dtype=torch.long)]})
    with pytest.raises(ValueError):
        show_samples(ds, [])
