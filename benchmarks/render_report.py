"""Render a report's index.html in headless Chromium to a PNG, to look at it as a reader would.

    python benchmarks/render_report.py results/pmp [--out page.png] [--hash "sort=RG final&desc=1"]

Needs Chromium (Debian: `apt install chromium`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a report folder (holds index.html)")
    parser.add_argument("--out", type=Path, default=None, help="PNG (default: REPORT/page.png)")
    parser.add_argument("--hash", default="", help="sort and filter, as in the page's address")
    parser.add_argument("--size", default="1400,2400", help="window width,height in pixels")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("render_report: no chromium on PATH (apt install chromium)", file=sys.stderr)
        return 2
    page = (args.report / "index.html").resolve()
    out = (args.out or args.report / "page.png").resolve()
    url = page.as_uri() + (f"#{args.hash}" if args.hash else "")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={out}", f"--window-size={args.size}", url],
                   check=True, capture_output=True, timeout=120)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
