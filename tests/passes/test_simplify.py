"""simplify: onnx-simplifier as a pass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError
from surgeon.ir.external import is_external
from surgeon.ir.model import load
from surgeon.passes.simplify import Simplify

FOLDABLE = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) <float[4] c = {1.0, 2.0, 3.0, 4.0}>
{
  a = Identity(x)
  c2 = Add(c, c)
  y = Mul(a, c2)
}"""


def _run(model, **params):
    return Pipeline([Simplify(**params)], verify={"dims": {"batch": 2}}).run(model)


def _graph(res):
    return res.model.proto.graph


def test_folds_and_removes_identity():
    res = _run(onnx.parser.parse_model(FOLDABLE))
    assert res.ok and res.steps[0].modified
    g = _graph(res)
    assert [n.op_type for n in g.node] == ["Mul"]
    assert [t.name for t in g.initializer] == ["c2"]
    assert numpy_helper.to_array(g.initializer[0]).tolist() == [2.0, 4.0, 6.0, 8.0]
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert g.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert any("Identity" in n for n in res.steps[0].notes)


def test_simple_model_untouched_and_idempotent():
    m = onnx.parser.parse_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) { y = Relu(x) }""")
    res = _run(m)
    assert res.ok and not res.steps[0].modified
    once = _run(onnx.parser.parse_model(FOLDABLE)).model.proto
    again = _run(once)
    assert not again.steps[0].modified


def test_input_with_initializer_default_stays_an_input():
    m = onnx.parser.parse_model(
        """
<ir_version: 10, opset_import: ["" : 17]>
g (float[batch, 4] x, float[4] w) => (float[batch, 4] y) <float[4] w = {1.0, 2.0, 3.0, 4.0}, """
        """float[4] c = {2.0, 2.0, 2.0, 2.0}>
{
  s = Mul(w, c)
  a = Identity(x)
  y = Add(a, s)
}"""
    )
    res = _run(m)
    assert res.ok and res.steps[0].modified
    g = _graph(res)
    assert [v.name for v in g.input] == ["x", "w"]
    assert "w" in {t.name for t in g.initializer}
    assert [n.op_type for n in g.node] == ["Mul", "Add"]  # w * c not folded
    assert any("w" in n and "unfolded" in n for n in res.steps[0].notes)


def test_input_shapes_fix_dims_and_validate():
    res = Pipeline([Simplify(input_shapes={"x": [2, 4]})], verify={"dims": {"batch": 2}}).run(
        onnx.parser.parse_model(FOLDABLE)
    )
    assert res.ok
    dims = [d.dim_value for d in _graph(res).input[0].type.tensor_type.shape.dim]
    assert dims == [2, 4]
    with pytest.raises(PassPreconditionError, match="unknown input 'y'.*graph inputs are: x"):
        _run(onnx.parser.parse_model(FOLDABLE), input_shapes={"y": [1, 4]})
    with pytest.raises(PassPreconditionError, match="rank 2"):
        _run(onnx.parser.parse_model(FOLDABLE), input_shapes={"x": [4]})


def test_bad_params():
    with pytest.raises(ValidationError):
        Simplify(check_n=3)
    with pytest.raises(ValidationError):
        Simplify(max_tensor_size="lots")
    assert Simplify(max_tensor_size="64MB").params.max_tensor_size == "64MB"


def test_skip_constant_folding_and_optimizers():
    res = _run(onnx.parser.parse_model(FOLDABLE), constant_folding=False, optimize=False)
    assert res.ok
    assert sorted(n.op_type for n in _graph(res).node) == ["Add", "Identity", "Mul"]


def _external_model(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    w2 = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W2")
    two = numpy_helper.from_array(np.full((64, 64), 2.0, np.float32), "two")
    nodes = [
        helper.make_node("Mul", ["W2", "two"], ["W2x"]),
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Identity", ["h"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2x"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", 1, ["batch", 64])],
        [helper.make_tensor_value_info("y", 1, ["batch", 64])],
        [w, w2, two],
    )
    m = helper.make_model(g, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    return path


def test_external_data_weights_stay_on_disk(tmp_path):
    path = _external_model(tmp_path)
    res = _run(load(path))
    assert res.ok and res.steps[0].modified
    g = _graph(res)
    assert [n.op_type for n in g.node] == ["MatMul", "MatMul"]
    inits = {t.name: t for t in g.initializer}
    assert is_external(inits["W"])  # unchanged weight: still the source file's bytes
    assert {e.key: e.value for e in inits["W"].external_data}["location"] == "m.data"
    folded = next(t for n, t in inits.items() if n != "W")
    assert not is_external(folded)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.data", "m.onnx"]  # no temporary files left
    out = tmp_path / "out.onnx"
    Pipeline([Simplify()], verify={"dims": {"batch": 2}}).apply(load(path), out)
    assert Pipeline([], verify={"dims": {"batch": 2}}).run(out).ok


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_conv_bn_export_fuses():
    import io as _io

    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    buf = _io.BytesIO()
    torch.onnx.export(
        net,
        (torch.randn(1, 3, 8, 8),),
        buf,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["out"],
        dynamic_axes={"image": {0: "batch"}, "out": {0: "batch"}},
    )
    m = onnx.load_from_string(buf.getvalue())
    m.ir_version = 10
    res = _run(m)
    assert res.ok
    ops = [n.op_type for n in _graph(res).node]
    assert "BatchNormalization" not in ops and ops == ["Conv", "Relu"]
