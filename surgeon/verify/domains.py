"""Values integer inputs' consumers accept: an index into a table of N rows is drawn from
``[0, N)``, a mask from ``{0, 1}``, a value the graph compares with constants (``Equal(sr, 16000)``
before an If) from those constants. Read from the graph (consumers followed through ops that pass
values along: Cast, Reshape, Unsqueeze..., and into If/Loop bodies that read the input);
``verify.ranges`` overrides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from surgeon.verify.specs import Choice, Domain

__all__ = ["Choice", "Domain", "describe", "integer_domains"]

if TYPE_CHECKING:
    import onnx

    from surgeon.verify.specs import InputSpec


COMPARE = frozenset({"Equal"})
"""Ops that test an input against constants: the values that take a branch."""

PASS_ALONG = frozenset(
    {"Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Transpose", "Slice", "Concat", "Tile"}
)
"""Ops whose output holds the input's values (rearranged): an index stays an index."""


def describe(domain: Domain) -> str:
    """A domain as reports show it: ``[0, 30)`` or ``{8000, 16000}``."""
    if isinstance(domain, Choice):
        return "{" + ", ".join(f"{v:g}" for v in domain) + "}"
    return f"[{domain[0]:g}, {domain[1]:g})"


def integer_domains(proto: onnx.ModelProto, specs: Sequence[InputSpec]) -> dict[str, tuple[Domain, str]]:
    """``{input: (domain, why)}`` for integer inputs whose consumers tell their domain."""
    from surgeon.ir.walk import iter_proto_graphs

    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for g in iter_proto_graphs(proto.graph):  # bodies read outer names: an If branch's Equal too
        for node in g.node:
            for slot, name in enumerate(node.input):
                consumers.setdefault(name, []).append((node, slot))
    rows = _table_rows(proto)
    values = _small_constants(proto)
    out: dict[str, tuple[Domain, str]] = {}
    for spec in specs:
        if spec.dtype.kind not in "iu":
            continue
        found = _walk(spec.name, consumers, rows, values)
        if found is not None:
            out[spec.name] = found
        elif "mask" in spec.name.lower():
            out[spec.name] = ((0, 2), "named like a mask")
    return out


def _walk(
    name: str,
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]],
    rows: dict[str, list[int]],
    values: dict[str, list[float]],
) -> tuple[Domain, str] | None:
    tables: list[tuple[int, str]] = []
    compared: dict[float, None] = {}
    where: list[str] = []
    mask = ""
    todo, seen, cast = [(name, False)], set(), set()
    while todo:
        tensor, casted = todo.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for node, slot in consumers.get(tensor, []):
            other = node.input[1 - slot] if node.op_type in COMPARE and len(node.input) == 2 and slot < 2 else ""
            if other in values:
                compared.update(dict.fromkeys(values[other]))
                where.append(f"{node.op_type} '{node.name or node.output[0]}'")
            elif node.op_type == "Gather" and slot == 1 and node.input[0] in rows:
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
    if compared:
        shown = ", ".join(f"{v:g}" for v in compared)
        return Choice(sorted(compared)), f"compared with {shown} in {', '.join(where[:3])}"
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


def _small_constants(proto: onnx.ModelProto, limit: int = 16) -> dict[str, list[float]]:
    """Values of constants of at most ``limit`` elements (initializers, Constant nodes, in bodies too)."""
    from surgeon.ir.walk import iter_proto_graphs

    out: dict[str, list[float]] = {}
    for t in proto.graph.initializer:
        _read(out, t.name, t, limit)
    for g in iter_proto_graphs(proto.graph):
        for node in g.node:
            if node.op_type != "Constant" or not node.output:
                continue
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    _read(out, node.output[0], a.t, limit)
                elif a.name == "value_int":
                    out[node.output[0]] = [float(a.i)]
                elif a.name == "value_ints" and len(a.ints) <= limit:
                    out[node.output[0]] = [float(v) for v in a.ints]
    return out


def _read(out: dict[str, list[float]], name: str, t: onnx.TensorProto, limit: int) -> None:
    from onnx import numpy_helper

    from surgeon.ir.external import is_external

    n = 1
    for d in t.dims:
        n *= d
    if n > limit or is_external(t):
        return
    try:
        out[name] = [float(v) for v in numpy_helper.to_array(t).reshape(-1)]
    except (TypeError, ValueError):  # a dtype numpy cannot hold as numbers: not a value to draw
        return
