"""Setup for every pytest run in this repository: tests/ and the notebooks that nbval collects."""


def pytest_configure(config):
    # The notebook memory check lives here, at the root, because a run that collects only the
    # notebooks (`pytest notebooks/01_fc_to_conv.ipynb`) never loads tests/conftest.py; its hooks
    # are a registered plugin, since conftest hooks would only see the items below their folder.
    from notebook_memory import NotebookMemory  # tests/ is on pytest's pythonpath (pyproject.toml)

    config.pluginmanager.register(NotebookMemory(), "notebook-memory")
