"""PASCAL VOC on disk: check that it is there, download it, unpack it safely.

Nothing here touches the network unless ``download_voc`` (``download=True``) is asked for.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import torchvision

_YEARS = torchvision.datasets.voc.DATASET_YEAR_DICT


class VOCNotFoundError(FileNotFoundError):
    """The PASCAL VOC folder is missing or incomplete; the message says what to do."""


def _year_info(year: str) -> dict[str, str]:
    year = str(year)
    if year not in _YEARS or year == "2007-test":
        raise ValueError(f"year must be one of {sorted(k for k in _YEARS if k != '2007-test')}")
    return _YEARS[year]


def _archive_name(year: str) -> str:
    # torchvision's table lists the 2012 file name for 2008 by mistake; the URL is authoritative.
    return _year_info(year)["url"].rsplit("/", 1)[-1]


def _layout_help(root: Path, year: str, image_set: str) -> str:
    base = Path(_year_info(year)["base_dir"])
    indent = "  "
    lines = [f"{indent}{root}/"]
    for depth, part in enumerate(base.parts, start=1):
        lines.append(f"{indent}{'    ' * depth}{part}/")
    d = "    " * (len(base.parts) + 1)
    lines += [
        f"{indent}{d}JPEGImages/<id>.jpg",
        f"{indent}{d}SegmentationClass/<id>.png        (palette PNG: value = class, 255 = void)",
        f"{indent}{d}ImageSets/Segmentation/{image_set}.txt   (one <id> per line)",
    ]
    url = _year_info(year)["url"]
    name = _archive_name(year)
    return (
        "Expected layout:\n" + "\n".join(lines) + "\n"
        f"How to get it ({name}{', about 2 GB' if year == '2012' else ''}):\n"
        f"{indent}- let the package download it and verify its checksum:\n"
        f"{indent}    VOCSegmentation({str(root)!r}, year={year!r}, download=True)\n"
        f"{indent}  or add --download to the command line"
        f" (python -m fcn_lesson train --dataset voc ... --download);\n"
        f"{indent}- or fetch {url}\n"
        f"{indent}  yourself and unpack it into the root folder:  tar -xf {name} -C {root}"
    )


def _missing(root: Path, voc: Path, split: Path) -> list[str]:
    """What is absent from an unpacked VOC tree, in the order a user would fix it."""
    if root.exists() and not root.is_dir():
        return [f"{root}  is a file, not a folder (the archive itself? unpack it first)"]
    if not root.is_dir():
        return [f"{root}  (the root folder itself does not exist)"]
    if not voc.is_dir():
        return [f"{voc}  (folder)"]
    missing = [f"{voc / sub}  (folder)" for sub in ("JPEGImages", "SegmentationClass")
               if not (voc / sub).is_dir()]
    if not split.is_file():
        missing.append(f"{split}  (split list)")
    return missing or _missing_listed_files(voc, split)


def _missing_listed_files(voc: Path, split: Path) -> list[str]:
    ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    if not ids:
        return [f"{split} lists no images"]
    absent = [p for i in ids
              for p in (voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png")
              if not p.is_file()]
    if not absent:
        return []
    shown = "\n".join(f"    {p}" for p in absent[:5])
    more = f"\n    ... and {len(absent) - 5} more" if len(absent) > 5 else ""
    return [f"{len(absent)} file(s) listed in {split.name} (an interrupted unpack?):\n{shown}{more}"]


def check_voc_root(root: str | os.PathLike, year: str = "2012", image_set: str = "train") -> Path:
    """Check that ``root`` holds an unpacked VOC segmentation split; return its VOC<year> folder.

    ``root`` is the folder that *contains* ``VOCdevkit`` (as for torchvision). Raises
    :class:`VOCNotFoundError` (a ``FileNotFoundError``) listing what is missing, the layout
    expected and how to get the data.
    """
    root = Path(os.path.expanduser(os.fspath(root)))
    info = _year_info(year)
    voc = root / info["base_dir"]
    missing = _missing(root, voc, voc / "ImageSets" / "Segmentation" / f"{image_set}.txt")
    if not missing:
        return voc
    hint = ""
    if root.name.startswith("VOC") or (root / "JPEGImages").is_dir() or (root / f"VOC{year}").is_dir():
        hint = (f"Note: root should be the folder that CONTAINS {Path(info['base_dir']).parts[0]}/, "
                f"not {root.name}/ itself.\n")
    raise VOCNotFoundError(
        f"PASCAL VOC {year} ({image_set} split) not found or incomplete under {str(root)!r}.\n"
        "Missing:\n" + "\n".join(f"  - {m}" for m in missing) + "\n" + hint
        + _layout_help(root, year, image_set))


def safe_extract(archive_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a tar archive into ``dest`` with ``tarfile``'s ``"data"`` filter (PEP 706).

    The filter refuses absolute names, names that climb out with ``..``, links pointing outside
    ``dest``, and device / FIFO entries. Every member is put through it *before* anything is
    written, so a bad archive leaves ``dest`` as it was; the ``ValueError`` names the member.
    Returns ``dest``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    with tarfile.open(archive_path, "r:*") as tar:
        members = tar.getmembers()
        try:
            for member in members:
                tarfile.data_filter(member, root)
            tar.extractall(root, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise ValueError(f"refusing to extract {exc.tarinfo.name!r} from "
                             f"{os.fspath(archive_path)!r}: {exc}") from exc
    return dest


def download_voc(root: str | os.PathLike, year: str = "2012") -> Path:
    """Download the VOC trainval tar with torchvision (MD5-checked) and extract it safely.

    Skips the download when a verified archive is already in ``root`` and the extraction when
    the dataset is already complete. Returns the ``VOC<year>`` folder. Needs the network
    (unless the tar is already there); errors say where to put the file by hand.
    """
    from torchvision.datasets.utils import download_url

    root = Path(os.path.expanduser(os.fspath(root)))
    info = _year_info(year)
    name = _archive_name(year)
    try:
        return check_voc_root(root, year, "trainval")
    except VOCNotFoundError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    try:
        download_url(info["url"], os.fspath(root), filename=name, md5=info["md5"])
    except Exception as exc:  # URLError, HTTPError, checksum mismatch, ...
        raise RuntimeError(
            f"Could not download PASCAL VOC {year} from {info['url']}: {exc}\n"
            f"If this machine is offline, download {name} elsewhere, copy it to {root / name} "
            f"and run again (its MD5 {info['md5']} is checked), or unpack it yourself into {root}."
        ) from exc
    safe_extract(root / name, root)
    return check_voc_root(root, year, "trainval")
