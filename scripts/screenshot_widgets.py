"""Screenshot the anti-transfer notebook's widget panel as a person would see it in JupyterLab.

Tests of the widgets check their Python side; this checks the part only a browser shows: that
the ipywidgets JupyterLab extension loads and the panel renders. It

1. copies notebooks/04_anti_transfer.ipynb into a temporary folder (the source stays free of
   outputs) and starts JupyterLab there, headless, on a free localhost port with a random token,
   QAT_PROFILE=smoke and its own settings, config and runtime folders;
2. opens the notebook in headless Chromium, driven over the Chrome DevTools protocol (through
   websocket-client, which jupyter_server already depends on: no selenium, no chromedriver),
   runs all cells with JupyterLab's "Run All Cells" command and waits until widgets render;
3. saves a screenshot (default reports/widgets_04_anti_transfer.png), stops Chromium and
   JupyterLab, and makes sure none of their processes is left running.

The last line of stdout is a JSON summary (screenshot path, widget counts, seconds, leftover
processes), which tests/test_screenshot.py reads.

    .venv/bin/python scripts/screenshot_widgets.py [--out PATH] [--timeout SECONDS]

Run and data folders (QAT_DATA, QAT_CACHE, QAT_REPORTS) default to the temporary folder, so the
training cell that "Run All" starts after the panel writes nothing into the repository; it is
stopped with the kernel once the screenshot is taken.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_anti_transfer.ipynb"
OUT = ROOT / "reports" / "widgets_04_anti_transfer.png"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = "apt-get install chromium chromium-driver"

# Flags that keep a headless Chromium quiet, offline and free of first-run state.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--hide-scrollbars",
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
)

# JupyterLab user settings for a clean, deterministic page: no news or update toasts, and every
# cell kept in the DOM so the widget counts do not depend on what is scrolled into view.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

# What the page looks like now, evaluated in the browser: whether the app and the notebook are
# up, the kernel status, errors in cell outputs, and how many widget views are in the notebook.
STATUS_JS = """
(() => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return {state: "loading"};
  // Not currentWidget: that follows focus, which a headless window may never get.
  const panel = Array.from(app.shell.widgets("main")).find((w) => w.content && w.sessionContext);
  if (!panel || !panel.content || !panel.sessionContext || !panel.context
      || !panel.context.isReady) return {state: "opening"};
  const errors = [];
  for (const cell of panel.content.widgets) {
    if (cell.model.type !== "code") continue;
    for (const out of cell.model.outputs.toJSON()) {
      if (out.output_type === "error") errors.push(out.ename + ": " + out.evalue);
    }
  }
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  // Count in the panel's cell only (the first cell showing a dropdown): later cells add
  // widgets of their own (tqdm progress bars) while the screenshot is taken.
  const first = panel.content.node.querySelector(".widget-dropdown");
  const cell = first ? first.closest(".jp-Cell") : null;
  const count = (selector) => (cell ? cell.querySelectorAll(selector).length : 0);
  return {
    state: "open",
    kernel: kernel ? kernel.status : null,
    widgets: count(".jupyter-widgets"),
    dropdowns: count(".widget-dropdown"),
    buttons: count(".widget-button"),
    errors: errors,
  };
})()
"""

# "Run All Cells" acts on the active notebook, so activate it first.
RUN_ALL_JS = """
(() => {
  const app = window.jupyterapp;
  const panel = Array.from(app.shell.widgets("main")).find((w) => w.content && w.sessionContext);
  app.shell.activateById(panel.id);
  void app.commands.execute("notebook:run-all-cells");
  return true;
})()
"""

# Frame the picture: hide the file browser (the panel gets the width) and scroll so the
# panel's cell ends at the bottom, with the parameters cell above it.
FRAME_JS = """
(() => {
  window.jupyterapp.shell.collapseLeft();
  const widget = document.querySelector(".jp-Notebook .widget-dropdown");
  const cell = widget && widget.closest(".jp-Cell");
  if (cell) cell.scrollIntoView({block: "end"});
  return Boolean(cell);
})()
"""

# How many of the panel's widget views lie wholly inside the window: what the picture shows.
IN_VIEW_JS = """
(() => {
  const first = document.querySelector(".jp-Notebook .widget-dropdown");
  const cell = first ? first.closest(".jp-Cell") : null;
  if (!cell) return 0;
  // No size test: the panel's empty output area is a widget of height 0.
  const inside = (r) => r.left >= 0 && r.top >= 0
    && r.right <= window.innerWidth && r.bottom <= window.innerHeight;
  return Array.from(cell.querySelectorAll(".jupyter-widgets"))
    .filter((el) => inside(el.getBoundingClientRect())).length;
})()
"""


class ScreenshotError(RuntimeError):
    """A step failed; the message says which and what to do."""


# ---------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc (the kernel runs in its own session, so a
    process-group kill of the server would miss it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Field 4 is the parent pid; the command name (field 2) may contain spaces, so split
        # after its closing parenthesis.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process started (directly or not) by `pid` that is still alive."""
    out, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def stop_tree(proc: subprocess.Popen, pids: set[int], grace: float = 10.0) -> list[int]:
    """Terminate `proc` and the processes `pids` (its descendants seen earlier), waiting
    `grace` seconds before SIGKILL; returns the pids still alive afterwards."""
    pids = {*pids, *descendants(proc.pid)}
    if proc.poll() is None:
        proc.terminate()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (proc.poll() is None or any(map(alive, pids))):
        time.sleep(0.2)
    for pid in [proc.pid, *pids]:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(0.2)
    return sorted(pid for pid in [proc.pid, *pids] if alive(pid))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- JupyterLab


def check_requirements(chromium: Path, notebook: Path) -> None:
    """Fail before starting anything when a prerequisite is missing."""
    if not chromium.is_file():
        raise FileNotFoundError(f"Chromium not found at {chromium}: {INSTALL_HINT}")
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook={notebook}: no such notebook")
    if importlib.util.find_spec("jupyterlab") is None:
        raise ScreenshotError(
            f"jupyterlab is not importable from {sys.executable}; run this script with the "
            "project's venv: .venv/bin/python scripts/screenshot_widgets.py"
        )
    kernel = json.loads(notebook.read_text()).get("metadata", {}).get("kernelspec", {})
    name = kernel.get("name")
    if name:
        from jupyter_client.kernelspec import KernelSpecManager

        if name not in KernelSpecManager().find_kernel_specs():
            raise ScreenshotError(
                f"the notebook asks for kernel {name!r}, which is not installed; register it "
                f"with: {sys.executable} -m ipykernel install --sys-prefix --name {name}"
            )


def prepare_workdir(tmp: Path, notebook: Path) -> tuple[Path, dict[str, str]]:
    """The notebook copy's folder and JupyterLab's environment, both inside `tmp`."""
    workdir = tmp / "notebooks"
    workdir.mkdir()
    shutil.copy2(notebook, workdir / notebook.name)
    settings = tmp / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ)
    env["QAT_PROFILE"] = "smoke"
    for var in ("QAT_DATA", "QAT_CACHE", "QAT_REPORTS"):
        env.setdefault(var, str(tmp / var.lower()))
    env.update(
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "lab-workspaces"),
        JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),  # no user config (passwords, themes)
        JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"),
        PYTHONUNBUFFERED="1",
    )
    return workdir, env


def start_jupyterlab(workdir: Path, env: dict[str, str], port: int, token: str, log: Path):
    """JupyterLab serving `workdir` on 127.0.0.1:`port`, with `window.jupyterapp` exposed so the
    browser side can run commands without clicking through menus."""
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={workdir}",
        f"--IdentityProvider.token={token}",
        "--LabApp.expose_app_in_browser=True",
        "--ServerApp.terminals_enabled=False",
        # Trust signatures go to memory and the temporary folder, not the user's data folder.
        "--NotebookNotary.db_file=:memory:",
        f"--NotebookNotary.secret_file={workdir.parent / 'notebook_secret'}",
    ]
    if os.geteuid() == 0:  # containers often run as root; JupyterLab refuses without this
        command.append("--allow-root")
    with log.open("wb") as sink:
        return subprocess.Popen(
            command, cwd=workdir, env=env, stdout=sink, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip


def wait_for_server(proc: subprocess.Popen, base: str, token: str, timeout: float) -> None:
    """Block until the server answers its status API."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ScreenshotError(f"JupyterLab exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise ScreenshotError(f"JupyterLab did not answer within {timeout:.0f} s")


def shutdown_server(base: str, token: str) -> None:
    """Ask the server to stop its kernels and exit (the clean path; stop_tree is the fallback)."""
    request = urllib.request.Request(
        f"{base}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except (urllib.error.URLError, OSError):
        pass  # already gone or not answering: stop_tree takes over


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- Chromium over DevTools


def start_chromium(chromium: Path, profile: Path, size: tuple[int, int], log: Path):
    command = [
        str(chromium),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={size[0]},{size[1]}",
        "about:blank",
    ]
    with log.open("wb") as sink:
        return subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


def devtools_page(proc: subprocess.Popen, profile: Path, timeout: float, log: Path) -> str:
    """The DevTools websocket URL of Chromium's first page."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ScreenshotError(f"Chromium exited with code {proc.returncode}:\n{_tail(log)}")
        if port_file.is_file() and port_file.read_text().strip():
            port = int(port_file.read_text().split()[0])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
            except (urllib.error.URLError, OSError, ValueError):
                pages = []
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.3)
    raise ScreenshotError(f"Chromium's DevTools did not come up within {timeout:.0f} s")


class DevTools:
    """A minimal Chrome DevTools protocol client: send a command, wait for its reply (events
    that arrive meanwhile are ignored; we poll the page instead of subscribing)."""

    def __init__(self, url: str) -> None:
        import websocket  # websocket-client, a jupyter_server dependency

        # Chromium rejects websocket clients that send an Origin it was not told to allow.
        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise ScreenshotError(f"DevTools {method} failed: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        """The JSON value of `expression` in the page (None while the page is navigating)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            return None
        return result.get("result", {}).get("value")

    def close(self) -> None:
        self.ws.close()


# ---------------------------------------------------------------- the run


def poll(devtools: DevTools, done, what: str, deadline: float) -> dict:
    """Evaluate STATUS_JS until `done(status)`; fail at once when a cell raised."""
    status: dict = {}
    while time.monotonic() < deadline:
        status = devtools.evaluate(STATUS_JS) or {}
        if status.get("errors"):
            raise ScreenshotError("a notebook cell failed: " + "; ".join(status["errors"]))
        if done(status):
            return status
        time.sleep(0.5)
    raise ScreenshotError(f"timed out waiting for {what}; last page status: {status}")


def wait_until_stable(devtools: DevTools, deadline: float, quiet: float = 2.0) -> dict:
    """Wait until the widget counts stop changing for `quiet` seconds (the panel's views are
    created one by one after its output arrives)."""
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        status = devtools.evaluate(STATUS_JS) or {}
        counts = (status.get("widgets"), status.get("dropdowns"), status.get("buttons"))
        if counts != last:
            last, since = counts, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return status
        time.sleep(0.25)
    return status


def capture(
    devtools: DevTools, lab_url: str, size: tuple[int, int], deadline: float
) -> tuple[bytes, dict]:
    """Open the notebook, run all cells, wait for the widgets; the PNG and the page status."""
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        width=size[0], height=size[1], deviceScaleFactor=1, mobile=False,
    )  # fmt: skip
    devtools.call("Emulation.setFocusEmulationEnabled", enabled=True)
    devtools.call("Page.navigate", url=lab_url)
    poll(devtools, lambda s: s.get("kernel") == "idle", "the notebook and its kernel", deadline)
    devtools.evaluate(RUN_ALL_JS)
    poll(
        devtools,
        lambda s: s.get("dropdowns", 0) > 0 and s.get("buttons", 0) > 0,
        "the widget panel to render",
        deadline,
    )
    status = wait_until_stable(devtools, deadline)
    devtools.evaluate(FRAME_JS)
    time.sleep(1.0)  # let scrolling and fonts settle before the capture
    shot = devtools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    status["widgets_in_view"] = devtools.evaluate(IN_VIEW_JS) or 0
    return base64.b64decode(shot["data"]), status


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def screenshot(
    notebook: Path = NOTEBOOK,
    out: Path = OUT,
    chromium: Path = CHROMIUM,
    timeout: float = 300.0,
    size: tuple[int, int] = (1400, 1000),
) -> dict:
    """Take the screenshot; returns the summary printed as the script's last line."""
    check_requirements(chromium, notebook)
    start = time.monotonic()
    deadline = start + timeout
    leftovers: list[int] = []
    with tempfile.TemporaryDirectory(prefix="qat-screenshot-") as tmp_name:
        tmp = Path(tmp_name)
        workdir, env = prepare_workdir(tmp, notebook)
        port, token = free_port(), secrets.token_hex(16)
        base = f"http://127.0.0.1:{port}"
        lab_log, chrome_log = tmp / "jupyterlab.log", tmp / "chromium.log"
        lab = start_jupyterlab(workdir, env, port, token, lab_log)
        chrome = devtools = None
        lab_children: set[int] = set()
        try:
            wait_for_server(lab, base, token, deadline - time.monotonic())
            profile = tmp / "chromium-profile"
            chrome = start_chromium(chromium, profile, size, chrome_log)
            devtools = DevTools(devtools_page(chrome, profile, 60, chrome_log))
            url = f"{base}/lab/tree/{notebook.name}?token={token}"
            try:
                png, status = capture(devtools, url, size, deadline)
            finally:
                lab_children = set(descendants(lab.pid))  # the kernel, before it is shut down
        except ScreenshotError as error:
            raise ScreenshotError(
                f"{error}\n--- JupyterLab log (tail) ---\n{_tail(lab_log)}"
            ) from None
        finally:
            if devtools is not None:
                devtools.close()
            if chrome is not None:
                leftovers += stop_tree(chrome, set(descendants(chrome.pid)))
            shutdown_server(base, token)
            leftovers += stop_tree(lab, lab_children, grace=20.0)
        write_atomic(out, png)
    return {
        "screenshot": str(out),
        "widgets": status.get("widgets", 0),
        "dropdowns": status.get("dropdowns", 0),
        "buttons": status.get("buttons", 0),
        "widgets_in_view": status["widgets_in_view"],
        "seconds": round(time.monotonic() - start, 1),
        "leftover_processes": leftovers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK, help="notebook to open")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the PNG")
    parser.add_argument("--chromium", type=Path, default=CHROMIUM, help="Chromium executable")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole run")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in pixels")
    parser.add_argument("--height", type=int, default=1000, help="viewport height in pixels")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.width < 200 or args.height < 200:
        parser.error(
            f"--timeout={args.timeout}, --width={args.width}, --height={args.height}: expected "
            "a positive timeout and a viewport of at least 200 x 200 pixels"
        )
    try:
        summary = screenshot(
            args.notebook.resolve(), args.out.resolve(), args.chromium, args.timeout,
            (args.width, args.height),
        )  # fmt: skip
    except (FileNotFoundError, ScreenshotError) as error:
        print(f"screenshot_widgets: {error}", file=sys.stderr)
        return 2
    print(
        f"{summary['screenshot']}: {summary['widgets']} widget elements "
        f"({summary['dropdowns']} dropdowns, {summary['widgets_in_view']} in view) "
        f"in {summary['seconds']} s"
    )
    if summary["leftover_processes"]:
        print(f"processes left running: {summary['leftover_processes']}", file=sys.stderr)
    print(json.dumps(summary))
    return 1 if summary["leftover_processes"] else 0


if __name__ == "__main__":
    sys.exit(main())
