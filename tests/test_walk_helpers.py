"""The one helper of each repeated piece (surgeon.ir.walk): the producer map, the weightless copy
shape inference reads, and fresh names; each covers the uses its copies had."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from surgeon.ir.walk import light_copy, producers, unused_name


def _model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((40, 40), np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        helper.make_node("Reshape", ["y", "shape"], ["z"], name="rs"),
        helper.make_node("Dropout", ["z"], ["d", ""], name="drop"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 40])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [7, 7])],
        [w, shape],
        value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [9, 9])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="p")


def test_producers_skip_unnamed_outputs_and_given_names() -> None:
    g = _model().graph
    assert {k: n.name for k, n in producers(g).items()} == {"y": "mm", "z": "rs", "d": "drop"}
    assert list(producers(g, skip={"z"})) == ["y", "d"]  # node order kept


def test_light_copy_stubs_or_inputs_and_leaves_the_source_alone() -> None:
    m = _model()
    before = m.SerializeToString()
    stub = light_copy(m, 100)
    assert m.SerializeToString() == before and stub.ByteSize() < 1000 and stub.producer_name == "p"
    big = next(t for t in stub.graph.initializer if t.name == "w")
    assert big.data_location == TensorProto.EXTERNAL and list(big.dims) == [40, 40] and not big.raw_data
    assert [vi.name for vi in stub.graph.value_info] == ["y"] and stub.graph.output[0].type.tensor_type.HasField(
        "shape"
    )

    as_inputs = light_copy(m, 100, big_as_inputs=True, value_info=False, output_shapes=False)
    assert [t.name for t in as_inputs.graph.initializer] == ["shape"]
    assert [vi.name for vi in as_inputs.graph.input] == ["x", "w"] and not as_inputs.graph.value_info
    assert not as_inputs.graph.output[0].type.tensor_type.HasField("shape")
    every = light_copy(m, -1, big_as_inputs=True)  # no initializer at all: every one a typed input
    assert not every.graph.initializer and [vi.name for vi in every.graph.input] == ["x", "w", "shape"]
    # small values kept (the Reshape's shape); a stale value_info (y: [9, 9]) feeds back unless left out
    for light, z_dims in ((stub, [1, 81]), (as_inputs, [1, 80])):
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True).graph.value_info
        z = next(vi for vi in inferred if vi.name == "z")
        assert [d.dim_value for d in z.type.tensor_type.shape.dim] == z_dims


def test_unused_name_numbers_compares_and_suffixes_as_asked() -> None:
    assert unused_name("a", set()) == "a"
    assert unused_name("a", {"a", "a_1"}) == "a_2"
    assert unused_name("File", {"file", "file_1"}, key=str.lower) == "File_2"
    assert unused_name("n_0", {"n_0", "n_0_"}, suffix=lambda base, i: base + "_" * i) == "n_0__"
    taken = {"a"}
    unused_name("b", taken)
    assert taken == {"a"}  # the caller records it
