"""The package's layers import in one direction only, and the benchmark stays outside the lesson."""

import ast
import subprocess
import sys
from pathlib import Path

import fcn_lesson

PACKAGE = Path(fcn_lesson.__file__).parent
# Lower layers first: a module may import its own layer and the layers before it, never after.
LAYERS = ("core", "datasets", "engine", "lessons", "widgets")
TOP = len(LAYERS)  # classroom.py, cli.py, __init__.py, __main__.py sit above every layer


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "fcn_lesson":
        raise ValueError(module)
    if len(parts) == 1 or parts[1] not in LAYERS:
        return TOP
    return LAYERS.index(parts[1])


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "fcn_lesson":  # from fcn_lesson import widgets
                found += [f"fcn_lesson.{a.name}" for a in node.names]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [m for m in found if m.split(".")[0] in ("fcn_lesson", "benchmarks")]


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("fcn_lesson", *path.relative_to(PACKAGE).with_suffix("").parts))
        for imported in _imports(path):
            if imported.startswith("benchmarks") or _layer(imported) > _layer(module):
                upward.append(f"{module} imports {imported}")
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    # The check itself must be able to fail: an engine module importing a widget is upward.
    bad = tmp_path / "bad.py"
    bad.write_text("from fcn_lesson.widgets import LayerExplorer\nimport numpy\n")
    assert _imports(bad) == ["fcn_lesson.widgets"]
    assert _layer("fcn_lesson.widgets") > _layer("fcn_lesson.engine.loop")
    assert _layer("fcn_lesson.classroom") == TOP


def test_importing_the_lesson_or_training_does_not_load_the_benchmark():
    # `import torch` itself loads torch.utils.throughput_benchmark: only torch's own may be there.
    code = ("import sys, fcn_lesson, fcn_lesson.cli, fcn_lesson.widgets\n"
            "loaded = [m for m in sys.modules if 'bench' in m and not m.startswith('torch.')]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True)
