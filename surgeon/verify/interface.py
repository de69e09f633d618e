"""The interface under the contract: order, dtypes and static dims of every input and output of
the model before the steps and after them. A change no contract declares fails the check (a
runtime that binds outputs by index, or allocates by declared shape, would get it wrong)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from surgeon.verify.compare import CheckKind, OutputCheck, Verdict
from surgeon.verify.specs import PLACEHOLDERS

if TYPE_CHECKING:
    import onnx

    from surgeon.verify.contract import IOContract

Dims = tuple[int | str | None, ...] | None


@dataclass(frozen=True)
class Port:
    name: str
    dtype: int
    dims: Dims
    """``None``: no shape; a dim is a size, a named symbol, or None (unknown: no value or param)."""


def ports(proto: onnx.ModelProto, kind: str) -> list[Port]:
    """The graph's inputs (those a caller feeds) or outputs, in order."""
    g = proto.graph
    inits = {t.name for t in g.initializer}
    items = [vi for vi in g.input if vi.name not in inits] if kind == "input" else list(g.output)
    out = []
    for vi in items:
        tt = vi.type.tensor_type
        dims: Dims = None
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            dims = tuple(_dim(d) for d in tt.shape.dim)
        out.append(Port(vi.name, tt.elem_type, dims))
    return out


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if d.HasField("dim_value") and d.dim_value >= 0:
        return int(d.dim_value)
    if d.dim_param and d.dim_param.strip() not in PLACEHOLDERS and not d.dim_param.strip().lstrip("-").isdigit():
        return d.dim_param
    return None


@dataclass
class _Track:
    name: str
    dims_free: bool = False
    free_axes: set[int] = field(default_factory=set)
    type_free: bool = False


def _follow(name: str, contracts: Sequence[IOContract], kind: str) -> _Track | None:
    """Where a port of the model before ``contracts`` is after them (None: removed), and which
    changes the contracts declared for it. Only ``changed_dims`` and ``changed_types`` declare a
    change: a port with a feed transform, an expectation or a derived feed keeps its dtype and
    static dims unless the step says otherwise."""
    t = _Track(name)
    for c in contracts:
        if kind == "input":
            if t.name in c.removed_inputs:
                return None
            t.name = c.renamed_inputs.get(t.name, t.name)
        else:
            if t.name in c.removed_outputs:
                return None
            t.name = c.renamed_outputs.get(t.name, t.name)
        t.dims_free |= t.name in c.changed_dims
        t.free_axes |= c.changed_axes.get(t.name, set())
        t.type_free |= t.name in c.changed_types
    return t


def check_interface(
    before: onnx.ModelProto, after: onnx.ModelProto, contracts: Sequence[IOContract]
) -> list[OutputCheck]:
    """One failed check per undeclared change of order, dtype or dims; nothing when all holds."""
    problems: list[OutputCheck] = []
    reordered = any(c.reordered for c in contracts)
    for kind in ("input", "output"):
        now = {p.name: (i, p) for i, p in enumerate(ports(after, kind))}
        kept: list[tuple[str, str]] = []
        for old in ports(before, kind):
            t = _follow(old.name, contracts, kind)
            if t is None or t.name not in now:
                continue  # removed, or missing: the comparison of values says so
            kept.append((old.name, t.name))
            new = now[t.name][1]
            label = f"{kind} '{t.name}'" + (f" (was '{old.name}')" if t.name != old.name else "")
            if not t.type_free and old.dtype and new.dtype and old.dtype != new.dtype:
                what = f"dtype {_dtype(new.dtype)} != {_dtype(old.dtype)} before"
                problems.append(_fail(label, what))
            change = None if t.dims_free else _dims_change(old.dims, new.dims, t.free_axes)
            if change:
                problems.append(_fail(label, change))
        order = [new for _, new in sorted(kept, key=lambda k: now[k[1]][0])]
        want = [new for _, new in kept]
        if not reordered and order != want:
            problems.append(
                _fail(f"{kind}s", f"order {order} != {want} before (a runtime binding by position gets them swapped)")
            )
    return problems


def _dims_change(old: Dims, new: Dims, free: set[int] | frozenset[int] = frozenset()) -> str:
    if old is None or new is None:
        return ""
    if len(old) != len(new):
        return f"rank {len(new)} {list(new)} != {len(old)} {list(old)} before"
    for axis, (a, b) in enumerate(zip(old, new)):
        if a is None or b is None or a == b or axis in free:
            continue
        if isinstance(a, int) or isinstance(b, int):
            return f"axis {axis} is {b!r}, was {a!r} ({_kind(a)} -> {_kind(b)})"
    return ""


def _dtype(elem_type: int) -> str:
    from onnx import helper

    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError):
        return helper.tensor_dtype_to_string(elem_type)


def _kind(d: int | str) -> str:
    return "static" if isinstance(d, int) else "symbolic"


def _fail(name: str, note: str) -> OutputCheck:
    return OutputCheck(
        f"interface: {name}", False, Verdict.FAIL, note=f"{note}; no contract declares it", kind=CheckKind.INTERFACE
    )
