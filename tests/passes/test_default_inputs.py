"""Inputs backed by an initializer (IR 3 lists every initializer as an input; later exporters list
some to make them overridable): a pass that retypes or reshapes the initializer must leave a graph
input declared as the initializer now is, or onnxruntime refuses the model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon import Pipeline
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import load
from surgeon.passes.to_fp16 import ToFP16


def _default_input_model(ir_version: int) -> onnx.ModelProto:
    """y = MatMul(x, w) + b where w is an initializer also listed as a graph input."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    b = numpy_helper.from_array(np.ones(3, np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]),
    ]
    if ir_version < 4:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [3]))
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w, b]
    )
    opset = 9 if ir_version < 4 else 17
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def _declared(proto: onnx.ModelProto) -> dict[str, tuple[int, list[int]]]:
    return {
        v.name: (v.type.tensor_type.elem_type, [d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in proto.graph.input
    }


@pytest.mark.parametrize("ir_version", [3, 10])
def test_to_fp16_retypes_the_input_declaration_of_a_converted_initializer(ir_version: int) -> None:
    res = Pipeline([ToFP16(keep_io_types=True)]).run(_default_input_model(ir_version))
    assert res.ok, res.failures()
    proto = res.model.proto
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    assert inits["w"] == TensorProto.FLOAT16
    declared = _declared(proto)
    assert declared["x"] == (TensorProto.FLOAT, [2, 4])  # keep_io_types: the data input stays float32
    assert declared["w"] == (TensorProto.FLOAT16, [4, 3])
    assert [v.name for v in proto.graph.input][:2] == ["x", "w"]  # the source's order
    onnx.checker.check_model(proto)


def test_any_retyped_or_reshaped_initializer_is_declared_as_it_is() -> None:
    """The adapter derives the declaration from the initializer on export, whichever pass edited it."""
    ir = ModelIR.from_model(load(_default_input_model(10)))
    w = ir.graph.tensors()["w"]
    w.values = np.zeros((4, 3), np.float64)
    proto = ir.to_proto()
    assert _declared(proto)["w"] == (TensorProto.DOUBLE, [4, 3])
    w.values = np.zeros((4, 1), np.float32)
    assert _declared(ir.to_proto())["w"] == (TensorProto.FLOAT, [4, 1])


def test_symbolic_dims_of_an_overridable_input_stay() -> None:
    m = _default_input_model(10)
    dim = m.graph.input[1].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_param = "n"
    ir = ModelIR.from_model(load(m))
    ir.graph.tensors()["w"].values = np.zeros((4, 3), np.float16)
    declared = next(v for v in ir.to_proto().graph.input if v.name == "w")
    assert declared.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert [(d.dim_value, d.dim_param) for d in declared.type.tensor_type.shape.dim] == [(4, ""), (0, "n")]


def test_renaming_an_input_keeps_the_input_order_around_defaults() -> None:
    """A renamed input is not in the source's order; it must keep its slot, not move behind the
    initializer-backed inputs (a runtime binding inputs by position would get them swapped)."""
    from surgeon.passes.rename_io import RenameIO

    res = Pipeline([RenameIO(inputs={"x": "image"})]).run(_default_input_model(10))
    assert res.ok, res.failures()
    assert [v.name for v in res.model.proto.graph.input] == ["image", "w"]
