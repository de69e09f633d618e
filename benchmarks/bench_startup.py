"""Start-up time of the CLI: ``surgeon --help`` and ``surgeon passes`` against ``python -c pass``.

Issue 5's target: both start in under 0.3 s. Each command runs ``--runs`` times (after one warm-up
run); the median wall time is reported::

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

TARGET_S = 0.3


def _surgeon() -> list[str]:
    exe = Path(sys.executable).with_name("surgeon")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "surgeon.cli"]


def commands() -> dict[str, list[str]]:
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "surgeon --help": [*_surgeon(), "--help"],
        "surgeon passes": [*_surgeon(), "passes"],
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
    print(f"{'command':<18} {'median s':>9} {'min s':>7} {'max s':>7}  target")
    for name, cmd in commands().items():
        times = time_command(cmd, args.runs)
        med = statistics.median(times)
        medians[name] = med
        target = "" if name.startswith("python") else f"[{'met' if med < TARGET_S else 'MISSED'}] < {TARGET_S} s"
        print(f"{name:<18} {med:>9.3f} {min(times):>7.3f} {max(times):>7.3f}  {target}")
    if args.json:
        args.json.write_text(json.dumps(medians, indent=2) + "\n")
    ok = all(v < TARGET_S for k, v in medians.items() if k.startswith("surgeon"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
