"""Where a failed step diverges: the first node whose output differs, and the first NaN/Inf."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import parser

from surgeon import Pipeline
from surgeon.cli import main
from surgeon.passes.rename_io import RenameIO

CHAIN = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2,8] x) => (float[2,8] y) <float two = {{2.0}}, float one = {{1.0}}>
{{ r = {first} (x)  m = Mul (r, two)  a = Add (m, one)  y = Identity (a) }}"""


def _chain(first: str = "Relu") -> onnx.ModelProto:
    model = parser.parse_model(CHAIN.format(first=first))
    for node, name in zip(model.graph.node, ["/relu", "/mul", "/add", "/out"]):
        node.name = name
    return model


def test_a_failed_step_names_the_first_node_that_diverges() -> None:
    class Broken(RenameIO):
        def run(self, ir):  # type: ignore[no-untyped-def]
            res = super().run(ir)
            ir.graph.nodes[1].op = "Add"  # Mul -> Add: the first wrong tensor is 'm'
            return res

    res = Pipeline([RenameIO(outputs={"y": "out"}), Broken(inputs={"x": "inp"})], verify={"device": "cpu"}).run(
        _chain()
    )
    assert res.steps[0].check.ok and not res.steps[1].check.ok
    d = res.steps[1].check.divergence
    assert d is not None and (d.tensor, d.node, d.op) == ("m", "/mul", "Add")
    assert d.inputs == {"r": 0.0} and d.max_abs > 0 and d.shape == [2, 8]
    assert any("first divergence at node '/mul' (Add) output 'm'" in f for f in res.failures()), res.failures()
    assert res.steps[1].as_dict()["divergence"]["node"] == "/mul"


def test_verify_localize_any_two_models_and_the_first_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(_chain("Relu"), str(a))
    onnx.save(_chain("Log"), str(b))  # log of negative inputs: NaN from the first node on
    report = tmp_path / "r.json"
    assert main(["verify", str(a), str(b), "--device", "cpu", "--localize", "--report", str(report)]) == 1
    data = json.loads(report.read_text())["divergence"]
    assert (data["node"], data["op"], data["tensor"]) == ("/relu", "Log", "r")
    assert data["non_finite"] == "node '/relu' (Log) output 'r'"
    assert "first NaN/Inf from node '/relu' (Log)" in capsys.readouterr().out
    assert main(["verify", str(a), str(a), "--device", "cpu", "--localize"]) == 0
    assert "no tensor of both models differs beyond tolerance (4 compared)" in capsys.readouterr().out


def test_tensors_are_exposed_in_batches_bounded_by_count_and_bytes() -> None:
    import numpy as np

    from surgeon.ir.model import load
    from surgeon.verify.compare import Tolerance
    from surgeon.verify.localize import _batches, _sizes, localize
    from surgeon.verify.runtime import Runtime

    feed = {"x": np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)}
    sizes = _sizes(_chain(), feed)
    assert sizes == {"r": 64, "m": 64, "a": 64}  # float32 [2, 8] each, by shape inference at the feed's shapes
    items = [(t, None) for t in ("r", "m", "a", "y")]
    assert [[t for t, _ in b] for b in _batches(items, sizes, 32, 128)] == [["r", "m"], ["a", "y"]]
    assert [[t for t, _ in b] for b in _batches(items, sizes, 1, 10**9)] == [["r"], ["m"], ["a"], ["y"]]
    broken = _chain()
    broken.graph.node[2].op_type = "Sub"
    d = localize(Runtime("cpu"), load(_chain()), feed, load(broken), feed, Tolerance(1e-6, 1e-6), batch=1)
    # one batch past the first divergence is compared too (how the error grows): r, m, a, then y
    assert (d.node, d.op, d.compared) == ("/add", "Sub", 4) and d.inputs == {"m": 0.0}
    assert [(t["tensor"], t["ok"]) for t in d.trace] == [("r", True), ("m", True), ("a", False), ("y", False)]
