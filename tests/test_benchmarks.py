"""The benchmarks run end to end at a tiny size (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

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


# bench_precision runs ModelOpt AutoCast through another interpreter (its onnxruntime pin clashes
# with the project's). A stand-in "modelopt" package plays the part: it runs onnxruntime once per
# calibration batch it is given, converts every float32 initializer and tensor to float16 between
# Casts at the I/O, and logs the arguments it got.
FAKE_AUTOCAST = """
import json, os
from pathlib import Path
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, numpy_helper

def convert_to_mixed_precision(onnx_path, **kwargs):
    if os.environ.get("FAKE_AUTOCAST_FAIL"):
        raise ValueError(os.environ["FAKE_AUTOCAST_FAIL"])
    batches = sorted(Path(kwargs["calibration_data"]).glob("*.npz"))
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    for b in batches:
        with np.load(b) as feed:
            sess.run(None, dict(feed))
    log = {"kwargs": {k: v for k, v in kwargs.items() if k != "calibration_data"}, "batches": len(batches)}
    Path(os.environ["FAKE_AUTOCAST_LOG"]).write_text(json.dumps(log))
    model = onnx.load(onnx_path)
    g = model.graph
    for t in g.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    io = {v.name for v in [*g.input, *g.output]}
    for n in g.node:
        for seq in (n.input, n.output):
            for i, name in enumerate(seq):
                if name in io:
                    seq[i] = name + "_h"
    to_half = [helper.make_node("Cast", [v.name], [v.name + "_h"], to=10) for v in g.input]
    to_float = [helper.make_node("Cast", [v.name + "_h"], [v.name], to=1) for v in g.output]
    nodes = [*to_half, *g.node, *to_float]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return model
"""


def _fake_modelopt(root: Path) -> Path:
    pkg = root / "modelopt" / "onnx" / "autocast"
    pkg.mkdir(parents=True)
    (root / "modelopt" / "__init__.py").write_text("")
    (root / "modelopt" / "onnx" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(FAKE_AUTOCAST)
    return root


def test_bench_precision_judges_autocast_run_by_another_interpreter(tmp_path: Path) -> None:
    log, out = tmp_path / "autocast.json", tmp_path / "rows.json"
    env = os.environ | {"PYTHONPATH": str(_fake_modelopt(tmp_path / "fake")), "FAKE_AUTOCAST_LOG": str(log)}
    env.pop("SURGEON_BENCH_MODELOPT_PYTHON", None)
    cmd = [sys.executable, str(BENCH / "bench_precision.py"), "--model", "super-resolution"]
    cmd += ["--modelopt-python", sys.executable, "--json", str(out), "--repeat", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {r["tool"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"surgeon", "onnxconverter-common", "ModelOpt AutoCast"}
    assert all(r["model"] == "super-resolution" for r in rows.values())
    autocast = rows["ModelOpt AutoCast"]
    # AutoCast at its default thresholds: only the precision, the I/O types and the calibration set
    called = json.loads(log.read_text())
    assert called == {"kwargs": {"low_precision_type": "fp16", "keep_io_types": True}, "batches": 6}
    # judged here like the others: every compute node float16, one Cast in and one out, and the
    # runs counted in the child (one per calibration batch)
    assert autocast["met"] is True and autocast["half"] == 1.0
    assert autocast["casts"] == 2 and autocast["precision_casts"] == 2
    assert autocast["runs"] == 6 and autocast["seconds"] >= 0
    # each tool called twice, taking turns; wall is the median of the two
    for row in rows.values():
        if "error" not in row:
            assert len(row["walls"]) == 2 and row["seconds"] == pytest.approx(statistics.median(row["walls"]), abs=1e-4)
    if "error" not in rows["onnxconverter-common"]:  # installed (pip install -e ".[bench]")
        assert rows["surgeon"]["vs_occ"] == pytest.approx(
            rows["surgeon"]["seconds"] / rows["onnxconverter-common"]["seconds"], abs=0.01
        )
    assert "| super-resolution  | ModelOpt AutoCast     |  yes |  100% |" in res.stdout


def _bench_precision() -> object:
    spec = importlib.util.spec_from_file_location("bench_precision", BENCH / "bench_precision.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", ["missing", "failing"])
def test_bench_precision_autocast_child_that_cannot_convert(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)]), src)
    if case == "failing":
        monkeypatch.setenv("PYTHONPATH", str(_fake_modelopt(tmp_path / "fake")))
        monkeypatch.setenv("FAKE_AUTOCAST_FAIL", "no float16 kernel for Relu")
    else:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    bench = _bench_precision()
    monkeypatch.setattr(bench, "MODELOPT_PYTHON", sys.executable)
    calib = [{"x": np.ones((1, 4), np.float32)}]
    if case == "missing":  # shown as "not installed (modelopt)"
        with pytest.raises(ImportError) as info:
            bench.autocast_tool(src, calib, tmp_path)  # type: ignore[attr-defined]
        assert info.value.name == "modelopt"
    else:  # shown as "failed: ..." with the child's last line
        with pytest.raises(RuntimeError, match="exited 1: ValueError: no float16 kernel for Relu"):
            bench.autocast_tool(src, calib, tmp_path)  # type: ignore[attr-defined]


def test_bench_precision_counts_the_runs_a_peer_really_makes(tmp_path: Path) -> None:
    """A peer's runs are counted as onnxruntime sees them (onnxconverter-common's used to be its
    validations plus one: its first validation compares the reference with itself, no run)."""
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    bench = _bench_precision()
    real = ort.InferenceSession.run
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with bench.counted_runs() as runs:  # type: ignore[attr-defined]
        for _ in range(3):
            sess.run(None, {"x": np.ones((1, 4), np.float32)})
    assert runs == [3]
    assert ort.InferenceSession.run is real  # put back


def test_bench_precision_floor_builds_two_sessions_and_runs_each_sample_twice(tmp_path: Path) -> None:
    """``--floor`` times the sessions and runs surgeon's evidence needs and nothing else: the float32
    model with every tensor exposed and the converted one, one run per sample each."""
    bench: Any = _bench_precision()
    module, shapes = bench.models()["super-resolution"]
    src = tmp_path / "sr.onnx"
    bench.export(module, shapes, src)
    m = bench.floor_of_runs(src, bench.draw(shapes, 3, 1), tmp_path, 2)
    assert m["sessions"] == 2 and m["runs"] == 6 and m["floor"] > 0
    assert m["occ"] is None or m["occ"] > 0
    res = subprocess.run(
        [sys.executable, str(BENCH / "bench_precision.py"), "--floor", "--model", "super-resolution", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "6 samples; the floor: 2 sessions and 12 runs" in res.stdout
    assert res.stdout.count("| super-resolution  |") == 1


def test_bench_compare_runs_end_to_end() -> None:
    res = subprocess.run(
        [sys.executable, str(BENCH / "bench_compare.py"), "--tokens", "2", "--samples", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "logits (1, 2, 50257) float32" in res.stdout
    rows = [line for line in res.stdout.splitlines() if line.startswith("| compare") or line.startswith("| judge")]
    assert len(rows) == 2 and all(row.count("MiB") == 2 and row.endswith("x |") for row in rows)
