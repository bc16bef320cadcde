"""The committed notebooks read well without a kernel (GitHub, nbviewer, a notebook just opened).

A widget output is only a reference to live widget state: without a kernel it shows nothing, or
its raw text ("VBox(children=(HBox(..."). So every explorer must leave a picture of its view
beside it, and every progress bar must look finished.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"
PROGRESS = re.compile(r"\d+%\|")  # tqdm's text: "epoch 1/8:  40%|####      | 2/5 [...]"


def _text(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def _widget_outputs(cells):
    """(cell index, output) of every widget output."""
    return [(i, output) for i, cell in enumerate(cells) for output in cell.get("outputs", [])
            if WIDGET in output.get("data", {})]


def _has_png(cell) -> bool:
    return any("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_explorer_has_a_static_picture_beside_it(path):
    cells = json.loads(path.read_text())["cells"]
    missing = []
    for i, output in _widget_outputs(cells):
        data = output["data"]
        if PROGRESS.search(_text(data.get("text/plain", ""))):
            continue  # a progress bar, checked below
        near = [cells[j] for j in (i - 1, i, i + 1) if 0 <= j < len(cells)]
        if "image/png" not in data and not any(_has_png(c) for c in near):
            missing.append(f"cell {i}: {_text(data.get('text/plain', ''))[:60]!r}")
    assert not missing, f"widget outputs with no image/png in the same or an adjacent cell: {missing}"


def test_the_check_sees_a_widget_without_a_picture():
    bare = {"outputs": [{"data": {WIDGET: {}, "text/plain": "VBox(children=(...))"}}]}
    assert _widget_outputs([bare]) == [(0, bare["outputs"][0])]
    assert not _has_png(bare)
    assert _has_png({"outputs": [{"data": {"image/png": "iVBOR..."}}]})


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem.startswith(("03", "07"))],
                         ids=lambda p: p.stem)
def test_committed_progress_bars_look_finished(path):
    cells = json.loads(path.read_text())["cells"]
    outputs = [(i, o) for i, cell in enumerate(cells) for o in cell.get("outputs", [])]
    bars = [(i, o) for i, o in outputs if PROGRESS.search(_text(o.get("data", {}).get("text/plain", "")))]
    stale = [f"cell {i}: {_text(o['data']['text/plain'])[:50]!r}" for i, o in bars
             if "100%" not in _text(o["data"]["text/plain"])]
    assert not stale, f"progress bars saved unfinished: {stale}"
    # Saved as text: a widget output would show readers without a kernel an empty shell.
    assert not [i for i, o in bars if WIDGET in o["data"]], "progress bars saved as widgets"
