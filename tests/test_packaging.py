"""The built wheel: passes/ ships as surgeon.passes and nothing is installed as a top-level `passes`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_no_top_level_passes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("surgeon-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if "/" in n and not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"surgeon"}
    modules = {n.rsplit("/", 1)[-1] for n in names if n.startswith("surgeon/passes/")}
    assert {"__init__.py", "rename_io.py", "cleanup.py"} <= modules
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "surgeon = surgeon.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_passes_not_importable_as_top_level_outside_the_repo(tmp_path: Path) -> None:
    code = "import importlib.util, surgeon.passes; print(importlib.util.find_spec('passes'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"
