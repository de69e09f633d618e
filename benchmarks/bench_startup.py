"""Start-up time of the CLI against ``python -c pass`` (the interpreter's own start-up), measured in
the same session: ``surgeon --help``, ``--version``, ``passes`` and ``explain`` import neither
pydantic-heavy pass modules nor onnx, onnxruntime or onnx-graphsurgeon.

Targets: ``surgeon --help`` in at most 0.15 s; ``surgeon passes`` under 0.3 s. Each command runs
``--runs`` times (after one warm-up run); the median wall time and its ratio to the interpreter's
start-up are reported::

    python benchmarks/bench_startup.py --runs 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGETS_S = {"surgeon --help": 0.15, "surgeon --version": 0.15, "surgeon passes": 0.3}


def _surgeon() -> list[str]:
    exe = Path(sys.executable).with_name("surgeon")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "surgeon.cli"]


def commands() -> dict[str, list[str]]:
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "surgeon --help": [*_surgeon(), "--help"],
        "surgeon --version": [*_surgeon(), "--version"],
        "surgeon passes": [*_surgeon(), "passes"],
        "surgeon explain rename-io": [*_surgeon(), "explain", "rename-io"],
    }


def time_command(cmd: list[str], runs: int) -> list[float]:
    subprocess.run(cmd, capture_output=True, check=True)  # warm-up: file cache, .pyc files
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="start-up time of surgeon --help and surgeon passes")
    p.add_argument("--runs", type=int, default=11, help="timed runs per command (median reported)")
    p.add_argument("--json", type=Path, help="write the medians as JSON")
    args = p.parse_args(argv)
    medians = {}
    print(f"{'command':<26} {'median s':>9} {'min s':>7} {'max s':>7} {'x python':>9}  target")
    floor = None
    for name, cmd in commands().items():
        times = time_command(cmd, args.runs)
        med = statistics.median(times)
        medians[name] = med
        floor = floor or med
        limit = TARGETS_S.get(name)
        target = "" if limit is None else f"[{'met' if med <= limit else 'MISSED'}] <= {limit} s"
        print(f"{name:<26} {med:>9.3f} {min(times):>7.3f} {max(times):>7.3f} {med / floor:>8.2f}x  {target}")
    if args.json:
        args.json.write_text(json.dumps(medians, indent=2) + "\n")
    ok = all(medians[k] <= v for k, v in TARGETS_S.items())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
