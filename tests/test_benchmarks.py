"""The benchmarks run end to end at a tiny size (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_bench_large_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    res = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_large.py"),
            "--size-mb",
            "2",
            "--layers",
            "4",
            "--work",
            str(work),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    [result] = json.loads(out.read_text())
    names = [r["name"] for r in result["rows"]]
    assert names == [
        "python -c pass",
        "floor",
        "onnx",
        "graphsurgeon",
        "surgeon verify=off",
        "surgeon share_weights",
        "surgeon verify=cpu",
        "ort alone",
        "ort alone (default opts)",
    ]
    assert all(r["rc"] == 0 and r["seconds"] > 0 and r["rss_mb"] > 0 for r in result["rows"])
    assert result["share_weights"] == "yes"
    assert set(result["outputs_ok"].values()) == {"ok"}
    assert 1.5 < result["size_mb"] < 2.5 and result["layers"] == 4
    assert "targets:" in res.stdout and "verify off: peak RSS" in res.stdout
    assert list(work.iterdir()) == []  # the model and outputs are removed afterwards


def test_bench_startup_runs(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    res = subprocess.run(
        [sys.executable, str(BENCH / "bench_startup.py"), "--runs", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode in (0, 1), res.stderr  # 1: a start-up target missed (timing is not asserted here)
    medians = json.loads(out.read_text())
    assert set(medians) == {
        "python -c pass",
        "surgeon --help",
        "surgeon --version",
        "surgeon passes",
        "surgeon explain rename-io",
    }
    assert all(v > 0 for v in medians.values())


def test_bench_html_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(BENCH / "bench_html.py"), "--nodes", "30", "--work", str(tmp_path), "--json", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    [result] = json.loads(out.read_text())
    assert [r["page"] for r in result["rows"]] == [
        "baseline (5 nodes)",
        "30 nodes",
        "30 nodes + error plot of 30 tensors",
    ]
    assert all(r["ok"] and r["bytes"] > 1000 for r in result["rows"])
