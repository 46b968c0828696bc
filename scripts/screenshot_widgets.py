"""Screenshot the anti-transfer notebook's widget panel as a person would see it in JupyterLab.

This checks what only a browser shows: that the ipywidgets extension loads and the panel renders.
It copies notebooks/04_anti_transfer.ipynb to a temporary folder, starts JupyterLab there
(headless, free localhost port, random token, QAT_PROFILE=smoke, and its settings, config and
runtime folders and QAT_DATA/QAT_CACHE/QAT_REPORTS all in the temporary folder), opens the
notebook in Debian's Chromium through Playwright, runs "Run All Cells", waits for the panel,
saves a screenshot, stops Chromium, JupyterLab and the kernel and checks (psutil) that none of
their processes is left. The last stdout line is a JSON summary (tests/test_screenshot.py).

    .venv/bin/python scripts/screenshot_widgets.py [--out PATH] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from qat.io import write_atomic

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_anti_transfer.ipynb"
OUT = ROOT / "reports" / "widgets_04_anti_transfer.png"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = "apt-get install chromium"
QUIET = "background-networking component-update sync dev-shm-usage gpu".split()
CHROMIUM_ARGS = ["--no-sandbox", "--no-first-run", "--hide-scrollbars"]
CHROMIUM_ARGS += [f"--disable-{name}" for name in QUIET]  # offline: no update checks or sync
# No news/update toasts, and every cell kept in the DOM so counts don't depend on scrolling.
LAB_SETTINGS = {
    "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "notebook-extension/tracker": {"windowingMode": "none"},
}
# The page's state: kernel status, cell errors and the widget views in the panel's cell (the
# first cell with a dropdown: later cells add tqdm bars of their own), in the window or not.
STATUS_JS = """() => {
  const app = window.jupyterapp;
  const nb = app && app.shell && [...app.shell.widgets("main")].find((w) => w.sessionContext);
  if (!nb || !nb.context.isReady) return {errors: []};
  const errors = nb.content.widgets.filter((c) => c.model.type === "code")
    .flatMap((c) => c.model.outputs.toJSON()).filter((o) => o.output_type === "error")
    .map((o) => o.ename + ": " + o.evalue);
  const kernel = nb.sessionContext.session && nb.sessionContext.session.kernel;
  const first = nb.content.node.querySelector(".widget-dropdown");
  const all = (sel) => (first ? [...first.closest(".jp-Cell").querySelectorAll(sel)] : []);
  const inside = (r) => r.left >= 0 && r.top >= 0 && r.right <= innerWidth
    && r.bottom <= innerHeight;  // no size test: the panel's empty output area has height 0
  return {kernel: kernel && kernel.status, errors, widgets: all(".jupyter-widgets").length,
    dropdowns: all(".widget-dropdown").length, buttons: all(".widget-button").length,
    widgets_in_view: all(".jupyter-widgets").filter((e) => inside(e.getBoundingClientRect()))
      .length};
}"""
# True once the counts have not changed for 2 s (the panel's views are created one by one).
STABLE_JS = """(s) => { const w = (window.__qat ||= {}), now = Date.now();
  const key = JSON.stringify([s.widgets, s.dropdowns, s.buttons]);
  if (w.key !== key) Object.assign(w, {key, since: now});
  return now - w.since >= 2000; }"""
RUN_ALL_JS = """() => { const app = window.jupyterapp;  // the command acts on the active notebook
  app.shell.activateById([...app.shell.widgets("main")].find((w) => w.sessionContext).id);
  void app.commands.execute("notebook:run-all-cells"); }"""
FRAMES_JS = "() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"


class ScreenshotError(RuntimeError):
    """A step failed; the message says which."""


def start_jupyterlab(tmp: Path, notebook: Path, log: Path) -> str:
    """Start JupyterLab on a copy of `notebook`; once it answers, the notebook's URL."""
    (tmp / "notebooks").mkdir()
    shutil.copy2(notebook, tmp / "notebooks" / notebook.name)
    for name, values in LAB_SETTINGS.items():
        path = tmp / "lab-settings" / f"@jupyterlab/{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {**os.environ, "QAT_PROFILE": "smoke", "PYTHONUNBUFFERED": "1"}
    for name in "QAT_DATA QAT_CACHE QAT_REPORTS JUPYTER_CONFIG_DIR JUPYTER_RUNTIME_DIR".split():
        env[name] = str(tmp / name.lower())  # nothing of the user's or the repository's
    env["JUPYTERLAB_SETTINGS_DIR"] = str(tmp / "lab-settings")
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp / "lab-workspaces")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port, token = s.getsockname()[1], secrets.token_hex(16)
    options = {"ServerApp.ip": "127.0.0.1", "ServerApp.port": port,
               "ServerApp.port_retries": 0, "ServerApp.root_dir": tmp / "notebooks",
               "IdentityProvider.token": token, "LabApp.expose_app_in_browser": True,
               "ServerApp.terminals_enabled": False, "NotebookNotary.db_file": ":memory:",
               "NotebookNotary.secret_file": tmp / "notebook_secret"}  # fmt: skip
    command = [sys.executable, "-m", "jupyterlab", "--no-browser"]
    command += [f"--{k}={v}" for k, v in options.items()] + ["--allow-root"] * (os.geteuid() == 0)
    with log.open("wb") as sink:
        lab = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):  # the status API answers once the server is up (at most 2 minutes)
        if lab.poll() is not None:
            raise ScreenshotError(f"JupyterLab exited with code {lab.returncode}")
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5).close()
            return f"{base}/lab/tree/{notebook.name}?token={token}"
        except OSError:
            time.sleep(0.5)
    raise ScreenshotError("JupyterLab did not answer within 2 minutes")


def capture(page, url: str, out: Path, deadline: float) -> dict:
    """Open the notebook, run all cells, wait for the panel, write the PNG; the page status."""

    def ms() -> float:
        return max(1.0, deadline - time.monotonic()) * 1000

    def until(condition: str, what: str) -> dict:
        js = f"() => {{ const s = ({STATUS_JS})(); return s.errors.length || ({condition}); }}"
        try:
            page.wait_for_function(js, polling=250, timeout=ms())
        except PlaywrightError as error:
            first = error.message.splitlines()[0]
            status = page.evaluate(STATUS_JS)
            raise ScreenshotError(f"waiting for {what}: {first}; page: {status}") from None
        status = page.evaluate(STATUS_JS)
        if status["errors"]:
            raise ScreenshotError("a notebook cell failed: " + "; ".join(status["errors"]))
        return status

    page.goto(url, timeout=ms())
    until("s.kernel === 'idle'", "the notebook and its kernel")
    page.evaluate(RUN_ALL_JS)
    panel = page.locator(".jp-Notebook .jp-Cell").filter(has=page.locator(".widget-dropdown"))
    panel.first.locator(".widget-button.mod-primary").first.wait_for(timeout=ms())  # "Run"
    until(f"({STABLE_JS})(s)", "the widget panel to settle")
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # the panel gets the width
    page.evaluate(FRAMES_JS)
    panel.first.evaluate("(cell) => cell.scrollIntoView({block: 'end'})")  # parameters above
    page.evaluate(FRAMES_JS)
    write_atomic(out, lambda tmp: page.screenshot(path=tmp, type="png", animations="disabled"))
    return page.evaluate(STATUS_JS)


def stop(procs: list[psutil.Process], grace: float = 20.0) -> list[int]:
    """Terminate `procs`, SIGKILL those left after `grace` s; the pids still running."""

    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    for signal, wait in (("terminate", grace), ("kill", 5.0)):
        procs = [p for p in procs if running(p)]
        for p in procs:
            try:
                getattr(p, signal)()
            except psutil.NoSuchProcess:
                pass
        procs = psutil.wait_procs(procs, timeout=wait)[1]
    return sorted(p.pid for p in procs if running(p))


def screenshot(notebook: Path, out: Path, chromium: Path, timeout: float, size) -> dict:
    """Take the screenshot; returns the summary printed as the script's last line."""
    if not chromium.is_file():
        raise FileNotFoundError(f"Chromium not found at {chromium}: {INSTALL_HINT}")
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook={notebook}: no such notebook")
    start, me, seen = time.monotonic(), psutil.Process(), set()
    with tempfile.TemporaryDirectory(prefix="qat-screenshot-") as tmp:
        log = Path(tmp) / "jupyterlab.log"
        try:
            url = start_jupyterlab(Path(tmp), notebook, log)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
                    status = capture(page, url, out, start + timeout)
                finally:
                    seen.update(me.children(recursive=True))  # Chromium, the kernel, ...
                    browser.close()
        except (ScreenshotError, PlaywrightError) as error:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise ScreenshotError(f"{error}\n--- JupyterLab log (tail) ---\n{tail}") from None
        finally:
            leftovers = stop([*seen, *me.children(recursive=True)])  # JupyterLab too
    counts = {k: status[k] for k in ("widgets", "dropdowns", "buttons", "widgets_in_view")}
    seconds = round(time.monotonic() - start, 1)
    return {"screenshot": str(out), **counts, "seconds": seconds, "leftover_processes": leftovers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK, help="notebook to open")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the PNG")
    parser.add_argument("--chromium", type=Path, default=CHROMIUM, help="Chromium executable")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole run")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in pixels")
    parser.add_argument("--height", type=int, default=1000, help="viewport height in pixels")
    a = parser.parse_args(argv)
    if a.timeout <= 0 or a.width < 200 or a.height < 200:
        parser.error(f"--timeout={a.timeout}, --width={a.width}, --height={a.height}: expected "
                     "a positive timeout and a viewport of at least 200 x 200 pixels")  # fmt: skip
    try:
        size = (a.width, a.height)
        s = screenshot(a.notebook.resolve(), a.out.resolve(), a.chromium, a.timeout, size)
    except (FileNotFoundError, ScreenshotError) as error:
        print(f"screenshot_widgets: {error}", file=sys.stderr)
        return 2
    print(f"{s['screenshot']}: {s['widgets']} widget views ({s['dropdowns']} dropdowns, "
          f"{s['widgets_in_view']} in view) in {s['seconds']} s")  # fmt: skip
    if s["leftover_processes"]:
        print(f"processes left running: {s['leftover_processes']}", file=sys.stderr)
    print(json.dumps(s))
    return 1 if s["leftover_processes"] else 0


if __name__ == "__main__":
    sys.exit(main())
