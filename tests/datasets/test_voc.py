"""PASCAL VOC helpers, tested offline on data the tests make themselves."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode

from fcn_lesson.datasets.voc import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VOC_CLASSES,
    VOC_PALETTE,
    VOCSegmentation,
    decode_mask,
    denormalize,
    eval_transforms,
    fake_voc_tree,
    mask_to_pil,
    pad_collate,
    train_transforms,
)
from fcn_lesson.datasets.voc_files import check_voc_root, safe_extract

VOC = Path("VOCdevkit") / "VOC2012"


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return fake_voc_tree(tmp_path / "data", num_images=4, size=(60, 80), seed=0)


def _raw_masks(root: Path, split: str = "train") -> list[np.ndarray]:
    ids = (root / VOC / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    out = []
    for i in ids:
        with PIL.Image.open(root / VOC / "SegmentationClass" / f"{i}.png") as im:
            assert im.mode == "P"
            out.append(np.array(im))
    return out


# ---------------------------------------------------------------------------- palette, classes


def test_palette_known_entries():
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    assert tuple(VOC_PALETTE[0]) == (0, 0, 0)
    assert tuple(VOC_PALETTE[1]) == (128, 0, 0)
    assert tuple(VOC_PALETTE[2]) == (0, 128, 0)
    assert tuple(VOC_PALETTE[15]) == (192, 128, 128)
    assert tuple(VOC_PALETTE[255]) == (224, 224, 192)
    assert len({tuple(c) for c in VOC_PALETTE}) == 256  # every label its own colour


def test_classes_and_normalisation_constants():
    assert len(VOC_CLASSES) == 21
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"
    assert IGNORE_INDEX == 255
    # torchvision's VGG16 (RGB, [0, 1]) statistics, not Caffe's BGR [0, 255] means
    assert IMAGENET_MEAN == pytest.approx((0.485, 0.456, 0.406))
    assert IMAGENET_STD == pytest.approx((0.229, 0.224, 0.225))


def test_mask_png_roundtrip_and_rgb_decoding(tmp_path):
    labels = np.array([[0, 1, 15], [20, 255, 7]], dtype=np.uint8)
    mask_to_pil(labels).save(tmp_path / "m.png")
    with PIL.Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(decode_mask(im), labels)
        # a mask someone re-saved as RGB still decodes through the palette
        np.testing.assert_array_equal(decode_mask(im.convert("RGB")), labels)


# ---------------------------------------------------------------------------- dataset


def test_fake_tree_through_dataset_eval(voc_root):
    ds = VOCSegmentation(voc_root, image_set="train")
    raw = _raw_masks(voc_root, "train")
    assert len(ds) == len(raw) == 2
    assert len(VOCSegmentation(voc_root, image_set="val")) == 2
    assert ds.classes == VOC_CLASSES
    for k in range(len(ds)):
        image, mask = ds[k]
        assert type(image) is torch.Tensor and type(mask) is torch.Tensor
        assert image.shape == (3, 60, 80) and image.dtype == torch.float32
        assert mask.shape == (60, 80) and mask.dtype == torch.int64
        # eval transform: no geometric change, labels exact, 255 borders kept
        np.testing.assert_array_equal(mask.numpy(), raw[k])
        assert IGNORE_INDEX in mask and (mask == 0).any() and ((mask > 0) & (mask < 21)).any()
        # image is normalised and aligned with the stored JPEG
        ids = (voc_root / VOC / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
        with PIL.Image.open(voc_root / VOC / "JPEGImages" / f"{ids[k]}.jpg") as im:
            jpeg = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(denormalize(image), jpeg, atol=1e-5, rtol=0)
        assert image.mean().abs() < 3


def test_train_transforms_only_known_labels(voc_root):
    torch.manual_seed(0)
    ds = VOCSegmentation(voc_root, transforms=train_transforms(crop_size=64))
    allowed = [set(np.unique(m).tolist()) | {IGNORE_INDEX} for m in _raw_masks(voc_root)]
    for _ in range(6):
        for k in range(len(ds)):
            image, mask = ds[k]
            assert image.shape == (3, 64, 64) and mask.shape == (64, 64)
            assert image.dtype == torch.float32 and mask.dtype == torch.int64
            assert set(mask.unique().tolist()) <= allowed[k]


def _label_coded_pair(h: int = 37, w: int = 53, seed: int = 0):
    """A mask and an image whose red channel *is* the label and green channel marks real pixels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 7, 15, 20, 255])
    mask = labels[torch.randint(len(labels), (h, w), generator=g)]
    mask[5:20, 10:30] = 15  # a block, so scaling has something coherent to move
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[0] = mask.to(torch.uint8)
    image[1] = 255  # 255 = "came from the original image", padding brings 0
    image[2] = torch.arange(w, dtype=torch.uint8).expand(h, w)  # column index, to see flips
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def _decode_uint8(image: torch.Tensor) -> torch.Tensor:
    return torch.round(denormalize(image) * 255).to(torch.int64)


def test_train_transforms_keep_alignment_pixel_by_pixel():
    image, mask = _label_coded_pair()
    t = train_transforms(
        crop_size=48, scale_range=(0.5, 2.0), hflip=0.5, interpolation=InterpolationMode.NEAREST
    )
    torch.manual_seed(1)
    saw_padding = saw_flip = False
    for _ in range(40):
        out_img, out_mask = t(image, mask)
        assert isinstance(out_mask, tv_tensors.Mask) and out_mask.dtype == torch.int64
        assert out_img.dtype == torch.float32 and out_img.shape == (3, 48, 48)
        assert out_mask.shape == (48, 48)
        px = _decode_uint8(out_img)
        real = px[1] == 255
        assert ((px[1] == 0) | real).all()
        # padded pixels: image 0 and mask ignore
        assert (out_mask[~real] == IGNORE_INDEX).all()
        # real pixels: the label carried by the image equals the mask, everywhere
        assert torch.equal(px[0][real], out_mask[real].as_subclass(torch.Tensor))
        assert set(out_mask.unique().tolist()) <= {0, 1, 7, 15, 20, 255}
        saw_padding |= bool((~real).any())
        # a flip shows as decreasing column indices along a row of real pixels
        row = px[2][real.all(dim=1)]
        if len(row) and row.shape[1] > 1:
            saw_flip |= bool((row[0, 1:] < row[0, :-1]).all())
    assert saw_padding and saw_flip  # both code paths were exercised


def test_flip_only_is_exact_mirror():
    image, mask = _label_coded_pair()
    t = train_transforms(crop_size=(37, 53), scale_range=(1.0, 1.0), hflip=1.0)
    out_img, out_mask = t(image, mask)
    assert torch.equal(out_mask, mask.flip(-1))
    assert torch.equal(_decode_uint8(out_img), image.flip(-1).to(torch.int64))


def test_eval_transforms_change_nothing_geometric():
    image, mask = _label_coded_pair(h=31, w=45)
    out_img, out_mask = eval_transforms()(image, mask)
    assert torch.equal(out_mask, mask)
    assert torch.equal(_decode_uint8(out_img), image.to(torch.int64))
    expected = (image[0].float() / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    torch.testing.assert_close(out_img[0].as_subclass(torch.Tensor), expected)


# ---------------------------------------------------------------------------- collate


def test_pad_collate_shapes_and_padding():
    a = (torch.randn(3, 5, 7), torch.randint(0, 21, (5, 7)))
    b = (torch.randn(3, 9, 4), torch.randint(0, 21, (9, 4)))
    images, masks = pad_collate([a, b])
    assert images.shape == (2, 3, 9, 7) and masks.shape == (2, 9, 7)
    assert masks.dtype == torch.int64
    assert torch.equal(images[0, :, :5, :7], a[0]) and torch.equal(masks[0, :5, :7], a[1])
    assert torch.equal(images[1, :, :9, :4], b[0]) and torch.equal(masks[1, :9, :4], b[1])
    assert (images[0, :, 5:] == 0).all() and (masks[0, 5:] == IGNORE_INDEX).all()
    assert (images[1, :, :, 4:] == 0).all() and (masks[1, :, 4:] == IGNORE_INDEX).all()


def test_pad_collate_in_a_dataloader(voc_root):
    ds = VOCSegmentation(voc_root, transforms=train_transforms(crop_size=32, scale_range=(1, 1)))
    ds_full = VOCSegmentation(voc_root)
    images, masks = pad_collate([ds[0], ds_full[1]])
    assert images.shape == (2, 3, 60, 80) and masks.shape == (2, 60, 80)
    assert (masks[0, 32:] == IGNORE_INDEX).all()
    loader = torch.utils.data.DataLoader(ds_full, batch_size=2, collate_fn=pad_collate)
    images, masks = next(iter(loader))
    assert images.shape == (2, 3, 60, 80) and masks.shape == (2, 60, 80)


# ---------------------------------------------------------------------------- missing data


def test_missing_folder_explains_layout_and_download(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        VOCSegmentation(root)
    msg = str(info.value)
    for needle in (
        "VOCdevkit",
        "VOC2012",
        "JPEGImages",
        "SegmentationClass",
        "ImageSets/Segmentation/train.txt",
        "download=True",
        "--download",
        "VOCtrainval_11-May-2012.tar",
        str(root),
    ):
        assert needle in msg, needle


def test_missing_jpeg_is_named(voc_root):
    ids = (voc_root / VOC / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    (voc_root / VOC / "JPEGImages" / f"{ids[1]}.jpg").unlink()
    with pytest.raises(FileNotFoundError) as info:
        VOCSegmentation(voc_root)
    msg = str(info.value)
    assert f"{ids[1]}.jpg" in msg and "JPEGImages" in msg and "download=True" in msg
    # the val split does not list that image, so it is still usable
    assert check_voc_root(voc_root, image_set="val") == voc_root / VOC


def test_missing_split_file_and_wrong_root(voc_root):
    (voc_root / VOC / "ImageSets" / "Segmentation" / "train.txt").unlink()
    with pytest.raises(FileNotFoundError, match="train.txt"):
        check_voc_root(voc_root)
    with pytest.raises(FileNotFoundError, match="CONTAINS VOCdevkit"):
        check_voc_root(voc_root / "VOCdevkit", image_set="val")


# ---------------------------------------------------------------------------- safe_extract


def _make_tar(path: Path, members: dict[str, bytes], links: dict | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (target, kind) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tar.addfile(info)
    return path


@pytest.mark.parametrize("bad", ["../evil.txt", "ok/../../evil.txt"])
def test_safe_extract_refuses_escaping_members(tmp_path, bad):
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = _make_tar(tmp_path / "bad.tar", {"fine.txt": b"ok", bad: b"pwned"})
    with pytest.raises(ValueError, match="evil.txt"):
        safe_extract(archive, dest)
    assert not (tmp_path / "evil.txt").exists()
    assert list(dest.iterdir()) == []  # checked before anything is written


def test_safe_extract_keeps_absolute_names_inside(tmp_path):
    # tarfile's "data" filter strips the leading "/" of an absolute name: it lands inside dest.
    dest = tmp_path / "dest"
    absolute = str(tmp_path / "evil.txt")
    safe_extract(_make_tar(tmp_path / "abs.tar", {absolute: b"pwned"}), dest)
    assert not (tmp_path / "evil.txt").exists()
    assert (dest / absolute.lstrip("/")).read_bytes() == b"pwned"


@pytest.mark.parametrize(
    "name,target,kind",
    [
        ("link", "../outside", tarfile.SYMTYPE),
        ("link", "/etc/passwd", tarfile.SYMTYPE),
        ("hard", "../outside", tarfile.LNKTYPE),
    ],
)
def test_safe_extract_refuses_links_pointing_outside(tmp_path, name, target, kind):
    dest = tmp_path / "dest"
    archive = _make_tar(tmp_path / "links.tar", {"a.txt": b"a"}, {name: (target, kind)})
    with pytest.raises(ValueError, match=name):
        safe_extract(archive, dest)
    assert not any(dest.iterdir())


def test_safe_extract_normal_archive(tmp_path):
    archive = _make_tar(
        tmp_path / "good.tar",
        {"VOCdevkit/VOC2012/a.txt": b"hello", "VOCdevkit/b.txt": b"world"},
        {"VOCdevkit/VOC2012/link.txt": ("a.txt", tarfile.SYMTYPE)},
    )
    dest = tmp_path / "dest"
    assert safe_extract(archive, dest) == dest
    assert (dest / "VOCdevkit" / "VOC2012" / "a.txt").read_bytes() == b"hello"
    assert (dest / "VOCdevkit" / "b.txt").read_bytes() == b"world"
    assert (dest / "VOCdevkit" / "VOC2012" / "link.txt").read_bytes() == b"hello"


def test_safe_extract_roundtrips_a_fake_voc_tree(tmp_path):
    src = fake_voc_tree(tmp_path / "src", num_images=2, size=(20, 24))
    archive = tmp_path / "voc.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "VOCdevkit", arcname="VOCdevkit")
    dest = safe_extract(archive, tmp_path / "dest")
    assert len(VOCSegmentation(dest, image_set="trainval")) == 2


# ---------------------------------------------------------------------------- download flow


def test_download_flow_uses_torchvision_checksum_and_safe_extract(tmp_path, monkeypatch):
    """The download path, with torchvision's downloader replaced by a local copy (no network)."""
    import torchvision.datasets.utils as tv_utils

    src = fake_voc_tree(tmp_path / "src", num_images=2, size=(20, 24))
    calls = []

    def fake_download_url(url, root, filename=None, md5=None):
        calls.append((url, filename, md5))
        with tarfile.open(Path(root) / filename, "w") as tar:
            tar.add(src / "VOCdevkit", arcname="VOCdevkit")

    monkeypatch.setattr(tv_utils, "download_url", fake_download_url)
    root = tmp_path / "voc"
    ds = VOCSegmentation(root, download=True)
    assert len(ds) == 1 and ds[0][1].shape == (20, 24)
    (url, filename, md5) = calls[0]
    assert filename == "VOCtrainval_11-May-2012.tar" and url.endswith(filename)
    assert md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    VOCSegmentation(root, download=True)  # already complete: no second download
    assert len(calls) == 1

    def offline(url, root, filename=None, md5=None):
        raise OSError("Name or service not known")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(RuntimeError, match="offline"):
        VOCSegmentation(tmp_path / "elsewhere", download=True)


# ---------------------------------------------------------------------------- seeded augmentation


def test_seeded_augmentation_depends_on_seed_epoch_and_index_only(voc_root):
    """With a seed, an image's crop is the same whatever was drawn before and whichever process
    loads it (what makes data-parallel and resumed runs see the same crops)."""
    ds = VOCSegmentation(voc_root, transforms=train_transforms(crop_size=40), seed=7)
    ds.set_epoch(3)
    torch.manual_seed(0)
    first = [ds[k] for k in range(len(ds))]
    torch.manual_seed(99)
    torch.rand(1000)  # other global random state
    for k in reversed(range(len(ds))):  # other order
        image, mask = ds[k]
        assert torch.equal(image, first[k][0]) and torch.equal(mask, first[k][1])
    state = torch.get_rng_state()
    ds[0]
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is left alone

    ds.set_epoch(4)
    assert not all(torch.equal(ds[k][1], first[k][1]) for k in range(len(ds)))  # new epoch, new crops
    other = VOCSegmentation(voc_root, transforms=train_transforms(crop_size=40), seed=8)
    other.set_epoch(3)
    assert not all(torch.equal(other[k][1], first[k][1]) for k in range(len(ds)))


def test_num_images_takes_the_first_of_the_split(voc_root):
    full = VOCSegmentation(voc_root, image_set="trainval")
    first = VOCSegmentation(voc_root, image_set="trainval", num_images=3)
    assert len(full) == 4 and len(first) == 3
    assert first.images == full.images[:3] and first.masks == full.masks[:3]
    assert torch.equal(first[2][1], full[2][1])
    with pytest.raises(ValueError, match="num_images"):
        VOCSegmentation(voc_root, num_images=0)
