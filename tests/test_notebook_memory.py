"""The notebook memory check (tests/notebook_memory.py) measures the kernel and can fail."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from notebook_memory import kernel_peak_rss_mb

TESTS = Path(__file__).resolve().parent

CONFTEST = """
import notebook_memory

notebook_memory.NOTEBOOK_PEAK_LIMIT_MB = {limit}


def pytest_configure(config):
    config.pluginmanager.register(notebook_memory.NotebookMemory(), "notebook-memory")
"""


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 2**10 for line in f if line.startswith("VmRSS:"))


def test_peak_of_this_process_is_at_least_what_it_holds():
    if not Path("/proc/self/status").exists():
        pytest.skip("reads /proc (Linux)")
    before = _rss_mb()
    block = bytearray(200 * 2**20)  # 200 MB, touched
    block[:: 4096] = b"x" * len(block[:: 4096])
    holding = _rss_mb()
    assert holding >= before + 190
    # The peak so far, in the same unit (MB): at least what the process holds now.
    assert holding <= kernel_peak_rss_mb(os.getpid()) < holding + 2**14
    assert kernel_peak_rss_mb(2**22 + 12345) is None  # no such process


@pytest.mark.slow
@pytest.mark.parametrize("limit, outcome", [(10**6, "2 passed"), (50, "1 error")])
def test_a_notebook_over_the_limit_fails(tmp_path, limit, outcome):
    if not Path("/proc/self/status").exists():
        pytest.skip("reads /proc (Linux)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = bytearray(100 * 2**20)"),
                                         nbformat.v4.new_code_cell("len(x)")])
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    (tmp_path / "conftest.py").write_text(CONFTEST.format(limit=limit))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval-lax",
                          "--nbval-current-env", "--rootdir", str(tmp_path), "-c", os.devnull, "tiny.ipynb"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert outcome in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
    assert "tiny.ipynb" in run.stdout.split("peak RSS")[1]  # the summary lists it
    if limit == 50:
        assert "the kernel's memory peaked at" in run.stdout
