"""What is in a model, read from the proto without loading external weights."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from surgeon.ir.external import external_ref, is_external
from surgeon.ir.walk import iter_model_tensors, producers

if TYPE_CHECKING:
    import onnx

    from surgeon.ir.model import Model


def _dtype_name(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "?"


def _dims(vi: onnx.ValueInfoProto) -> list[Any]:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return ["?"]
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]


def _io(vis: Any, defaults: set[str] | None = None) -> list[dict[str, Any]]:
    """I/O entries; an input backed by an initializer is marked ``default`` (callers may omit it)."""
    out = []
    for vi in vis:
        kind = vi.type.WhichOneof("value")
        dtype = _dtype_name(vi.type.tensor_type.elem_type) if kind == "tensor_type" else (kind or "?")
        entry: dict[str, Any] = {"name": vi.name, "dtype": dtype, "shape": _dims(vi) if kind == "tensor_type" else []}
        if defaults is not None and vi.name in defaults:
            entry["default"] = True
        out.append(entry)
    return out


def _source_of(
    name: str,
    graph: onnx.GraphProto,
    producers: dict[str, onnx.NodeProto],
    inits: dict[str, onnx.TensorProto],
    inputs: set[str],
) -> dict[str, Any]:
    from onnx import numpy_helper

    if not name:
        return {"from": "absent"}
    if name in inputs:
        return {"from": "graph input", "tensor": name}
    if name in inits:
        t = inits[name]
        value = None if is_external(t) else numpy_helper.to_array(t).tolist()
        return {"from": "initializer", "tensor": name, "value": value}
    node = producers.get(name)
    if node is None:
        return {"from": "unknown", "tensor": name}
    if node.op_type == "Constant":
        value = None
        for a in node.attribute:
            if a.name == "value" and not is_external(a.t):
                value = numpy_helper.to_array(a.t).tolist()
            elif a.name in ("value_floats", "value_ints"):
                value = list(a.floats or a.ints)
        return {"from": "Constant node", "node": node.name, "tensor": name, "value": value}
    return {"from": f"computed by {node.op_type}", "node": node.name, "tensor": name}


def inspect_model(model: Model) -> dict[str, Any]:
    """I/O with dtypes and symbolic dims, opsets, op histogram, initializer bytes, external data
    files, and Resize/Upsample nodes with where their scales or sizes come from."""
    proto = model.proto
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    inline_bytes = external_bytes = count = 0
    for t in iter_model_tensors(proto):
        count += 1
        if is_external(t):
            external_bytes += external_ref(t).length or 0
        else:
            inline_bytes += t.ByteSize()
    made_by = producers(graph)
    input_names = {vi.name for vi in graph.input}
    resizes = []
    for node in graph.node:
        if node.op_type not in ("Resize", "Upsample"):
            continue
        roles = ["X", "roi", "scales", "sizes"] if node.op_type == "Resize" else ["X", "scales"]
        if node.op_type == "Resize" and len(node.input) == 2:  # opset 10: (X, scales)
            roles = ["X", "scales"]
        entry: dict[str, Any] = {"node": node.name, "op": node.op_type}
        for role, name in zip(roles[1:], list(node.input)[1:]):
            entry[role] = _source_of(name, graph, made_by, inits, input_names)
        attrs = {a.name: (a.s.decode() if a.type == 3 else a.f if a.type == 1 else a.i) for a in node.attribute}
        entry["attributes"] = attrs
        resizes.append(entry)
    return {
        "file": model.name,
        "ir_version": proto.ir_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "opsets": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "inputs": _io(graph.input, defaults=set(inits)),
        "outputs": _io(graph.output),
        "nodes": len(graph.node),
        "ops": dict(Counter(n.op_type for n in graph.node).most_common()),
        "initializers": {"count": count, "inline_bytes": inline_bytes, "external_bytes": external_bytes},
        "external_data_files": model.data_files,
        "functions": [f"{f.domain}::{f.name}" for f in proto.functions],
        "metadata_props": {p.key: p.value for p in proto.metadata_props},
        "resize_nodes": resizes,
    }
