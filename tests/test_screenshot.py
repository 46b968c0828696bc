"""scripts/screenshot_widgets.py: the anti-transfer widget panel as a browser renders it.

The end-to-end test needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium; the
script drives it with Playwright, whose own browser download is not used) and is skipped
without it; the missing-Chromium message is checked everywhere."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "screenshot_widgets.py"
NOTEBOOK = ROOT / "notebooks" / "04_anti_transfer.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = "apt-get install chromium"
SIZE = (1400, 1000)  # the script's default viewport (width, height)
# JupyterLab's brand blue, the fill of the panel's primary "Run" button (#1976d2).
RUN_BUTTON_RGB = (25, 118, 210)


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _brand_blue_pixels(rgb: np.ndarray) -> int:
    """Pixels within a small tolerance of the Run button's fill colour."""
    distance = np.abs(rgb.astype(int) - np.array(RUN_BUTTON_RGB)).max(axis=-1)
    return int((distance <= 12).sum())


def _run_processes() -> set[int]:
    """Live processes of a screenshot run: JupyterLab and its kernel (their command lines name
    the script's temporary folder) and Playwright's Chromium (its temporary profile)."""
    import psutil

    marks = ("qat-screenshot-", "playwright_chromiumdev_profile-")
    found = set()
    for p in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(p.info["cmdline"] or ())
        if p.info["status"] != psutil.STATUS_ZOMBIE and any(m in cmdline for m in marks):
            found.add(p.pid)
    return found


def test_brand_blue_pixel_count_on_a_hand_made_image():
    image = np.full((40, 60, 3), 255, dtype=np.uint8)
    image[5:15, 10:30] = RUN_BUTTON_RGB  # 200 pixels of the colour
    image[20:22, 0:5] = (30, 110, 200)  # 10 pixels within tolerance
    image[30:32, 0:5] = (25, 118, 150)  # blue channel too far off: not counted
    assert _brand_blue_pixels(image) == 210


def test_missing_chromium_exits_with_the_install_hint(tmp_path):
    out = tmp_path / "shot.png"
    done = _run("--chromium", str(tmp_path / "no-chromium"), "--out", str(out), timeout=60)
    assert done.returncode == 2
    assert "Chromium not found" in done.stderr
    assert INSTALL_HINT in done.stderr
    assert not out.exists()


def test_bad_viewport_is_rejected_with_its_value(tmp_path):
    done = _run("--width", "10", "--out", str(tmp_path / "shot.png"), timeout=60)
    assert done.returncode != 0
    assert "--width=10" in done.stderr


@pytest.mark.slow
def test_screenshot_shows_the_rendered_widget_panel(tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian's Chromium): {INSTALL_HINT}")
    from PIL import Image

    source_before = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    out = tmp_path / "widgets.png"
    before = _run_processes()
    done = _run("--out", str(out), "--timeout", "300", timeout=420)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])

    assert summary["screenshot"] == str(out)
    assert summary["widgets"] > 3
    assert summary["dropdowns"] >= 1 and summary["buttons"] >= 1
    assert summary["widgets_in_view"] == summary["widgets"], "panel not wholly in the picture"
    assert summary["leftover_processes"] == []
    # Checked from outside too: no JupyterLab, kernel or Chromium of the run is still alive.
    assert _run_processes() - before == set()

    assert out.stat().st_size > 20_000
    rgb = np.asarray(Image.open(out).convert("RGB"))
    assert rgb.shape == (SIZE[1], SIZE[0], 3)
    assert rgb.astype(float).std() > 10, "screenshot is (nearly) blank"
    # The Run button (~150 x 30 px) must be drawn, not just JupyterLab's thin blue tab marks.
    assert _brand_blue_pixels(rgb) > 2500

    assert hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest() == source_before


@pytest.mark.slow
def test_the_panels_results_survive_save_restart_and_reload(tmp_path):
    """In JupyterLab: run notebook 04, press the panel's Run, save, restart the kernel, reload
    the page. The panel's plots and tables are still there as ordinary outputs of its cell, in
    the page and in the saved file (they were widget state, lost with the kernel)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian's Chromium): {INSTALL_HINT}")
    source_before = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    out = tmp_path / "panel.png"
    before = _run_processes()
    done = _run("--out", str(out), "--timeout", "400", "--panel-run", timeout=520)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    trip = summary["panel_run"]
    for moment in ("before_save", "after_reload"):
        shown = trip[moment]
        assert shown["results"], moment
        assert shown["title"].startswith("Run: [confounded] real at word@conv2_1"), moment
        assert shown["saved_images"] >= 3 and shown["tables"] >= 2, moment
        assert shown["rendered_images"] == shown["saved_images"], moment  # drawn in the page
    assert trip["after_reload"]["kernel"] == "idle"
    assert trip["outputs_in_file"] == 1 and trip["images_in_file"] >= 3  # in the saved file
    assert summary["leftover_processes"] == []
    assert _run_processes() - before == set()
    assert out.stat().st_size > 20_000
    assert hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest() == source_before


FIGURES_SCRIPT = ROOT / "scripts" / "screenshot_figures.py"


@pytest.mark.slow
def test_the_reports_figures_are_drawn_near_full_size_at_page_width(tmp_path):
    """Chromium draws the figures of reports/README.md in a 1000-pixel column (a Markdown
    page's): each at 85% of its size or more, so its 10-point text stays readable (the sweep
    figure was a 3047-pixel strip drawn at a third). A figure wider than the page is named
    with its scale."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (Debian's Chromium): {INSTALL_HINT}")
    from matplotlib.figure import Figure

    from qat import io

    for name, width in (("narrow", 6.0), ("strip", 27.7)):  # 27.7 in: the old tap_sweep.png
        fig = Figure(figsize=(width, 3.8))
        fig.subplots().plot([0, 1])
        io.save_figure(fig, tmp_path / "figures", name)
    page = tmp_path / "page.md"
    page.write_text("![a](figures/narrow.png)\n\n![b](figures/strip.png)\n")
    out = tmp_path / "drawn.png"
    pages = [str(page), str(ROOT / "reports" / "README.md")]
    done = subprocess.run(
        [sys.executable, str(FIGURES_SCRIPT), "--pages", *pages, "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    scales = {f["figure"]: f["scale"] for f in summary["figures"]}
    assert scales["narrow.png"] == 1.0 and scales["strip.png"] < 0.4  # the script can tell
    committed = {k: v for k, v in scales.items() if k not in ("narrow.png", "strip.png")}
    assert len(committed) >= 5 and summary["not_loaded"] == []
    assert min(committed.values()) >= 0.85, committed
    assert out.stat().st_size > 20_000
