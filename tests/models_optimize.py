"""Example model of recipes/optimize.yaml: ``bloated.onnx``, built by ``optimize_example``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


def optimize_example(seed: int = 0) -> onnx.ModelProto:
    """What an exporter in a hurry leaves behind (opset 13, IR 7): doc strings, an Identity and an
    inference Dropout, Conv + BatchNormalization, a Gather with negative indices, a constant
    subgraph and two byte-equal initializers. ``image`` float[batch, 3, 8, 8] -> ``probs``
    float[batch, 4]."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, values: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(values), name)

    offset = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    inits = [
        init("conv.weight", rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3),
        init("conv.bias", rng.standard_normal(8).astype(np.float32) * 0.1),
        init("bn.scale", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        init("bn.bias", rng.standard_normal(8).astype(np.float32) * 0.1),
        init("bn.mean", rng.standard_normal(8).astype(np.float32) * 0.1),
        init("bn.var", rng.uniform(0.5, 2.0, 8).astype(np.float32)),
        init("pick", np.array([-1, -2, 0, 1], np.int64)),
        init("scale.base", np.array([1.0, 0.5, 2.0, 1.5], np.float32)),
        init("two", np.array(2.0, np.float32)),
        init("offset.a", offset),
        init("offset.b", offset.copy()),
    ]
    doc = "File \"model.py\", line 12, in forward"
    nodes = [
        helper.make_node("Identity", ["image"], ["image.copy"], name="/Identity", doc_string=doc),
        helper.make_node("Conv", ["image.copy", "conv.weight", "conv.bias"], ["conv"], name="/conv/Conv", pads=[1, 1, 1, 1], doc_string=doc),
        helper.make_node("BatchNormalization", ["conv", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"], name="/bn/BatchNormalization"),
        helper.make_node("Relu", ["bn"], ["relu"], name="/relu/Relu"),
        helper.make_node("Dropout", ["relu"], ["drop"], name="/dropout/Dropout"),
        helper.make_node("GlobalAveragePool", ["drop"], ["pool"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["pool"], ["features"], name="/Flatten", axis=1),
        helper.make_node("Gather", ["features", "pick"], ["picked"], name="/Gather", axis=1),
        helper.make_node("Mul", ["scale.base", "two"], ["scale"], name="/Mul_const"),
        helper.make_node("Mul", ["picked", "scale"], ["scaled"], name="/Mul"),
        helper.make_node("Add", ["scaled", "offset.a"], ["shifted"], name="/Add"),
        helper.make_node("Sub", ["shifted", "offset.b"], ["logits"], name="/Sub"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="/Softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["batch", 4])],
        inits,
        doc_string="exported graph",
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7, producer_name="pytorch", producer_version="1.13.1", doc_string="exported by a script")
    return model
