from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError
from surgeon.passes.promote_initializer import PromoteInitializer
from tests import models_interface as mi

if TYPE_CHECKING:
    from tests.conftest import TorchExports


def _run(model: onnx.ModelProto, **params: Any) -> tuple[Any, onnx.ModelProto]:
    res = Pipeline([PromoteInitializer(**params)], verify={"device": "cpu"}).run(model)
    onnx.checker.check_model(res.model.proto, full_check=True)
    return res, res.model.proto


def _dims(vi: onnx.ValueInfoProto) -> list[Any]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def test_initializer_and_constant_node_become_required_inputs() -> None:
    res, proto = _run(mi.add_reshape(), names=["bias", "shape"])
    assert res.ok and res.steps[0].modified
    g = proto.graph
    assert [i.name for i in g.input] == ["x", "bias", "shape"]
    assert [_dims(i) for i in g.input[1:]] == [[2, 3], [2]]
    assert g.input[2].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert not g.initializer and [n.op_type for n in g.node] == ["Add", "Reshape"]
    # the output shape came from the constant's value: now unknown, not the stale [3, 2]
    assert all(isinstance(d, str) for d in _dims(g.output[0]))
    assert "'shape' int64[2] -> required input (was Constant node 'shape_node')" in res.steps[0].notes
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((2, 3), np.float32)
    (y,) = sess.run(None, {"x": x, "bias": np.zeros((2, 3), np.float32), "shape": np.array([6, 1], np.int64)})
    assert y.shape == (6, 1)
    mi.assert_shapes_hold(proto, [{"x": x, "bias": x, "shape": np.array([1, 6], np.int64)}])


def test_keep_default_is_overridable() -> None:
    res, proto = _run(mi.add_reshape(), names=["bias"], keep_default=True)
    assert res.ok and res.steps[0].modified
    g = proto.graph
    assert [i.name for i in g.input] == ["x", "bias"] and "bias" in {t.name for t in g.initializer}
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_overridable_initializers()] == ["bias"]
    x = np.zeros((2, 3), np.float32)
    (default,) = sess.run(None, {"x": x})
    np.testing.assert_array_equal(default, np.arange(6, dtype=np.float32).reshape(3, 2))
    (override,) = sess.run(None, {"x": x, "bias": np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(override, np.ones((3, 2), np.float32))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_export_bias(dynamo: bool, torch_exports: TorchExports) -> None:
    proto = torch_exports.classifier(dynamo)
    res, out = _run(proto, names=["fc.bias"])
    assert res.ok and [i.name for i in out.graph.input] == ["image", "fc.bias"]
    assert _dims(out.graph.input[1]) == [5] and _dims(out.graph.output[0]) == [1, 5]


def test_nothing_to_do_when_already_a_default() -> None:
    pipeline = Pipeline(
        [PromoteInitializer(names=["bias"], keep_default=True), PromoteInitializer(names=["bias"], keep_default=True)],
        verify={"device": "cpu"},
    )
    res = pipeline.run(mi.add_reshape())
    assert res.ok and [s.modified for s in res.steps] == [True, False]


def test_bad_params_and_preconditions() -> None:
    with pytest.raises(ValidationError):
        PromoteInitializer(names=[])
    with pytest.raises(ValidationError):
        PromoteInitializer(names=["bias"], default=True)
    with pytest.raises(
        PassPreconditionError,
        match=r"no initializer or Constant output named 'bais'; did you mean 'bias'\?; they are: bias, shape",
    ):
        _run(mi.add_reshape(), names=["bais"])
    with pytest.raises(PassPreconditionError, match="already a graph input"):
        _run(mi.add_reshape(), names=["x"])
    with pytest.raises(PassPreconditionError, match="computed by a Add node"):
        _run(mi.add_reshape(), names=["sum"])
