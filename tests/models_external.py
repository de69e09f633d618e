"""Test models for the model layer: MatMul chains with weights stored as external data, and a
model that carries every field the round trip must preserve."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def matmul_chain(layers: int = 3, dim: int = 32, seed: int = 0) -> onnx.ModelProto:
    """``y = x @ w0 @ w1 ...`` with ``x: [batch, dim]``; weights are ``w0, w1, ...``."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i in range(layers):
        w = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"mm{i}"))
        prev = out
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def save_external(model: onnx.ModelProto, path: Path, location: str | None = None) -> Path:
    """Write ``model`` with every tensor in one external data file beside it; returns the data file."""
    location = location or f"{path.name}.data"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save(
        copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    return path.parent / location


def external_chain(folder: Path, layers: int = 3, dim: int = 32, name: str = "model.onnx") -> tuple[Path, Path]:
    """A MatMul chain saved as ``folder/name`` + ``folder/name.data``."""
    path = folder / name
    data = save_external(matmul_chain(layers, dim), path)
    return path, data


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def load_full(path: Path) -> onnx.ModelProto:
    """The model with its external data read (the reference way, through onnx)."""
    return onnx.load(str(path), load_external_data=True)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the sha256 of its bytes."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def external_locations(path: Path) -> dict[str, dict[str, str]]:
    """External data entries of every initializer of the model file at ``path``."""
    m = onnx.load(str(path), load_external_data=False)
    return {
        t.name: {e.key: e.value for e in t.external_data}
        for t in m.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
    }


def rich_model() -> onnx.ModelProto:
    """A small model with every field the IR round trip must carry: model/graph/node metadata_props
    and doc strings, value_info (with a doc string), a local function, several opset imports,
    producer, domain, model version and training info."""
    fn = helper.make_function(
        "local.fn",
        "AddOne",
        ["a"],
        ["b"],
        [
            helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1.0, np.float32))),
            helper.make_node("Add", ["a", "one"], ["b"]),
        ],
        [helper.make_opsetid("", 17)],
    )
    relu = helper.make_node("Relu", ["x"], ["r"], name="relu", doc_string="relu doc")
    helper.set_metadata_props(relu, {"node.key": "node value"})
    call = helper.make_node("AddOne", ["r"], ["s"], name="call", domain="local.fn")
    mul = helper.make_node("Mul", ["s", "scale"], ["y"], name="mul")
    vi = helper.make_tensor_value_info("r", TensorProto.FLOAT, ["batch", 4])
    vi.doc_string = "after relu"
    graph = helper.make_graph(
        [relu, call, mul],
        "rich",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.full((4,), 2.0, np.float32), "scale")],
        doc_string="graph doc",
        value_info=[vi],
    )
    helper.set_metadata_props(graph, {"graph.key": "graph value"})
    model = helper.make_model(
        graph,
        ir_version=10,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid("local.fn", 1),
            helper.make_opsetid("ai.onnx.ml", 3),
        ],
        functions=[fn],
        producer_name="test-producer",
        producer_version="9.8.7",
        domain="org.example",
        model_version=42,
        doc_string="model doc",
    )
    helper.set_model_props(model, {"model.key": "model value", "license": "MIT"})
    ti = model.training_info.add()
    ti.algorithm.name = "training-step"
    ti.algorithm.node.add().CopyFrom(helper.make_node("Identity", ["scale"], ["scale_out"]))
    ti.update_binding.add(key="scale", value="scale_out")
    return model
