"""`python -m fcn_lesson predict` on the images people actually have: each gets a correct mask or a
one-line error (exit 2), never a traceback and never a half-written output file."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_lesson.cli import PREDICT_MAX_SIDE, main
from fcn_lesson.datasets.shapes import PALETTE, ShapesDataset

PALETTE_COLOURS = {tuple(c) for c in PALETTE.tolist()}


def _shapes_rgb(height=100, width=150, seed=5) -> np.ndarray:
    image, _ = ShapesDataset(1, (height, width), seed=seed)[0]
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _predict(capsys, image, tmp_path, *extra) -> tuple[int, np.ndarray | None, str]:
    """Run predict on `image` (a path); (exit code, the mask PNG as an array or None, stderr)."""
    out = tmp_path / "mask.png"
    out.unlink(missing_ok=True)
    code = main(["predict", str(image), "--variant", "fcn8s", "--device", "cpu", "--out", str(out), *extra])
    err = capsys.readouterr().err
    return code, (np.asarray(Image.open(out).convert("RGB")) if out.exists() else None), err


def _one_line_error(code, err):
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_a_plain_rgb_png_gives_a_mask_of_its_size(tmp_path, capsys):
    png = tmp_path / "shapes.png"
    Image.fromarray(_shapes_rgb()).save(png)
    code, mask, _ = _predict(capsys, png, tmp_path)
    assert code == 0 and mask.shape == (100, 150, 3)
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= PALETTE_COLOURS
    assert len({tuple(c) for c in mask.reshape(-1, 3)}) > 1  # objects found, not all background


@pytest.mark.parametrize("content, reason", [
    (b"not an image at all", "cannot identify"),
    ("truncated", "truncated"),  # a real PNG cut short: the header reads, the pixels do not
])
def test_a_corrupt_file_is_one_line_and_leaves_the_old_output_alone(tmp_path, capsys, content, reason):
    bad = tmp_path / "bad.png"
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(_shapes_rgb()).save(buffer, format="PNG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    bad.write_bytes(content)
    out = tmp_path / "mask.png"
    out.write_bytes(b"an earlier mask")
    code = main(["predict", str(bad), "--out", str(out)])
    _one_line_error(code, err := capsys.readouterr().err)
    assert "cannot read" in err and reason in err
    assert out.read_bytes() == b"an earlier mask"


def test_a_folder_is_one_line(tmp_path, capsys):
    code, mask, err = _predict(capsys, tmp_path, tmp_path)
    _one_line_error(code, err)
    assert "is a folder" in err and mask is None


def test_greyscale_8_and_16_bit_give_the_same_mask(tmp_path, capsys):
    # Pillow's own RGB conversion clips 16-bit values at 255: the 16-bit image would come out white.
    grey = np.asarray(Image.fromarray(_shapes_rgb()).convert("L"))
    Image.fromarray(grey).save(grey8 := tmp_path / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(grey16 := tmp_path / "grey16.png")
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(rgb := tmp_path / "grey_rgb.png")
    assert Image.open(grey16).mode.startswith("I")  # the test really is on a 16-bit file
    masks = []
    for path in (grey8, grey16, rgb):
        code, mask, _ = _predict(capsys, path, tmp_path)
        assert code == 0
        masks.append(mask)
    np.testing.assert_array_equal(masks[0], masks[2])
    np.testing.assert_array_equal(masks[1], masks[2])


def test_rgba_is_seen_as_shown_over_white(tmp_path, capsys):
    rgb = _shapes_rgb()
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    rgba[:, 75:, :3] = 0  # hidden colour under transparent pixels: must not be what the model sees
    rgba[:, 75:, 3] = 0
    Image.fromarray(rgba, "RGBA").save(png_rgba := tmp_path / "rgba.png")
    on_white = rgb.copy()
    on_white[:, 75:] = 255
    Image.fromarray(on_white).save(png_white := tmp_path / "white.png")
    code, mask_rgba, _ = _predict(capsys, png_rgba, tmp_path)
    assert code == 0
    np.testing.assert_array_equal(mask_rgba, _predict(capsys, png_white, tmp_path)[1])


def test_a_one_pixel_image(tmp_path, capsys):
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(png := tmp_path / "dot.png")
    code, mask, _ = _predict(capsys, png, tmp_path)
    assert code == 0 and mask.shape == (1, 1, 3)


def test_a_large_image_is_predicted_smaller_and_its_mask_scaled_back(tmp_path, capsys):
    # With --max-side 150, a 300 x 200 image is predicted at 150 x 100: the mask is that
    # prediction, each pixel repeated 2 x 2 (up to object edges, where the bilinear shrink of the
    # enlarged image differs slightly from the original).
    big = Image.fromarray(_shapes_rgb()).resize((300, 200), Image.Resampling.NEAREST)
    big.save(png := tmp_path / "big.png")
    code, mask, _ = _predict(capsys, png, tmp_path, "--max-side", "150")
    assert code == 0 and mask.shape == (200, 300, 3)
    Image.fromarray(_shapes_rgb()).save(small := tmp_path / "small.png")
    expected = _predict(capsys, small, tmp_path)[1].repeat(2, 0).repeat(2, 1)
    assert (mask == expected).all(axis=2).mean() > 0.99


@pytest.mark.slow
def test_a_6000_by_4000_photo(tmp_path):
    # In a subprocess, as a user runs it: peak memory stays that of a PREDICT_MAX_SIDE image.
    photo = Image.fromarray(_shapes_rgb(100, 150)).resize((6000, 4000), Image.Resampling.BILINEAR)
    photo.save(jpeg := tmp_path / "photo.jpg", quality=90)
    out = tmp_path / "photo_mask.png"
    done = subprocess.run([sys.executable, "-m", "fcn_lesson", "predict", str(jpeg), "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"predicted at {PREDICT_MAX_SIDE}x1365" in done.stdout
    assert Image.open(out).size == (6000, 4000)


def test_a_failed_write_leaves_no_file(tmp_path, capsys, monkeypatch):
    Image.fromarray(_shapes_rgb()).save(png := tmp_path / "shapes.png")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def disk_full(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    code = main(["predict", str(png), "--out", str(out_dir / "mask.png")])
    _one_line_error(code, err := capsys.readouterr().err)
    assert "No space left" in err
    assert list(out_dir.iterdir()) == []  # neither the mask nor a temporary file


@pytest.mark.parametrize("out, reason", [("missing/mask.png", "no folder"), (".", "is a folder")])
def test_an_output_path_that_cannot_be_written(tmp_path, capsys, out, reason):
    Image.fromarray(_shapes_rgb()).save(png := tmp_path / "shapes.png")
    code = main(["predict", str(png), "--out", str(tmp_path / out)])
    _one_line_error(code, err := capsys.readouterr().err)
    assert reason in err


def test_a_long_command_is_printed_as_short_shell_lines_that_join_back():
    from fcn_lesson.cli import command_line, in_class_commands

    for command in in_class_commands(Path("checkpoints/class")):
        text = command_line(command, width=88)
        lines = text.split(" \\\n")
        assert len(lines) > 1 and all(len(line) <= 88 for line in lines)
        assert " ".join(line.strip() for line in lines) == "python -m fcn_lesson " + " ".join(command)
        # a flag stays on the line of its value
        assert not any(line.rstrip().split()[-1].startswith("--") for line in lines)
