"""Drive JupyterLab in headless Chromium, for tests/test_browser.py.

`running_lab` starts a throwaway JupyterLab server (127.0.0.1 only, a free port, a random token,
temporary config, data, runtime, settings and workspace folders) and always stops it.
`NotebookPage` opens one notebook in a Playwright page, runs every cell through the Run menu as a
user would, reports what the user would see go wrong, then moves every widget control and checks
that the figure the control drives is redrawn.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "test-output" / "browser"

CHROMIUM_HINT = ("no Chromium for the browser test: install it with `sudo apt-get install chromium` "
                 "(Debian/Ubuntu) or `python -m playwright install chromium`")
PLAYWRIGHT_HINT = "no Playwright for the browser test: install it with `pip install -e '.[dev]'`"
# Without the background-networking flags Chromium keeps calling Google's services, which a closed
# network refuses; --no-sandbox because CI containers run as root.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

# The controls a student moves, by the CSS class ipywidgets 8 gives each view. Buttons (other than
# toggles) are left out: a plain button may legitimately leave the figure as it is.
CONTROLS = {
    "slider": ".widget-slider",
    "checkbox": ".widget-checkbox",
    "toggle button": ".widget-toggle-button:not(.widget-toggle-buttons .widget-toggle-button)",
    "toggle buttons": ".widget-toggle-buttons",
    "dropdown": ".widget-dropdown",
    "radio buttons": ".widget-radio",
}
ANY_CONTROL = ", ".join(CONTROLS.values())
# Top-level cell outputs (not the outputs nested inside an ipywidgets.Output).
CELL_OUTPUTS = ".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output"
WIDGET_ROOTS = f"{CELL_OUTPUTS} > .jupyter-widgets"

# jupyterlab_widgets' words for a widget it cannot show (with no widgets front-end at all, JupyterLab
# shows the kernel's text repr instead, "VBox(children=...").
WIDGET_TROUBLE = re.compile(r"Error displaying widget|Failed to load model class|Loading widget\.\.\.")
ERROR_TEXT = re.compile(r"Traceback|^\s*\w*(?:Error|Exception)\b", re.M)

# A control's description ("pool4 gain"), else its text.
_LABEL_JS = """e => [...e.querySelectorAll('.widget-label, .widget-label-basic')]
                    .map(l => l.textContent.trim()).find(t => t) ?? e.innerText.trim().slice(0, 40)"""
# Kernel status from the notebook toolbar, and every code cell's prompt: "[3]:", "[*]:" or "[ ]:".
_STATE_JS = """() => ({
  status: document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator')
            ?.getAttribute('data-status') ?? null,
  prompts: [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputArea-prompt')]
            .map(e => e.textContent.trim()),
})"""


# Latency probes on a widget's root element: the timestamp of the first input event after a reset
# (capture phase, so it is seen before any handler), and the time of every image `load` inside the
# widget (load does not bubble, but capture listeners on an ancestor see it). A button acts on its
# `click` (the release); timing from the press would add the gap between press and release, which
# here is Playwright's own round trip to the browser, not the lesson's.
_LATENCY_JS = """r => {
  if (r.__latency) return;
  r.__latency = {t0: null, loads: []};
  const start = e => {
    if (r.__latency.t0 === null && r.contains(e.target)) r.__latency.t0 = e.timeStamp;
  };
  for (const type of ['keydown', 'input', 'change', 'click']) {
    document.addEventListener(type, start, true);
  }
  r.addEventListener('load', e => {
    if (e.target.tagName === 'IMG') r.__latency.loads.push(performance.now());
  }, true);
}"""


def unavailable(reason: str) -> None:
    """Skip on a user's machine, but fail in CI, where a skipped browser test would prove nothing."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def system_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_notebooks(source: Path, target: Path) -> None:
    """Copy `source` to `target` with every output cleared, so that what the browser shows later can
    only come from running the cells there (and the committed notebooks stay untouched)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".ipynb_checkpoints"), dirs_exist_ok=True)
    for path in target.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)


@dataclass(frozen=True)
class Lab:
    url: str
    token: str

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def notebook_url(self, name: str) -> str:
        # One workspace per notebook, so that a page never reopens tabs another page left open.
        return f"{self.url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={self.token}"

    def stop_kernels(self) -> None:
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", "DELETE")


def _lab_environment(home: Path, token: str, disabled_extensions: tuple[str, ...]) -> dict[str, str]:
    """Environment for a JupyterLab that reads no user configuration, writes only under `home`, and
    serves 127.0.0.1 with `token`, without opening a browser or loading `disabled_extensions`."""
    dirs = {name: home / name.lower() for name in (
        "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
        "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    (dirs["JUPYTER_CONFIG_DIR"] / "jupyter_server_config.json").write_text(json.dumps({
        # allow_root: CI containers run as root; the server is loopback-only and token-protected.
        "ServerApp": {"ip": "127.0.0.1", "open_browser": False, "port_retries": 0, "allow_root": True},
        "IdentityProvider": {"token": token},
    }))
    (dirs["JUPYTER_CONFIG_DIR"] / "labconfig").mkdir()
    (dirs["JUPYTER_CONFIG_DIR"] / "labconfig" / "page_config.json").write_text(json.dumps({
        "disabledExtensions": dict.fromkeys(disabled_extensions, True)}))
    settings = {
        # Keep every cell in the page (the default windowing detaches or skips off-screen cells).
        "notebook-extension/tracker": {"windowingMode": "none"},
        # No "official Jupyter news?" toast over the notebook, no request to the internet.
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, values in settings.items():
        path = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return {**os.environ, **{name: str(path) for name, path in dirs.items()}}


@contextlib.contextmanager
def running_lab(command: Callable[[int], list[str]], *, home: Path, cwd: Path, log: Path,
                disabled_extensions: tuple[str, ...] = (), timeout: float = 90) -> Iterator[Lab]:
    """Run `command(port)` (a JupyterLab command line) until the block ends, then shut it down, also
    when the block fails. The server's output goes to `log`."""
    port, token = free_port(), secrets.token_urlsafe(24)
    env = _lab_environment(home, token, disabled_extensions)
    log.parent.mkdir(parents=True, exist_ok=True)
    lab = Lab(f"http://127.0.0.1:{port}", token)
    with open(log, "w") as log_file:
        # A session of its own, so that what `command` starts (make runs jupyter) can be stopped with it.
        process = subprocess.Popen(command(port), cwd=cwd, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_until_serving(lab, process, timeout, log)
            yield lab
        finally:
            _stop(lab, process)


def _wait_until_serving(lab: Lab, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"JupyterLab exited with code {process.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError):
            lab.api("status")
            return
        time.sleep(0.25)
    raise AssertionError(f"JupyterLab did not answer on {lab.url} within {timeout:.0f} s:\n{_tail(log)}")


def _stop(lab: Lab, process: subprocess.Popen) -> None:
    # The server's own shutdown also stops its kernels; signals are the fallback.
    with contextlib.suppress(OSError):
        lab.api("shutdown", "POST")
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(15)
            return


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class NotebookPage:
    """One notebook open in JupyterLab in a Playwright page; screenshots go to `shots`."""

    def __init__(self, page, lab: Lab, path: Path, shots: Path):
        self.page, self.lab, self.path, self.shots = page, lab, path, shots
        self.name = path.stem
        self.console: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))
        shots.mkdir(parents=True, exist_ok=True)

    def open(self, timeout: float = 60) -> None:
        """Open the notebook and wait for its kernel, answering JupyterLab's "Select Kernel" dialog
        (when it asks) with its default, the notebook's own kernel, as a user would."""
        self.page.goto(self.lab.notebook_url(self.path.name))
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=timeout * 1000)
        select_kernel = self.page.locator(".jp-Dialog").filter(has_text="Select Kernel")

        def kernel_idle(state: dict) -> bool:
            if select_kernel.count():
                select_kernel.locator(".jp-mod-accept").click()
            return state["status"] == "idle" and self._kernel_state() == "idle"

        self._wait_for(kernel_idle, timeout, "the kernel to start")

    def run_all(self, timeout: float) -> None:
        """Run > Run All Cells, then wait until every cell ran (or one failed) and the kernel is idle."""
        self.page.get_by_role("menuitem", name="Run", exact=True).click()
        self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        expected = [bool(c.source.strip()) for c in self._cells() if c.cell_type == "code"]

        def finished(state: dict) -> bool:
            prompts = state["prompts"]
            if state["status"] != "idle" or "[*]:" in prompts or len(prompts) != len(expected):
                return False
            ran = all(re.fullmatch(r"\[\d+\]:", p) for p, run in zip(prompts, expected, strict=True) if run)
            # Run All stops at a failing cell: then the cells after it never run.
            return ran or bool(self._error_outputs())

        self._wait_for(finished, timeout, "Run All Cells to finish", calm=1.0)
        self.page.screenshot(path=self.shots / f"{self.name}-after-run-all.png")

    def save(self, timeout: float = 20) -> None:
        before = self.path.stat().st_mtime_ns
        self.page.get_by_role("menuitem", name="File", exact=True).click()
        self.page.get_by_role("menuitem", name=re.compile(r"^Save Notebook(?! As)")).click()
        deadline = time.monotonic() + timeout
        while self.path.stat().st_mtime_ns == before:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.path.name} was not saved within {timeout:.0f} s")
            time.sleep(0.2)
        self.page.wait_for_selector(".lm-TabBar-tab.jp-mod-dirty", state="detached", timeout=timeout * 1000)

    def problems_after_run(self, loading_timeout: float = 20) -> list[str]:
        """What a user would see go wrong after running every cell: cells that did not run, error
        outputs, widgets shown as anything but a widget. Compares the saved notebook with the page."""
        self.save()
        problems = []
        code = [c for c in self._cells() if c.cell_type == "code"]
        for i, cell in enumerate(code, 1):
            for out in cell.outputs:
                if out.output_type == "error":
                    problems.append(f"{_where(i, cell)} raised {out.ename}: {out.evalue}")
                elif out.get("name") == "stderr" and ERROR_TEXT.search(out.text):
                    problems.append(f"{_where(i, cell)} printed an error: {out.text.strip()[:400]!r}")
        if not_run := [i for i, c in enumerate(code, 1) if c.source.strip() and c.execution_count is None]:
            problems.append(f"code cells {not_run} did not run")
        deadline = time.monotonic() + loading_timeout
        while "Loading widget..." in str(shown := self._shown_outputs()) and time.monotonic() < deadline:
            time.sleep(0.5)
        # The page shows the saved notebook's outputs one for one. A widget output left empty is one
        # the kernel closed (a finished tqdm bar with leave=False); any text there is not the widget.
        for i, (cell, outputs) in enumerate(zip(code, shown, strict=True), 1):
            for saved, out in zip(cell.outputs, outputs, strict=True):
                text = out["text"].strip()[:200]
                if WIDGET_MIME in saved.get("data", {}) and not out["widget"] and text:
                    problems.append(f"{_where(i, cell)} shows {text!r} instead of a widget")
                elif match := WIDGET_TROUBLE.search(text):
                    problems.append(f"{_where(i, cell)} shows {match.group(0)!r}: {text!r}")
        return problems

    def exercise_widgets(self, timeout: float = 15) -> tuple[int, list[str]]:
        """Move every enabled control of every widget once; each move must redraw that widget's figure.
        Returns how many controls were moved and the problems seen."""
        moved, problems, errors_before = 0, [], set(self._error_outputs())
        roots = self.page.locator(WIDGET_ROOTS)
        for w in range(roots.count()):
            root = roots.nth(w)
            controls = root.locator(ANY_CONTROL)
            if controls.count():
                root.screenshot(path=self.shots / f"{self.name}-widget{w}-start.png")
            for c in range(controls.count()):
                control = controls.nth(c)
                kind = next(k for k, selector in CONTROLS.items()
                            if control.evaluate("(e, s) => e.matches(s)", selector))
                what = f"{kind} {control.evaluate(_LABEL_JS)!r} of widget {w}"
                before = self._settled_figure(root, timeout)
                if not _move(control, kind):
                    continue
                moved += 1
                # Settled again and still different: a flicker while the image reloads does not count.
                if self._figure_after_change(root, before, timeout) in (None, before):
                    problems.append(f"moving the {what} did not change its figure within {timeout:.0f} s")
                root.screenshot(path=self.shots / f"{self.name}-widget{w}-{c}-{kind.replace(' ', '-')}.png")
        # A callback that raises prints into the widget's output (or nowhere, and the figure stays).
        return moved, problems + [f"after moving the controls: {e}" for e in self._error_outputs()
                                  if e not in errors_before]

    def control_latencies(self, samples: int = 24, timeout: float = 15) -> list[dict]:
        """End-to-end latency as a student feels it, for every visible, enabled control of every
        widget: `samples` moves, each timed from the input event's own timestamp (the key press,
        the menu choice, the click) to the `load` of the last image the widget repaints. Returns
        one row per control: widget, control, samples, median and p95 in ms (a report, not a check:
        timings depend on the machine)."""
        rows = []
        roots = self.page.locator(WIDGET_ROOTS)
        for w in range(roots.count()):
            root = roots.nth(w)
            if not root.locator("img").count():
                continue  # a progress bar or a widget without pictures: nothing repaints
            root.evaluate(_LATENCY_JS)
            controls = root.locator(ANY_CONTROL)
            for c in range(controls.count()):
                control = controls.nth(c)
                if not control.is_visible():
                    continue
                kind = next(k for k, selector in CONTROLS.items()
                            if control.evaluate("(e, s) => e.matches(s)", selector))
                timings = []
                for _ in range(samples):
                    self._settled_figure(root, timeout)
                    root.evaluate("r => { r.__latency.t0 = null; r.__latency.loads = []; }")
                    if not _move(control, kind):
                        break
                    if (ms := self._latency(root, timeout)) is not None:
                        timings.append(ms)
                if timings:
                    timings.sort()
                    rows.append({"notebook": self.name, "widget": w, "control":
                                 f"{kind} {control.evaluate(_LABEL_JS)!r}", "samples": len(timings),
                                 "median_ms": round(timings[len(timings) // 2], 1),
                                 "p95_ms": round(timings[min(len(timings) - 1,
                                                             int(0.95 * len(timings)))], 1)})
        return rows

    def burst_problems(self, presses: int = 10, timeout: float = 15) -> list[str]:
        """Press an arrow key `presses` times in quick succession on the first slider of every
        widget with pictures; once it settles, the figure must be the one that slider value
        draws: the same as after moving one step away and back, each move settled."""
        problems = []
        roots = self.page.locator(WIDGET_ROOTS)
        for w in range(roots.count()):
            root = roots.nth(w)
            sliders = root.locator(f"{CONTROLS['slider']}:visible")
            if not root.locator("img").count() or not sliders.count():
                continue
            handle = sliders.first.locator(".noUi-handle").first
            value, high = (float(handle.get_attribute(a)) for a in ("aria-valuenow", "aria-valuemax"))
            low = float(handle.get_attribute("aria-valuemin"))
            ahead, back = ("ArrowRight", "ArrowLeft") if value + presses <= high else ("ArrowLeft",
                                                                                      "ArrowRight")
            if high - low < 2:
                continue
            self._settled_figure(root, timeout)
            for _ in range(presses):
                handle.press(ahead, delay=0)
            after_burst = self._settled_figure(root, timeout)
            final = handle.get_attribute("aria-valuenow")
            for key in (back, ahead):
                before = self._settled_figure(root, timeout)
                handle.press(key)
                self._figure_after_change(root, before, timeout)
            redrawn = self._settled_figure(root, timeout)
            label = sliders.first.evaluate(_LABEL_JS)
            if handle.get_attribute("aria-valuenow") != final:
                problems.append(f"widget {w}: slider {label!r} did not come back to {final}")
            elif redrawn != after_burst:
                problems.append(f"widget {w}: after {presses} quick presses on slider {label!r} (to "
                                f"{final}) the figure is not the one that value draws")
        return problems

    def _latency(self, root, timeout: float, quiet: float = 0.3) -> float | None:
        """ms from the input event to the last image load, once no image has loaded for `quiet` s.
        Both times are the browser's own, so polling late changes nothing but the load the poll
        itself puts on the machine while the widget repaints: the first poll waits `quiet` s."""
        time.sleep(quiet)
        deadline, last, seen_at = time.monotonic() + timeout, None, time.monotonic()
        while time.monotonic() < deadline:
            state = root.evaluate("r => ({t0: r.__latency.t0, loads: r.__latency.loads.length, "
                                  "last: r.__latency.loads.at(-1) ?? null})")
            if state["loads"] != last:
                last, seen_at = state["loads"], time.monotonic()
            elif last and time.monotonic() - seen_at >= quiet and state["t0"] is not None:
                return state["last"] - state["t0"]
            time.sleep(0.05)
        return None

    def console_tail(self, lines: int = 10) -> str:
        return "\n".join(self.console[-lines:])

    # -- helpers -------------------------------------------------------------------------------------

    def _kernel_state(self) -> str | None:
        # The toolbar says "idle" also before a kernel exists; the server knows.
        return next((s["kernel"]["execution_state"] for s in self.lab.api("sessions")
                     if s["path"] == self.path.name), None)

    def _cells(self) -> list:
        return nbformat.read(self.path, as_version=4).cells

    def _shown_outputs(self) -> list[list[dict]]:
        """Each code cell's outputs as shown: their text, and whether a widget view rendered there."""
        return self.page.evaluate(
            """s => [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell')].map(c =>
                      [...c.querySelectorAll(s)].map(o => ({
                        text: o.innerText,
                        widget: o.querySelector(':scope > .jupyter-widgets') !== null})))""",
            CELL_OUTPUTS)

    def _error_outputs(self) -> list[str]:
        # Errors render as stderr text, also inside widget outputs (a callback that raised).
        texts = self.page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
        return [f"error output: {t.strip()[:400]!r}" for t in texts if ERROR_TEXT.search(t)]

    def _wait_for(self, condition: Callable[[dict], bool], timeout: float, what: str,
                  calm: float = 0) -> None:
        """Poll the notebook's state until `condition` has held for `calm` seconds."""
        deadline, held_since = time.monotonic() + timeout, None
        while True:
            state = self.page.evaluate(_STATE_JS)
            now = time.monotonic()
            if condition(state):
                held_since = held_since or now
                if now - held_since >= calm:
                    return
            else:
                held_since = None
            if now > deadline:
                self.page.screenshot(path=self.shots / f"{self.name}-timeout.png")
                raise AssertionError(f"{self.path.name}: waited {timeout:.0f} s for {what}; kernel "
                                     f"{state['status']}, prompts {state['prompts']}\n{self.console_tail()}")
            time.sleep(0.25)

    def _figure(self, root) -> bytes | None:
        """The pixels of what a widget draws: its images if it has any, else the widget with its
        controls masked. None while the figure is being replaced."""
        from playwright.sync_api import Error

        images = root.locator("img:visible, canvas:visible")
        try:
            if n := images.count():
                return b"".join(images.nth(i).screenshot(timeout=5000) for i in range(n))
            return root.screenshot(mask=[root.locator(ANY_CONTROL)], timeout=5000)
        except Error:
            return None

    def _settled_figure(self, root, timeout: float) -> bytes:
        self._wait_for(lambda s: s["status"] == "idle", timeout, "the kernel to be idle")
        deadline, previous = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            current = self._figure(root)
            if current is not None and current == previous:
                return current
            previous = current
            time.sleep(0.3)
        raise AssertionError(f"{self.path.name}: a widget's figure kept changing for {timeout:.0f} s")

    def _figure_after_change(self, root, before: bytes, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self._figure(root)
            if current is not None and current != before:
                return self._settled_figure(root, timeout)
            time.sleep(0.3)
        return None


def _where(index: int, cell) -> str:
    first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
    return f"code cell {index} ({first_line[:60]!r})"


def _move(control, kind: str) -> bool:
    """Change one control the way a user would (keyboard on a slider handle, clicks elsewhere).
    False when the control is disabled or offers nothing else to choose."""
    if kind == "slider":
        if control.locator(".noUi-target[disabled]").count():
            return False
        handle = control.locator(".noUi-handle").first
        at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
        handle.press("ArrowLeft" if at_max else "ArrowRight")
        return True
    if kind == "dropdown":
        select = control.locator("select")
        options = select.locator("option").count()
        if not select.is_enabled() or options < 2:
            return False
        select.select_option(index=(select.evaluate("s => s.selectedIndex") + 1) % options)
        return True
    if kind == "toggle button":
        if not control.is_enabled():
            return False
        control.click()
        return True
    target = {
        "checkbox": control.locator("input[type=checkbox]:enabled"),
        "toggle buttons": control.locator("button:not(.mod-active):enabled"),
        "radio buttons": control.locator("input[type=radio]:not(:checked):enabled"),
    }[kind]
    if not target.count():
        return False
    target.first.click()
    return True
