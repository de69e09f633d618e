"""convert-opset from Resize-10 (and Upsample) keeps the results: the converted Resize samples
with asymmetric coordinates and onnxruntime's opset-10 nearest rounding."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper

from surgeon import Pipeline
from surgeon.errors import PassError
from surgeon.passes.convert_opset import ConvertOpset


def resize10(mode: str, scales: list[float], size: int = 7, op: str = "Resize", opset: int = 10) -> onnx.ModelProto:
    """conv-free neck: x -> Resize(scales) -> Relu, at opset 10 (Upsample at 9)."""
    nodes = [
        helper.make_node(op, ["x", "s"], ["up"], mode=mode, name="neck/up"),
        helper.make_node("Relu", ["up"], ["y"], name="act"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TP.FLOAT, [1, 2, size, size])],
        [helper.make_tensor_value_info("y", TP.FLOAT, None)],
        [helper.make_tensor("s", TP.FLOAT, [4], scales)],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


CASES = [
    ("linear", [1, 1, 2, 2]),
    ("linear", [1, 1, 1.5, 1.5]),
    ("linear", [1, 1, 0.6, 0.6]),
    ("nearest", [1, 1, 1.5, 1.5]),
    ("nearest", [1, 1, 2.5, 2.5]),
    ("nearest", [1, 1, 0.6, 0.6]),
    ("nearest", [1, 1, 0.75, 1.0]),
]


@pytest.mark.parametrize("target", [11, 13, 18])
@pytest.mark.parametrize(("mode", "scales"), CASES)
def test_resize10_upgraded_keeps_outputs(mode, scales, target):
    src = resize10(mode, scales)
    res = Pipeline([ConvertOpset(opset=target)], verify={"rtol": 1e-6, "atol": 1e-6}).run(src)
    out = res.model.proto
    resize = next(n for n in out.graph.node if n.op_type == "Resize")
    attrs = {a.name: helper.get_attribute_value(a) for a in resize.attribute}
    assert attrs["coordinate_transformation_mode"] == b"asymmetric"
    assert any("keeps its opset-10 sampling" in n for n in res.steps[0].notes)
    x = np.random.default_rng(3).standard_normal((1, 2, 7, 7)).astype(np.float32)
    want, got = _run(src, x), _run(out, x)
    assert want.shape == got.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_upsample9_upgraded_keeps_outputs():
    src = resize10("linear", [1, 1, 2, 2], op="Upsample", opset=9)
    out = Pipeline([ConvertOpset(opset=13)]).run(src).model.proto
    x = np.random.default_rng(4).standard_normal((1, 2, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(src, x), rtol=1e-6, atol=1e-6)


def test_nearest_up_and_down_is_refused_naming_the_node():
    with pytest.raises(PassError, match="'neck/up'"):
        Pipeline([ConvertOpset(opset=13)]).run(resize10("nearest", [1, 1, 2, 0.5]))
