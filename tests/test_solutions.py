"""Every exercise solution in every notebook runs, and its prose states no number that its run did
not print.

Convention. A solution is the ```python fenced code inside a markdown cell's <details> block (the
folded "Solution" under each exercise). It runs in the state a student is in when they reach it:
the notebook's code cells are executed once, in order, in one namespace (as Run All does); at each
markdown cell holding solutions, each solution runs in a shallow copy of that namespace, so that its
variables do not leak into the cells after it. Its printed output is captured.

A solution passes when
1. it runs without an exception (its own `assert`s included: a solution asserts the directions
   its prose states, e.g. "mean IU is higher at 375 x 500", so a retrained checkpoint that turns
   them around fails here);
2. every `check_*` exercise check it calls says "correct";
3. every decimal number in its prose (outside the code) was printed in the same run, by the
   solution or by a code cell before it, to at least the prose's decimals (prose 0.82 matches a
   printed 0.823). A number typed into the prose goes stale silently when the shipped checkpoints
   change; a number the code prints cannot.
"""

import ast
import contextlib
import io
import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from fcn_lesson.lessons import exercises

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
DETAILS = re.compile(r"<details>.*?</details>", re.S)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)
FENCE = re.compile(r"```.*?```", re.S)
DECIMAL = re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])")


def solutions(markdown: str) -> list[tuple[str, str]]:
    """(code, prose) of each <details> block of a markdown cell that holds python code."""
    found = []
    for block in DETAILS.findall(markdown):
        code = "\n".join(PYTHON.findall(block))
        if code.strip():
            found.append((code, FENCE.sub("", block)))
    return found


def _run(source: str, namespace: dict) -> str:
    """Execute a cell as IPython would (the last expression evaluated too); its stdout."""
    out = io.StringIO()
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    with contextlib.redirect_stdout(out):
        exec(compile(tree, "<cell>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
            if value is not None and not hasattr(value, "_repr_mimebundle_"):
                print(repr(value))
    return out.getvalue()


def printed_numbers(text: str) -> set[str]:
    """Every decimal number in `text`, and each rounded to fewer decimals (0.823 -> 0.82, 0.8)."""
    found = set()
    for number in DECIMAL.findall(text):
        decimals = len(number.split(".")[1])
        found.update(f"{float(number):.{d}f}" for d in range(1, decimals + 1))
    return found


def _strict_report(verdict):
    # During this test an exercise check that is not "correct" fails the solution that called it.
    print(verdict.message)
    assert verdict.passed is True, f"a solution's exercise check failed: {verdict.message}"


def test_solution_blocks_are_found():
    markdown = ("**1.** Why?\n<details><summary>Solution</summary>\n\n```python\nprint(0.25)\n```\n\n"
                "It prints 0.25, not 0.5.\n</details>\n<details>prose only</details>")
    assert solutions(markdown) == [("print(0.25)\n", "<details><summary>Solution</summary>\n\n\n\n"
                                                     "It prints 0.25, not 0.5.\n</details>")]
    assert DECIMAL.findall("It prints 0.25, not 0.5; v1.2.3 is none, x1.5 is one.") == ["0.25", "0.5", "1.5"]
    assert printed_numbers("mean IoU 0.823") == {"0.8", "0.82", "0.823"}


def test_the_last_expression_is_shown_like_ipython():
    assert _run("x = 2\nx * 1.5", {}) == "3.0\n"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_solution_runs_and_prints_the_numbers_its_text_states(path, monkeypatch):
    monkeypatch.chdir(path.parent)  # notebooks run from their folder
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    namespace: dict = {"__name__": "__main__"}
    printed: set[str] = set()  # the numbers the notebook's cells printed so far, in this run
    checked, problems = 0, []
    try:
        for index, cell in enumerate(cells):
            source = "".join(cell["source"])
            if cell["cell_type"] == "code":
                printed |= printed_numbers(_run(source, namespace))
                continue
            for code, prose in solutions(source):
                checked += 1
                where = f"{path.name} cell {index}"
                try:
                    with monkeypatch.context() as strict:  # blank stubs before it may say "not done"
                        strict.setattr(exercises, "_report", _strict_report)
                        output = _run(code, dict(namespace))
                except Exception as err:  # reported per solution, all of a notebook's together
                    problems.append(f"{where}: the solution raised {type(err).__name__}: {err}")
                    continue
                shown = printed | printed_numbers(output)
                stale = [n for n in DECIMAL.findall(prose) if n not in shown]
                if stale:
                    problems.append(f"{where}: the prose states {', '.join(stale)}, which no output of "
                                    f"this run printed; print it from the code, or drop it")
    finally:
        plt.close("all")
    assert not problems, f"{checked} solutions run, problems:\n" + "\n".join(problems)
