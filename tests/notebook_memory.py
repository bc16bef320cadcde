"""Each notebook kernel's peak memory, measured while nbval runs the notebooks (no second run).

A class on a shared JupyterHub or Binder pod has 1-2 GB per student; every notebook must stay
within NOTEBOOK_PEAK_LIMIT_MB. After a notebook's last cell, and before nbval stops its kernel,
this reads the kernel process's high-water mark (VmHWM in /proc/<pid>/status, Linux); a notebook
above the limit fails as an error in the teardown of its last cell. The peaks are listed at the
end of the run. Registered by the repository's root conftest.py, so it also applies when only
notebooks are collected (`pytest notebooks/`), where tests/conftest.py is not loaded.
"""

import pytest
from nbval.plugin import IPyNbFile

from benchmarks.bench import TARGETS

NOTEBOOK_PEAK_LIMIT_MB = TARGETS["notebook_peak_rss_mb"]
# Notebooks known to peak above the limit, and why: reported, not failed, until they are fixed
# (like a strict xfail: a listed notebook that comes in under the limit fails, so that its entry
# is removed). About 0.9 GB of every kernel's peak is `import torch, torchvision` itself (0.5 GB
# of it the CUDA build's library pages), which leaves no room for a full-width VGG16.
KNOWN_OVER_LIMIT = {
}


def kernel_peak_rss_mb(pid: int) -> float | None:
    """The peak resident memory of process `pid` in MB (2**20 bytes); None off Linux."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 2**10 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def _kernel_pid(notebook) -> int | None:
    kernel = getattr(notebook, "kernel", None)
    process = getattr(getattr(getattr(kernel, "km", None), "provisioner", None), "process", None)
    return getattr(process, "pid", None)


class NotebookMemory:
    def __init__(self):
        self.peaks: dict[str, float] = {}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item, nextitem):
        notebook = item.parent
        last_cell = isinstance(notebook, IPyNbFile) and (nextitem is None or nextitem.parent is not notebook)
        pid = _kernel_pid(notebook) if last_cell else None
        peak = kernel_peak_rss_mb(pid) if pid is not None else None  # before nbval stops the kernel
        result = yield
        if peak is not None:
            name = notebook.path.name
            self.peaks[name] = peak
            if peak > NOTEBOOK_PEAK_LIMIT_MB and name not in KNOWN_OVER_LIMIT:
                pytest.fail(f"{name}: the kernel's memory peaked at {peak:.0f} MB, above the "
                            f"{NOTEBOOK_PEAK_LIMIT_MB:g} MB a notebook may use (1-2 GB classroom pods)",
                            pytrace=False)
            if peak <= NOTEBOOK_PEAK_LIMIT_MB and name in KNOWN_OVER_LIMIT:
                pytest.fail(f"{name} now peaks at {peak:.0f} MB, within the limit: remove it from "
                            "KNOWN_OVER_LIMIT in tests/notebook_memory.py", pytrace=False)
        return result

    def pytest_terminal_summary(self, terminalreporter):
        if self.peaks:
            terminalreporter.section(f"notebook kernels' peak RSS (limit {NOTEBOOK_PEAK_LIMIT_MB:g} MB)")
            for name, peak in sorted(self.peaks.items()):
                known = f"  over, known: {KNOWN_OVER_LIMIT[name]}" if name in KNOWN_OVER_LIMIT else ""
                terminalreporter.write_line(f"{name:<32} {peak:7.0f} MB{known}")
