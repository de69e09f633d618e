from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError, VerificationError
from surgeon.passes.fix_dims import FixDims
from surgeon.passes.mark_dynamic import MarkDynamic
from tests import models_interface as mi

if TYPE_CHECKING:
    from tests.conftest import TorchExports


def _dims(vi: onnx.ValueInfoProto) -> list[Any]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def _run(
    model: onnx.ModelProto, dims: dict[str, int], verify_dims: dict[str, int] | None = None, prove: bool = True
) -> tuple[Any, onnx.ModelProto]:
    cfg = {"device": "cpu", "dims": verify_dims or {}, "prove": prove}
    res = Pipeline([FixDims(dims=dims)], verify=cfg).run(model)
    onnx.checker.check_model(res.model.proto, full_check=True)
    return res, res.model.proto


def test_fix_by_symbol_propagates_everywhere() -> None:
    proved, _ = _run(mi.symbolic_mlp(), {"batch": 4}, {"batch": 4})
    assert proved.steps[0].verdict == "proved (structural)"  # only declarations changed
    res, proto = _run(mi.symbolic_mlp(), {"batch": 4}, {"batch": 4}, prove=False)
    assert res.ok and res.steps[0].modified
    g = proto.graph
    assert _dims(g.input[0]) == [4, 4] and _dims(g.output[0]) == [4, 3]
    assert [(v.name, _dims(v)) for v in g.value_info] == [("mm", [4, 3])]
    assert res.steps[0].notes == ["input 'x': [batch, 4] -> [4, 4]"]
    assert [(o.name, o.shape) for o in res.steps[0].check.outputs] == [("y", (4, 3))]  # checked at the fixed size


def test_fix_by_input_axis_spatial() -> None:
    src = mi.classifier_example()
    res, proto = _run(src, {"image:2": 6, "image:3": 10}, {"height": 6, "width": 10})
    assert res.ok
    assert _dims(proto.graph.input[0]) == [1, 3, 6, 10]
    shapes = {v.name: _dims(v) for v in proto.graph.value_info}
    assert shapes["conv"] == [1, 8, 6, 10] and shapes["pool"] == [1, 8, 1, 1]
    mi.assert_shapes_hold(proto, [{"image": np.zeros((1, 3, 6, 10), np.float32)}])


def test_mark_then_fix_torch_exports(torch_exports: TorchExports) -> None:
    for dynamo in (False, True):
        proto = torch_exports.classifier(dynamo, output_name="logits")
        res = Pipeline([MarkDynamic(batch="batch"), FixDims(dims={"batch": 1})], verify={"device": "cpu"}).run(proto)
        assert res.ok and [s.modified for s in res.steps] == [True, True]
        g = res.model.proto.graph
        assert _dims(g.input[0]) == [1, 3, 4, 4] and _dims(g.output[0]) == [1, 5]
        assert all(isinstance(d, int) for v in g.value_info for d in _dims(v))


def test_verify_dims_must_agree_with_the_fixed_size() -> None:
    with pytest.raises(VerificationError, match="invalid dimensions"):
        _run(mi.symbolic_mlp(), {"batch": 4}, {"batch": 2}, prove=False)  # a run at batch 2 (no proof)


def test_unmodified_when_already_fixed() -> None:
    res, _ = _run(mi.classifier_example(spatial=(4, 4)), {"image:0": 1})
    assert res.ok and not res.steps[0].modified


def test_bad_params_and_preconditions() -> None:
    with pytest.raises(ValidationError):
        FixDims(dims={"batch": 0})
    with pytest.raises(ValidationError):
        FixDims(dims={})
    with pytest.raises(PassPreconditionError, match=r"'btach' is neither.*symbols: batch; inputs: x\[batch, 4\]"):
        _run(mi.symbolic_mlp(), {"btach": 2}, {"batch": 2})
    with pytest.raises(PassPreconditionError, match="axis 1 is already fixed to 4, not 5"):
        _run(mi.symbolic_mlp(), {"x:1": 5}, {"batch": 2})
    with pytest.raises(PassPreconditionError, match="axis 7 does not exist"):
        _run(mi.symbolic_mlp(), {"x:7": 5}, {"batch": 2})
    with pytest.raises(PassPreconditionError, match="sets x:0 to 3 but 'batch' sets it to 2"):
        _run(mi.symbolic_mlp(), {"batch": 2, "x:0": 3}, {"batch": 2})


@pytest.mark.parametrize("declared", [-1, 0])
def test_a_non_positive_dim_value_is_a_dynamic_axis_it_can_fix(declared: int) -> None:
    """Some exporters write -1 (or 0) for a dynamic axis: fix-dims binds it like a symbol."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [declared, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [declared, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    res = Pipeline([FixDims(dims={"x:0": 2})], verify={"mode": "off"}).run(model)
    assert res.steps[0].modified
    assert [d.dim_value for d in res.model.proto.graph.input[0].type.tensor_type.shape.dim] == [2, 4]
