"""add-outputs: intermediate tensors exposed as graph outputs, with inferred dtype and shape."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pytest
from onnx import helper, parser
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import load
from surgeon.passes.add_outputs import AddOutputs
from tests.models_surgery import tiny_classifier, tiny_mlp

if TYPE_CHECKING:
    from tests.conftest import TorchExports

TEXT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
  h = Relu(x)
  w = Constant<value = float[1] {2.0}>()
  z = Mul(h, w)
  s = Shape(z)
  y = Sigmoid(z)
}"""


def _run(model: object, **params: object):
    return Pipeline([AddOutputs(**params)], verify={"dims": {"N": 2, "batch": 2}, "device": "cpu"}).run(model)


def _io(vi: onnx.ValueInfoProto) -> tuple[str, int, list[object]]:
    tt = vi.type.tensor_type
    return vi.name, tt.elem_type, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]


def test_named_tensors_become_outputs_with_inferred_types() -> None:
    res = _run(parser.parse_model(TEXT), tensors=["z", "h", "s"])
    assert res.ok and res.steps[0].modified
    outs = [_io(o) for o in res.model.proto.graph.output]
    assert outs == [("y", 1, ["N", 4]), ("z", 1, ["N", 4]), ("h", 1, ["N", 4]), ("s", onnx.TensorProto.INT64, [2])]
    checks = {c.name: c for c in res.steps[0].check.outputs}
    assert checks["y"].verdict == "ok" and checks["y"].max_abs == 0.0
    assert {n for n, c in checks.items() if c.verdict == "ok (new)"} == {"z", "h", "s"}
    assert checks["s"].shape == (2,)
    assert res.steps[0].notes[0] == "output z (float32 [N, 4])"


def test_op_types_and_pattern_pick_tensors_in_graph_order() -> None:
    res = _run(tiny_classifier(), op_types=["Relu", "Conv"])
    assert [o.name for o in res.model.proto.graph.output] == ["logits", "conv_out", "relu_out"]
    res = _run(tiny_classifier(), pattern=r"(pooled|feat.*)")
    assert res.ok
    assert [_io(o) for o in res.model.proto.graph.output][1:] == [
        ("pooled", 1, ["batch", 8, 1, 1]),
        ("features", 1, ["batch", 8]),
    ]


def test_tensors_already_outputs_leave_the_model_unmodified() -> None:
    res = _run(parser.parse_model(TEXT), tensors=["y"])
    assert res.steps[0].modified is False and res.steps[0].check is None
    once = _run(parser.parse_model(TEXT), tensors=["h"]).model
    again = _run(once, tensors=["h"])
    assert again.steps[0].modified is False
    assert [o.name for o in again.model.proto.graph.output] == ["y", "h"]


def test_bad_params() -> None:
    with pytest.raises(ValidationError, match="name what to expose"):
        AddOutputs()
    with pytest.raises(ValidationError, match="extra"):
        AddOutputs(tensors=["h"], tensor=["h"])


def test_missing_names_list_what_exists() -> None:
    ir = ModelIR.from_model(load(parser.parse_model(TEXT)))
    with pytest.raises(
        PassPreconditionError, match=r"no tensor 'hh' in the graph; did you mean 'h'\?; tensors are: h, s, w, x, y, z"
    ) as err:
        AddOutputs(tensors=["hh"]).requires(ir)
    assert err.value.field == ("tensors", "hh")
    with pytest.raises(
        PassPreconditionError, match="no node of op type 'Conv'.*op types present: Constant, Mul, Relu, Shape, Sigmoid"
    ):
        AddOutputs(op_types=["Conv"]).requires(ir)
    with pytest.raises(
        PassPreconditionError, match="pattern 'q.*' matches no computed tensor; they are: h, w, z, s, y"
    ):
        AddOutputs(pattern="q.*").requires(ir)
    with pytest.raises(PassPreconditionError, match="invalid pattern"):
        AddOutputs(pattern="(").requires(ir)


def test_constants_and_subgraph_tensors_are_refused() -> None:
    model = parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[2] a, bool c) => (float[2] out) <float[2] k = {1.0, 2.0}> {
            b = Add(a, k)
            out = If (c) <then_branch = t () => (float[2] r) { inner = Neg (b) r = Abs (inner) },
                          else_branch = e () => (float[2] r2) { r2 = Abs (b) }>
        }"""
    )
    ir = ModelIR.from_model(load(model))
    with pytest.raises(PassPreconditionError, match="'k' is a constant"):
        AddOutputs(tensors=["k"]).requires(ir)
    with pytest.raises(PassPreconditionError, match="'inner' is inside a subgraph"):
        AddOutputs(tensors=["inner"]).requires(ir)
    res = Pipeline([AddOutputs(tensors=["b"])], verify={"device": "cpu"}).run(model)
    assert res.ok and [o.name for o in res.model.proto.graph.output] == ["out", "b"]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_export_layers_match_torch(tmp_path: Path, dynamo: bool, torch_exports: TorchExports) -> None:
    import onnxruntime as ort
    import torch

    path = torch_exports.mlp(tmp_path, dynamo)
    res = _run(path, op_types=["Relu"])
    assert res.ok and res.steps[0].modified
    relu_name = next(n.output[0] for n in load(path).proto.graph.node if n.op_type == "Relu")
    assert [_io(o) for o in res.model.proto.graph.output] == [("y", 1, ["batch", 3]), (relu_name, 1, ["batch", 8])]
    out = tmp_path / "out" / "debug.onnx"
    out.parent.mkdir()
    Pipeline([AddOutputs(op_types=["Relu"])], verify={"dims": {"batch": 2}, "device": "cpu"}).apply(path, out)
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y, relu = sess.run(["y", relu_name], {"x": x})
    mlp = tiny_mlp()
    with torch.no_grad():
        want_relu = mlp[1](mlp[0](torch.from_numpy(x))).numpy()
        want_y = mlp(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(relu, want_relu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)


def test_unknown_dtype_is_a_clear_error() -> None:
    node = helper.make_node("Frob", ["x"], ["f"], domain="custom")
    relu = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node, relu], "g", [helper.make_tensor_value_info("x", 1, [2])], [helper.make_tensor_value_info("y", 1, [2])]
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)], ir_version=10
    )
    ir = ModelIR.from_model(load(model))
    from surgeon.errors import PassError

    with pytest.raises(PassError, match="cannot tell the element type of f"):
        AddOutputs(tensors=["f"]).run(ir)
