"""Every tensor of a model's main graph, intermediate ones included: the node that makes it, its
element type and shape (declared, else from onnx shape inference). For ``surgeon inspect --tensors``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from surgeon.errors import UsageError
from surgeon.ir.walk import light_copy

if TYPE_CHECKING:
    import onnx

    from surgeon.ir.model import Model

BIG = 1 << 16
"""Initializers above this many elements lose their values in the copy shape inference reads."""


def _entry(vi: onnx.ValueInfoProto) -> tuple[str, list[Any]]:
    import onnx

    tt = vi.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else "?"
    if not tt.HasField("shape"):
        return dtype, ["?"]
    return dtype, [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]


def list_tensors(model: Model, pattern: str | None = None) -> list[dict[str, Any]]:
    """Graph inputs, node outputs and graph outputs in graph order, filtered by ``pattern`` (a
    regex searched in the name). Initializers are left out (``surgeon inspect`` counts them)."""
    import onnx

    try:
        rx = re.compile(pattern) if pattern else None
    except re.error as exc:
        raise UsageError(f"--filter '{pattern}': not a valid regex ({exc})") from None
    proto = model.proto
    known: dict[str, onnx.ValueInfoProto] = {}
    light = light_copy(proto, BIG)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True).graph
        for vi in (*inferred.value_info, *inferred.input, *inferred.output):
            known[vi.name] = vi
    except Exception:  # a model onnx cannot infer still lists its declared shapes
        pass
    for vi in (*proto.graph.value_info, *proto.graph.input, *proto.graph.output):
        if vi.type.tensor_type.HasField("shape") or vi.name not in known:
            known[vi.name] = vi
    inits = {t.name for t in proto.graph.initializer}
    rows: list[dict[str, Any]] = []
    outputs = {o.name for o in proto.graph.output}

    def add(name: str, op: str, node: str) -> None:
        if not name or (rx is not None and not rx.search(name)):
            return
        dtype, shape = _entry(known[name]) if name in known else ("?", ["?"])
        rows.append(
            {"name": name, "op": op, "node": node, "dtype": dtype, "shape": shape, "graph_output": name in outputs}
        )

    for vi in proto.graph.input:
        if vi.name not in inits:
            add(vi.name, "(input)", "")
    for n in proto.graph.node:
        for o in n.output:
            add(o, n.op_type, n.name)
    return rows
