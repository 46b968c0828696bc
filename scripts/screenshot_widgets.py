"""Screenshot the anti-transfer notebook's widget panel as a person would see it in JupyterLab.

A copy of notebooks/04_anti_transfer.ipynb is opened in JupyterLab (headless, free localhost
port, random token, QAT_PROFILE=smoke, every folder it writes in a temporary one) by Debian's
Chromium through Playwright; all cells run, the rendered panel is screenshot, and every process
started is stopped (psutil). The last stdout line is a JSON summary (tests/test_screenshot.py).

With --panel-run, as a user would: the panel's Run button is pressed, the notebook saved, the
kernel restarted and the page reloaded; the summary then says what the panel's cell still
shows (its outputs in the page and in the saved file), and the screenshot is of those results.

    .venv/bin/python scripts/screenshot_widgets.py [--out PATH] [--timeout SECONDS] [--panel-run]
"""

from __future__ import annotations

import argparse
import contextlib
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

import nbformat
import psutil
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from qat.io import write_atomic

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_anti_transfer.ipynb"
OUT = ROOT / "reports" / "widgets_04_anti_transfer.png"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = "apt-get install chromium"
FOLDERS = "QAT_DATA QAT_CACHE QAT_REPORTS JUPYTER_CONFIG_DIR JUPYTER_RUNTIME_DIR".split()
FOLDERS += ["JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"]
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
  const nb = [...(window.jupyterapp?.shell.widgets("main") ?? [])].find((w) => w.sessionContext);
  if (!nb?.context.isReady) return {errors: []};
  const errors = nb.content.widgets.flatMap((c) => c.model.outputs?.toJSON() ?? [])
    .filter((o) => o.output_type === "error").map((o) => `${o.ename}: ${o.evalue}`);
  const cell = nb.content.node.querySelector(".widget-dropdown")?.closest(".jp-Cell");
  const all = (sel) => [...(cell?.querySelectorAll(sel) ?? [])];
  const inside = ({left, top, right, bottom}) =>  // no size test: an empty output has height 0
    left >= 0 && top >= 0 && right <= innerWidth && bottom <= innerHeight;
  return {kernel: nb.sessionContext.session?.kernel?.status, errors,
    widgets: all(".jupyter-widgets").length, dropdowns: all(".widget-dropdown").length,
    buttons: all(".widget-button").length, widgets_in_view: all(".jupyter-widgets")
      .filter((e) => inside(e.getBoundingClientRect())).length};
}"""
# True once the panel's counts have not changed for 2 s (its views are created one by one).
STABLE_JS = """(s) => { const w = (window.__qat ||= {});
  const key = [s.widgets, s.dropdowns, s.buttons].join();
  if (w.key !== key) Object.assign(w, {key, since: Date.now()});
  return s.dropdowns > 0 && s.buttons > 0 && Date.now() - w.since >= 2000; }"""
RUN_ALL_JS = """() => { const app = window.jupyterapp;  // the command acts on the active notebook
  app.shell.activateById([...app.shell.widgets("main")].find((w) => w.sessionContext).id);
  void app.commands.execute("notebook:run-all-cells"); }"""
# Hide the file browser (the panel gets the width), then end the window at the panel's cell
# (the parameters cell above it), letting each layout settle for two frames.
FRAME_JS = """async (cell) => { const frame = () => new Promise((r) => requestAnimationFrame(r));
  window.jupyterapp.shell.collapseLeft(); await frame(); await frame();
  cell.scrollIntoView({block: "end"}); await frame(); await frame(); }"""


class ScreenshotError(RuntimeError):
    """A step failed; the message says which."""


# The panel's cell (found by its source: after a reload without a kernel its widgets are gone)
# and what it shows: its outputs as saved (the model), and the images rendered in the page.
PANEL_JS = """() => {
  const nb = [...(window.jupyterapp?.shell.widgets("main") ?? [])].find((w) => w.sessionContext);
  if (!nb?.context.isReady) return null;
  const cell = nb.content.widgets.find(
    (c) => c.model.sharedModel.getSource().includes("AntiTransferPanel("));
  if (!cell) return null;
  const html = cell.model.outputs.toJSON().map((o) => (o.data ?? {})["text/html"])
    .filter((h) => h).map((h) => Array.isArray(h) ? h.join("") : h);
  const shown = html.find((h) => h.includes("<h2>Run:")) ?? "";
  const images = [...cell.node.querySelectorAll(".jp-OutputArea-output img")];
  return {kernel: nb.sessionContext.session?.kernel?.status, dirty: nb.context.model.dirty,
    results: shown.length > 0, title: (shown.match(/<h2>(.*?)<\\/h2>/) ?? [])[1] ?? "",
    saved_images: (shown.match(/<img src="data:image\\/png;base64,/g) ?? []).length,
    tables: (shown.match(/<table/g) ?? []).length,
    rendered_images: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    widget_errors: cell.node.innerText.includes("Error displaying widget")};
}"""


def start_jupyterlab(tmp: Path, notebook: Path, log: Path, deadline: float) -> str:
    """Start JupyterLab on a copy of `notebook`; once it answers, the notebook's URL."""
    (tmp / "notebooks").mkdir()
    shutil.copy2(notebook, tmp / "notebooks" / notebook.name)
    env = {**os.environ, "QAT_PROFILE": "smoke", "PYTHONUNBUFFERED": "1"}
    for name in FOLDERS:  # nothing of the user's or the repository's
        env[name] = str(tmp / name.lower().removesuffix("_dir").replace("_", "-"))
    for name, values in LAB_SETTINGS.items():
        path = Path(env["JUPYTERLAB_SETTINGS_DIR"], f"@jupyterlab/{name}.jupyterlab-settings")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
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
    while time.monotonic() < deadline:  # the status API answers once the server is up
        if lab.poll() is not None:
            raise ScreenshotError(f"JupyterLab exited with code {lab.returncode}")
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5).close()
            return f"{base}/lab/tree/{notebook.name}?token={token}"
        except OSError:
            time.sleep(0.5)
    raise ScreenshotError("JupyterLab did not answer before the timeout")


def ms(deadline: float) -> float:
    """Milliseconds left until `deadline` (a time.monotonic() value), at least one second's."""
    return max(1.0, deadline - time.monotonic()) * 1000


def capture(page, url: str, out: Path, deadline: float) -> dict:
    """Open the notebook, run all cells, wait for the panel, write the PNG; the page status."""

    def until(condition: str, what: str) -> dict:
        js = f"() => {{ const s = ({STATUS_JS})(); return s.errors.length || ({condition}); }}"
        try:
            page.wait_for_function(js, polling=250, timeout=ms(deadline))
        except PlaywrightError as error:
            first = error.message.splitlines()[0]
            status = page.evaluate(STATUS_JS)
            raise ScreenshotError(f"waiting for {what}: {first}; page: {status}") from None
        status = page.evaluate(STATUS_JS)
        if status["errors"]:
            raise ScreenshotError("a notebook cell failed: " + "; ".join(status["errors"]))
        return status

    page.goto(url, timeout=ms(deadline))
    until("s.kernel === 'idle'", "the notebook and its kernel")
    page.evaluate(RUN_ALL_JS)
    until(f"({STABLE_JS})(s)", "the widget panel")
    panel = page.locator(".jp-Notebook .jp-Cell").filter(has=page.locator(".widget-dropdown"))
    panel.first.locator(".widget-button.mod-primary").wait_for(timeout=ms(deadline))  # Run
    panel.first.evaluate(FRAME_JS)
    write_atomic(out, lambda tmp: page.screenshot(path=tmp, type="png", animations="disabled"))
    return page.evaluate(STATUS_JS)


def panel_roundtrip(page, url: str, saved: Path, out: Path, deadline: float) -> dict:
    """Run all cells, press the panel's Run, wait for its results, save, restart the kernel,
    reload the page; what the panel's cell shows before and after (PANEL_JS), and in the saved
    file `saved`. The screenshot is of the reloaded results."""

    def panel(condition: str, what: str) -> dict:
        js = f"() => {{ const s = ({PANEL_JS})(); return s !== null && ({condition}); }}"
        try:
            page.wait_for_function(js, polling=250, timeout=ms(deadline))
        except PlaywrightError as error:
            first = error.message.splitlines()[0]
            raise ScreenshotError(f"waiting for {what}: {first}; panel: "
                                  f"{page.evaluate(PANEL_JS)}") from None  # fmt: skip
        return page.evaluate(PANEL_JS)

    capture(page, url, out, deadline)  # all cells run, the panel drawn
    cell = page.locator(".jp-Notebook .jp-Cell").filter(has=page.locator(".widget-dropdown"))
    cell.first.locator(".widget-button.mod-primary").click(timeout=ms(deadline))
    before = panel("s.results && s.rendered_images > 0", "the panel's results")
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    panel("!s.dirty", "the notebook to be saved")
    page.evaluate("""async () => {
      const nb = [...window.jupyterapp.shell.widgets("main")].find((w) => w.sessionContext);
      await nb.sessionContext.session.kernel.restart(); }""")
    panel("s.kernel === 'idle'", "the restarted kernel")
    page.reload(timeout=ms(deadline))
    after = panel("s.kernel === 'idle' && s.results && s.rendered_images > 0",
                  "the panel's results after the reload")  # fmt: skip
    page.locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
    write_atomic(out, lambda tmp: page.screenshot(path=tmp, type="png", animations="disabled"))
    stored = nbformat.read(saved, as_version=4)
    [source] = [c for c in stored.cells if "AntiTransferPanel(" in c.source]
    in_file = [o for o in source.get("outputs", []) if "<h2>Run:" in
               str(o.get("data", {}).get("text/html", ""))]  # fmt: skip
    return {"before_save": before, "after_reload": after, "outputs_in_file": len(in_file),
            "images_in_file": sum(str(o["data"]["text/html"]).count("data:image/png")
                                  for o in in_file)}  # fmt: skip


def stop(procs: list[psutil.Process], grace: float = 20.0) -> list[int]:
    """Terminate `procs`, SIGKILL those left after `grace` s; the pids still running."""
    for signal, wait in (("terminate", grace), ("kill", 5.0)):
        procs = [p for p in procs if running(p)]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                getattr(p, signal)()
        procs = psutil.wait_procs(procs, timeout=wait)[1]
    return sorted(p.pid for p in procs if running(p))


def running(p: psutil.Process) -> bool:
    """Alive and not a zombie (PID 1 in a container may never reap what it inherits)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    return False


def screenshot(
    notebook: Path, out: Path, chromium: Path, timeout: float, size, panel_run: bool = False
) -> dict:
    """Take the screenshot (after a panel round trip with `panel_run`); returns the summary
    printed as the script's last line."""
    if not chromium.is_file():
        raise FileNotFoundError(f"Chromium not found at {chromium}: {INSTALL_HINT}")
    start, me, seen = time.monotonic(), psutil.Process(), set()
    with tempfile.TemporaryDirectory(prefix="qat-screenshot-") as tmp:
        log = Path(tmp) / "jupyterlab.log"
        try:
            url = start_jupyterlab(Path(tmp), notebook, log, start + timeout)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
                    if panel_run:
                        saved = Path(tmp) / "notebooks" / notebook.name
                        trip = panel_roundtrip(page, url, saved, out, start + timeout)
                        status = {**page.evaluate(STATUS_JS), "panel_run": trip}
                    else:
                        status = capture(page, url, out, start + timeout)
                finally:
                    seen.update(me.children(recursive=True))  # Chromium, the kernel, ...
                    browser.close()
        except (ScreenshotError, PlaywrightError) as error:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise ScreenshotError(f"{error}\n--- JupyterLab log (tail) ---\n{tail}") from None
        finally:
            leftovers = stop([*seen, *me.children(recursive=True)])  # JupyterLab too
    keys = ("widgets", "dropdowns", "buttons", "widgets_in_view", "panel_run")
    counts = {k: status[k] for k in keys if k in status}
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
    parser.add_argument("--panel-run", action="store_true",
                        help="press Run, save, restart the kernel and reload the page; "
                        "report what the panel's cell still shows")  # fmt: skip
    a = parser.parse_args(argv)
    if a.timeout <= 0 or a.width < 200 or a.height < 200:
        parser.error(f"--timeout={a.timeout}, --width={a.width}, --height={a.height}: expected "
                     "a positive timeout and a viewport of at least 200 x 200 pixels")  # fmt: skip
    try:
        size, out = (a.width, a.height), a.out.resolve()
        s = screenshot(a.notebook.resolve(), out, a.chromium, a.timeout, size, a.panel_run)
    except (FileNotFoundError, ScreenshotError) as error:
        print(f"screenshot_widgets: {error}", file=sys.stderr)
        return 2
    if s["leftover_processes"]:
        print(f"processes left running: {s['leftover_processes']}", file=sys.stderr)
    print(json.dumps(s))
    return 1 if s["leftover_processes"] else 0


if __name__ == "__main__":
    sys.exit(main())
