"""The project's wiring: dependency lists agree, the notebooks are collected by nbval."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda-forge name where they differ


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", requirement.strip()).groups()
    return name.lower(), spec.replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = dict(_split(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"])
    pip = {CONDA_NAMES.get(k, k): v for k, v in pip.items()}
    conda = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        match = re.match(r"\s*-\s+([^#\s][^#]*)", line)
        if match and not line.strip().startswith("- conda-forge"):
            conda.update([_split(match.group(1))])
    conda.pop("python")
    assert conda == pip


def test_readme_commands_are_the_makefile_targets():
    readme = (ROOT / "README.md").read_text()
    assert "make lesson" in readme and "make test" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lesson:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_notebook_is_collected_by_nbval(tmp_path):
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", str(ROOT / "notebooks")],
        capture_output=True, text=True, cwd=ROOT)
    collected = {line.split("::")[0].split("/")[-1] for line in result.stdout.splitlines()
                 if ".ipynb::" in line}
    assert collected == set(notebooks), result.stdout + result.stderr
