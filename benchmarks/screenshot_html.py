"""The README's picture of an HTML report: ``recipes/fp16.yaml`` applied to the example model it
names (built by ``surgeon.examples``) with ``--html``, the page opened in headless Chromium
(network off) and its top captured.

    python benchmarks/screenshot_html.py [-o benchmarks/html-report.png] [--recipe recipes/fp16.yaml]

Runs in a temporary folder with relative paths, so the page names no folder of this machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from browser import open_page, png_pixels  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=HERE / "html-report.png")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "fp16.yaml")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=1500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy(args.recipe, work / args.recipe.name)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-m", "surgeon.examples", "."], cwd=work, check=True, env=env)
        cmd = [sys.executable, "-m", "surgeon", "apply", args.recipe.name, "--dry-run", "-q", "--html", "report.html"]
        res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"surgeon apply {args.recipe.name}: exit {res.returncode}: {res.stderr}")
        page = open_page(work / "report.html", width=args.width, height=args.height)
        if page.errors or page.requests:
            raise SystemExit(f"the page logged errors {page.errors} or made requests {page.requests}")
        png_pixels(page.screenshot)  # a PNG we can read back
        args.output.write_bytes(page.screenshot)
    print(f"wrote {args.output} ({len(page.screenshot) // 1024} KiB) from {args.recipe.name}: verdicts {page.verdicts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
