"""Every figure a reports page shows, as Chromium draws it at a Markdown page's width.

The PNGs that reports/*.md link (or those of --pages) are laid out in one HTML page whose
column is as wide as GitHub's (--width pixels, default 1000), each at most that wide, as a
rendered Markdown page shows them; Debian's Chromium, driven by Playwright, takes a full-page
screenshot. The last stdout line is a JSON summary: for each figure its pixel width and the
scale it is drawn at (below 1: shrunk, its text with it), so that a figure too wide to read
at page width is named. tests/test_screenshot.py runs it.

    .venv/bin/python scripts/screenshot_figures.py [--pages reports/README.md ...] [--out PATH]
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from qat.io import write_atomic

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = "apt-get install chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--no-first-run", "--disable-gpu", "--disable-dev-shm-usage"]
# The drawn size of every image once loaded: natural and shown width, in CSS pixels.
SIZES_JS = """() => [...document.images].map((i) => ({src: i.dataset.src,
  complete: i.complete, natural: i.naturalWidth, shown: i.getBoundingClientRect().width}))"""


def figures(pages: list[Path]) -> list[Path]:
    """The PNG files the Markdown pages link, in page order, each once."""
    found: list[Path] = []
    for page in pages:
        for link in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text()):
            path = (page.parent / link).resolve()
            if path.is_file() and path not in found:
                found.append(path)
    return found


def screenshot(pngs: list[Path], out: Path, chromium: Path, width: int) -> dict:
    """Draw `pngs` in a column `width` pixels wide; the summary printed as the last line."""
    if not chromium.is_file():
        raise FileNotFoundError(f"Chromium not found at {chromium}: {INSTALL_HINT}")
    body = "\n".join(
        f'<p>{html.escape(p.name)}</p><img src="{p.as_uri()}" data-src="{html.escape(p.name)}">'
        for p in pngs
    )
    style = (
        f"body {{margin: 0 auto; width: {width}px; font: 14px sans-serif}} img {{max-width: 100%}}"
    )
    with tempfile.TemporaryDirectory(prefix="qat-figures-") as tmp:
        page_file = Path(tmp) / "figures.html"
        page_file.write_text(f"<html><style>{style}</style><body>{body}</body></html>")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": width + 40, "height": 900})
                page.goto(page_file.as_uri(), wait_until="load")
                sizes = page.evaluate(SIZES_JS)
                write_atomic(out, lambda t: page.screenshot(path=t, type="png", full_page=True))
            finally:
                browser.close()
    loaded = [s for s in sizes if s["complete"] and s["natural"]]
    shown = [{"figure": s["src"], "pixels": s["natural"],
              "scale": round(s["shown"] / s["natural"], 3)} for s in loaded]  # fmt: skip
    missing = [s["src"] for s in sizes if s not in loaded]
    return {"screenshot": str(out), "width": width, "figures": shown, "not_loaded": missing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=Path, nargs="+",
                        default=sorted((ROOT / "reports").glob("*.md")),
                        help="Markdown pages whose figures to draw (reports/*.md)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("figures-at-page-width.png"))
    parser.add_argument("--chromium", type=Path, default=CHROMIUM, help="Chromium executable")
    parser.add_argument("--width", type=int, default=1000, help="the page's column, in pixels")
    a = parser.parse_args(argv)
    if a.width < 200:
        parser.error(f"--width={a.width}: expected at least 200 pixels")
    try:
        summary = screenshot(figures(a.pages), a.out.resolve(), a.chromium, a.width)
    except FileNotFoundError as error:
        print(f"screenshot_figures: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 1 if summary["not_loaded"] else 0


if __name__ == "__main__":
    sys.exit(main())
