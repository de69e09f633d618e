"""Values integer inputs' consumers accept: an index into a table of N rows is drawn from
``[0, N)``, a mask from ``{0, 1}``. Read from the graph (consumers followed through ops that pass
values along: Cast, Reshape, Unsqueeze...); ``verify.ranges`` overrides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

    from surgeon.verify.specs import InputSpec

PASS_ALONG = frozenset(
    {"Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Transpose", "Slice", "Concat", "Tile"}
)
"""Ops whose output holds the input's values (rearranged): an index stays an index."""


def integer_domains(proto: onnx.ModelProto, specs: Sequence[InputSpec]) -> dict[str, tuple[tuple[float, float], str]]:
    """``{input: ((low, high), why)}`` for integer inputs whose consumers tell their domain."""
    g = proto.graph
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in g.node:
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, slot))
    rows = _table_rows(proto)
    out: dict[str, tuple[tuple[float, float], str]] = {}
    for spec in specs:
        if spec.dtype.kind not in "iu":
            continue
        found = _walk(spec.name, consumers, rows)
        if found is not None:
            out[spec.name] = found
        elif "mask" in spec.name.lower():
            out[spec.name] = ((0, 2), "named like a mask")
    return out


def _walk(
    name: str, consumers: dict[str, list[tuple[onnx.NodeProto, int]]], rows: dict[str, list[int]]
) -> tuple[tuple[float, float], str] | None:
    tables: list[tuple[int, str]] = []
    mask = ""
    todo, seen, cast = [(name, False)], set(), set()
    while todo:
        tensor, casted = todo.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for node, slot in consumers.get(tensor, []):
            if node.op_type == "Gather" and slot == 1 and node.input[0] in rows:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                shape = rows[node.input[0]]
                if -len(shape) <= axis < len(shape):
                    tables.append((shape[axis], node.input[0]))
            elif node.op_type == "Where" and slot == 0:
                mask = mask or f"condition of Where '{node.name}'"
            elif casted and node.op_type in ("Mul", "Sub") and tensor in cast:
                mask = mask or f"{node.op_type} '{node.name}' of the float it is cast to"
            elif node.op_type == "Cast" and node.output:
                to = next((a.i for a in node.attribute if a.name == "to"), 0)
                todo.append((node.output[0], True))
                if to in (1, 10, 11, 16):  # float, float16, double, bfloat16
                    cast.add(node.output[0])
            elif node.op_type in PASS_ALONG and slot == 0 and node.output:
                todo.append((node.output[0], casted))
    if tables:
        n, table = min(tables)
        return (0, max(n, 1)), f"indexes '{table}' ({n} rows)"
    if mask:
        return (0, 2), f"mask: {mask}"
    return None


def _table_rows(proto: onnx.ModelProto) -> dict[str, list[int]]:
    """Shapes of constant tensors (initializers, Constant nodes), read without their data."""
    out = {t.name: list(t.dims) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    out[node.output[0]] = list(a.t.dims)
    return out
