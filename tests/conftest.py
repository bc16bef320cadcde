"""Shared test setup: headless matplotlib, and no figure left open from one test to the next."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def pytest_configure(config):
    # Registered as a plugin, not defined here: hooks in tests/conftest.py would only see tests/
    # items, and this one must see the notebooks/ items that nbval collects.
    from notebook_memory import NotebookMemory

    config.pluginmanager.register(NotebookMemory(), "notebook-memory")
