"""cleanup: dead nodes, unused initializers (and optionally inputs) removed; topological order."""

from __future__ import annotations

import onnx
import pytest
from onnx import parser
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.passes.cleanup import Cleanup
from tests.conftest import exported_like_model


def test_removes_dead_node_and_unused_initializer() -> None:
    res = Pipeline([Cleanup()], verify={"dims": {"batch": 2}, "device": "cpu"}).run(exported_like_model())
    step = res.steps[0]
    assert res.ok and step.modified and (step.nodes_before, step.nodes_after) == (3, 2)
    g = res.model.proto.graph
    assert [n.op_type for n in g.node] == ["MatMul", "Relu"]
    assert [t.name for t in g.initializer] == ["fc.weight"]
    assert any("unused initializer(s): unused" in n for n in step.notes)


def test_identity_round_trip_keeps_unused_initializer() -> None:
    res = Pipeline([], verify={"mode": "off"}).run(exported_like_model())
    assert sorted(t.name for t in res.model.proto.graph.initializer) == ["fc.weight", "unused"]


def test_clean_model_is_unmodified_and_idempotent() -> None:
    once = Pipeline([Cleanup()], verify={"mode": "off"}).run(exported_like_model()).model
    again = Pipeline([Cleanup()], verify={"dims": {"batch": 2}}).run(once)
    assert again.steps[0].modified is False
    assert again.model.proto.graph == once.proto.graph


def test_sorts_nodes_topologically() -> None:
    model = parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] z) { z = Neg (y)  y = Abs (x) }"""
    )
    res = Pipeline([Cleanup()], verify={"device": "cpu"}).run(model)
    assert res.ok and res.steps[0].modified
    assert [n.op_type for n in res.model.proto.graph.node] == ["Abs", "Neg"]
    onnx.checker.check_model(res.model.proto)


def test_unused_inputs_removed_only_when_asked() -> None:
    model = parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x, float[3] unused) => (float[2] y) { y = Abs (x) }"""
    )
    kept = Pipeline([Cleanup()], verify={"device": "cpu"}).run(model)
    assert [i.name for i in kept.model.proto.graph.input] == ["x", "unused"] and not kept.steps[0].modified
    res = Pipeline([Cleanup(remove_unused_inputs=True)], verify={"device": "cpu"}).run(model)
    assert res.ok and [i.name for i in res.model.proto.graph.input] == ["x"]
    assert res.steps[0].check is not None and res.steps[0].check.outputs[0].ok


def test_bad_params() -> None:
    with pytest.raises(ValidationError):
        Cleanup(toposort="maybe")
    with pytest.raises(ValidationError):
        Cleanup(remove_dead=True)
