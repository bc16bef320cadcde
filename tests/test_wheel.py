"""The package as a class gets it from `pip install` (a hosted notebook service): built into a
wheel, installed into a fresh virtual environment, used from outside the repository. The
checkpoints must come with it. Nothing is downloaded: the build uses the setuptools already
installed, and the fresh environment borrows this environment's dependencies.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

from fcn_lesson import classroom
from fcn_lesson.engine.loop import predict

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
SHIPPED = sorted(p.name for p in DATA.iterdir() if p.suffix in (".pt", ".json"))

# Run by the installed interpreter, from a folder outside the repository.
SCRIPT = """
import json, sys
import fcn_lesson
from fcn_lesson import classroom
from fcn_lesson.engine.loop import predict

data = classroom.data_dir()
image = classroom.validation_set(1)[0][0]
out = {"package": fcn_lesson.__file__, "data_dir": str(data), "files": sorted(p.name for p in data.iterdir()),
       "predictions": {}}
for variant in classroom.STAGES:
    model = classroom.load_classroom_model(variant, device="cpu")
    out["predictions"][variant] = predict(model, image[None])[0].tolist()
if (data / "classifier.pt").is_file():
    clf = classroom.load_classroom_classifier(device="cpu")
    out["classifier"] = [list(clf(classroom.validation_set(1, 224)[0][0][None]).shape), len(clf.classes)]
json.dump(out, sys.stdout)
"""


def _run(*cmd, **kwargs):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline from a copy of what it is made of (a build in the repository
    would leave build/ behind, whose stale files a later build would pick up)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    for name in ("fcn_lesson", "data"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", out, src)
    (path,) = out.glob("fcn_lesson-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; the python to run. Its dependencies (torch, ...)
    come from this environment through a .pth file, which adds this site-packages to sys.path
    but does not run the .pth files there: the editable install of the repository stays out."""
    venv = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", "--without-pip", "--clear", venv)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    # --target unpacks into the fresh venv only: a plain install would see this environment's
    # fcn-lesson through the .pth and could uninstall it.
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", site, wheel)
    return python


def test_wheel_holds_every_module_and_the_checkpoints(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "fcn_lesson").rglob("*.py")}
    assert modules <= names, f"missing from the wheel (add the package in pyproject.toml): {modules - names}"
    assert {f"fcn_lesson/checkpoints/{name}" for name in SHIPPED} <= names
    assert "fcn_lesson/checkpoints/README.md" in names


@pytest.mark.slow
def test_installed_wheel_predicts_with_its_own_checkpoints(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FCN_LESSON_DATA")}
    elsewhere = tmp_path / "classroom"
    elsewhere.mkdir()
    out = json.loads(_run(installed, "-c", SCRIPT, cwd=elsewhere, env=env))

    site = installed.parent.parent
    for key in ("package", "data_dir"):
        assert Path(out[key]).is_relative_to(site) and not Path(out[key]).is_relative_to(REPO), out[key]
    assert set(SHIPPED) <= set(out["files"])
    # The installed models are the shipped ones: the same maps as the repository's, on the same image.
    image = classroom.validation_set(1)[0][0]
    for variant in classroom.STAGES:
        ours = predict(classroom.load_classroom_model(variant, device="cpu"), image[None])[0]
        theirs = torch.tensor(out["predictions"][variant])
        assert (theirs == ours).float().mean() > 0.999, variant
    if "classifier.pt" in SHIPPED:
        shape, num_classes = out["classifier"]
        assert shape == [1, num_classes]
