"""fold-constants: onnx-graphsurgeon constant folding."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassError
from surgeon.ir.external import is_external
from surgeon.ir.model import load
from surgeon.passes.fold_constants import FoldConstants

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'


def _run(model, **params):
    return Pipeline([FoldConstants(**params)], verify={"dims": {"batch": 2}}).run(model)


def _ops(res):
    return [n.op_type for n in res.model.proto.graph.node]


def test_folds_constant_arithmetic():
    m = onnx.parser.parse_model(
        HEADER
        + """
g (float[batch, 4] x) => (float[batch, 4] y) <float[4] c = {1.0, 2.0, 3.0, 4.0}>
{
  c2 = Add(c, c)
  c3 = Neg(c2)
  y = Mul(x, c3)
}"""
    )
    res = _run(m)
    assert res.ok and res.steps[0].modified
    assert _ops(res) == ["Mul"]
    inits = {t.name: numpy_helper.to_array(t).tolist() for t in res.model.proto.graph.initializer}
    assert inits == {"c3": [-2.0, -4.0, -6.0, -8.0]}
    assert "folded 2 node(s): Add x1, Neg x1" in res.steps[0].notes


def test_shape_folding_on_and_off():
    text = (
        HEADER
        + """
g (float[2, 4] x) => (float[2, 4] y)
{
  s = Shape(x)
  y = Reshape(x, s)
}"""
    )
    on = _run(onnx.parser.parse_model(text))
    assert on.ok and _ops(on) == ["Reshape"]
    off = _run(onnx.parser.parse_model(text), fold_shapes=False)
    assert off.ok and not off.steps[0].modified and _ops(off) == ["Shape", "Reshape"]


def test_nothing_to_fold_is_untouched_and_idempotent():
    m = onnx.parser.parse_model(HEADER + "g (float[batch, 4] x) => (float[batch, 4] y) { y = Relu(x) }")
    res = _run(m)
    assert res.ok and not res.steps[0].modified
    folded = _run(
        onnx.parser.parse_model(
            HEADER
            + """
g (float[batch, 4] x) => (float[batch, 4] y) <float[4] c = {1.0, 2.0, 3.0, 4.0}>
{ c2 = Add(c, c)
  y = Mul(x, c2) }"""
        )
    ).model.proto
    assert not _run(folded).steps[0].modified


def test_size_limit_keeps_big_tensors_unfolded():
    m = onnx.parser.parse_model(
        HEADER
        + """
g (float[batch, 1024] x) => (float[batch, 1024] y) <float[1, 1024] c = {1.0}, int64[2] reps = {1, 1}>
{
  y = Add(x, c)
}"""
    )
    big = helper.make_tensor("c", onnx.TensorProto.FLOAT, [1, 1], [0.5])
    m.graph.initializer[0].CopyFrom(big)
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([1, 1024], np.int64), "reps"))
    m.graph.node.insert(0, helper.make_node("Tile", ["c", "reps"], ["t"]))
    m.graph.node[1].input[1] = "t"
    small = _run(m, max_tensor_bytes=1024)
    assert small.ok and not small.steps[0].modified and _ops(small) == ["Tile", "Add"]
    unlimited = _run(m, max_tensor_bytes=None)
    assert unlimited.ok and _ops(unlimited) == ["Add"]


def test_input_with_default_is_not_folded():
    m = onnx.parser.parse_model(
        HEADER + """
g (float[batch, 4] x, float[4] w) => (float[batch, 4] y) <float[4] w = {1.0, 2.0, 3.0, 4.0}, """
        """float[4] c = {2.0, 2.0, 2.0, 2.0}>
{
  s = Mul(w, c)
  y = Add(x, s)
}"""
    )
    res = _run(m)
    assert res.ok and not res.steps[0].modified
    assert [v.name for v in res.model.proto.graph.input] == ["x", "w"]


def test_external_constants_loaded_only_where_folded(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "W")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "W2")
    nodes = [
        helper.make_node("Neg", ["W2"], ["W2n"]),
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("MatMul", ["h", "W2n"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", 1, ["batch", 16])],
        [helper.make_tensor_value_info("y", 1, ["batch", 16])],
        [w, w2],
    )
    path = tmp_path / "m.onnx"
    onnx.save(
        helper.make_model(g, ir_version=10, opset_imports=[helper.make_opsetid("", 17)]),
        str(path),
        save_as_external_data=True,
        location="m.data",
        size_threshold=0,
    )
    res = _run(load(path))
    assert res.ok and _ops(res) == ["MatMul", "MatMul"]
    inits = {t.name: t for t in res.model.proto.graph.initializer}
    assert is_external(inits["W"]) and not is_external(inits["W2n"])
    assert "W" not in res.changed_tensors


def test_bad_params():
    with pytest.raises(ValidationError):
        FoldConstants(max_tensor_bytes=-1)
    with pytest.raises(ValidationError):
        FoldConstants(partitioning="all")
    with pytest.raises(ValidationError):
        FoldConstants(size=3)


def test_folding_failure_is_reported():
    m = onnx.parser.parse_model(
        '<ir_version: 10, opset_import: ["" : 17, "custom" : 1]>'
        + """
g (float[batch, 4] x) => (float[batch, 4] y) <float[4] c = {1.0, 2.0, 3.0, 4.0}>
{
  c2 = custom.Frobnicate(c)
  y = Mul(x, c2)
}"""
    )
    with pytest.raises(PassError, match="constant folding failed.*partitioning: basic"):
        Pipeline([FoldConstants()], verify={"mode": "off"}).run(m)


def test_sequences_are_left_alone_and_the_rest_folds():
    """A SequenceEmpty has no inputs, so onnx-graphsurgeon took it for a constant and failed on
    its list value ('list' object has no attribute 'nbytes'; found by the backend-model sweep)."""
    m = onnx.parser.parse_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y)
{
  c = Constant<value = float {1.0}>()
  c2 = Add(c, c)
  s0 = SequenceEmpty()
  s = SequenceInsert(s0, x)
  zero = Constant<value = int64 {0}>()
  e = SequenceAt(s, zero)
  y = Mul(e, c2)
}""")
    res = Pipeline([FoldConstants()]).run(m)
    assert res.ok, res.failures()
    g = res.model.proto.graph
    assert [n.op_type for n in g.node] == ["SequenceEmpty", "SequenceInsert", "SequenceAt", "Mul"]
    assert [n.input for n in g.node][:2] == [[], ["s0", "x"]]
    assert numpy_helper.to_array(next(t for t in g.initializer if t.name == "c2")).tolist() == 2.0
