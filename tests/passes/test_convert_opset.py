"""convert-opset: onnx.version_converter plus a schema check."""

from __future__ import annotations

import onnx
import pytest
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassError, PassPreconditionError
from surgeon.passes.convert_opset import ConvertOpset

OLD = """<ir_version: 7, opset_import: ["" : 11]>
g (float[batch, 1, 4] x) => (float[1, 4] y)
{
  [sq] a = Squeeze<axes=[1]>(x)
  [sum] y = ReduceSum<axes=[0], keepdims=1>(a)
}"""


def _run(text, **params):
    m = onnx.parser.parse_model(text) if isinstance(text, str) else text
    return Pipeline([ConvertOpset(**params)], verify={"dims": {"batch": 2}}).run(m)


def test_upgrade_moves_axes_to_inputs():
    res = _run(OLD, opset=18)
    assert res.ok and res.steps[0].modified
    p = res.model.proto
    assert {o.domain: o.version for o in p.opset_import}[""] == 18
    assert p.ir_version == 8  # opset 18 needs IR 8
    by_name = {n.name: n for n in p.graph.node}
    assert len(by_name["sq"].input) == 2 and not by_name["sq"].attribute
    assert len(by_name["sum"].input) == 2
    assert res.steps[0].notes[0] == "opset 11 -> 18"


def test_same_opset_untouched():
    res = _run(OLD, opset=11)
    assert res.ok and not res.steps[0].modified
    once = _run(OLD, opset=18).model.proto
    assert not _run(once, opset=18).steps[0].modified


def test_unconvertible_nodes_listed_by_name_and_op():
    text = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 4] x, float[4] s, float[4] b) => (float[2, 4] y)
{
  [ln1] a = LayerNormalization(x, s, b)
  [relu] r = Relu(a)
  [ln2] y = LayerNormalization(r, s, b)
}"""
    with pytest.raises(PassError, match=r"17 -> 16.*'ln1' \(LayerNormalization\), 'ln2' \(LayerNormalization\)") as err:
        _run(text, opset=16)
    assert "relu" not in str(err.value)


def test_bad_params_and_preconditions():
    with pytest.raises(ValidationError):
        ConvertOpset()
    with pytest.raises(ValidationError):
        ConvertOpset(opset=3)
    with pytest.raises(ValidationError):
        ConvertOpset(opset=18, ir=9)
    with pytest.raises(PassPreconditionError, match="newer than this onnx knows"):
        _run(OLD, opset=99)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_export_upgrade():
    import io

    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Softmax(-1)
    ).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        net, (torch.randn(1, 3, 6, 6),), buf, dynamo=False, opset_version=11, input_names=["x"], output_names=["y"]
    )
    m = onnx.load_from_string(buf.getvalue())
    m.ir_version = 7
    res = _run(m, opset=18)
    assert res.ok and res.steps[0].modified
