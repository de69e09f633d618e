"""The interface under the contract: order, dtypes and static dims of every input and output of
the model before the steps and after them. A change no contract declares fails the check (a
runtime that binds outputs by index, or allocates by declared shape, would get it wrong)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    if kind == "input":
        names = {vi.name for vi in g.input}
        inits = {t.name for t in g.initializer if t.name in names}
        items = [vi for vi in g.input if vi.name not in inits]
    else:
        items = list(g.output)
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


@dataclass(frozen=True)
class MadeStatic:
    """An output axis whose symbol only the exporter named (no input has it, no step of the recipe
    named it: ``Concathidden_out_dim_2``) that re-inference made static. A caller cannot tell the
    difference where the model gives that size at every size probed, so that is what is checked."""

    output: str
    """The output's name after the steps."""
    axis: int
    symbol: str
    size: int


def made_static(before: onnx.ModelProto, after: onnx.ModelProto, contracts: Sequence[IOContract]) -> list[MadeStatic]:
    """The output axes of ``after`` that hold a static size where ``before`` has a symbol that no
    input of ``before`` shares and no step named (mark-dynamic's output axes, symbols it traced)."""
    inputs = {d for p in ports(before, "input") for d in (p.dims or ()) if isinstance(d, str)}
    named: set[str] = set()
    for c in contracts:
        named |= set(c.traced_dims)
        for probe in c.probes:
            named |= {s for axes in getattr(probe, "outs", {}).values() for s in axes.values()}
    now = {p.name: p for p in ports(after, "output")}
    out = []
    for old in ports(before, "output"):
        t = _follow(old.name, contracts, "output")
        new = now.get(t.name) if t is not None else None
        if new is None or old.dims is None or new.dims is None or len(old.dims) != len(new.dims):
            continue
        for axis, (a, b) in enumerate(zip(old.dims, new.dims)):
            if isinstance(a, str) and isinstance(b, int) and a not in inputs and a not in named:
                out.append(MadeStatic(new.name, axis, a, b))
    return out


def check_interface(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    contracts: Sequence[IOContract],
    produced: Sequence[Mapping[str, tuple[int, ...]]] = (),
) -> list[OutputCheck]:
    """One failed check per undeclared change of order, dtype or dims; nothing when all holds.
    ``produced``: the output shapes ``after`` gave at each size it was run at; an exporter's
    output symbol made static (:func:`made_static`) is no change where every one of them has that
    size (one check, ``ok``, says so), and fails otherwise."""
    problems: list[OutputCheck] = list(_named_made_static(after, contracts))
    reordered = any(c.reordered for c in contracts)
    statics = {(m.output, m.axis): m for m in made_static(before, after, contracts)}
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
            mine = {axis for (name, axis) in statics if name == t.name}
            change = None if t.dims_free else _dims_change(old.dims, new.dims, t.free_axes | mine)
            if change:
                problems.append(_fail(label, change))
            for axis in sorted(mine if not t.dims_free else ()):
                problems.append(_made_static(label, statics[(t.name, axis)], produced))
        order = [new for _, new in sorted(kept, key=lambda k: now[k[1]][0])]
        want = [new for _, new in kept]
        if not reordered and order != want:
            problems.append(
                _fail(f"{kind}s", f"order {order} != {want} before (a runtime binding by position gets them swapped)")
            )
    return problems


def _named_made_static(after: onnx.ModelProto, contracts: Sequence[IOContract]) -> list[OutputCheck]:
    """Output axes a step named with a symbol (mark-dynamic's ``outputs``) that are static in
    ``after`` although no later step declares that axis changed: the caller was promised a
    symbol."""
    now = {p.name: p for p in ports(after, "output")}
    out = []
    seen: set[tuple[int, str, int]] = set()
    for k, c in enumerate(contracts):
        for probe in c.probes:
            for name, axes in getattr(probe, "outs", {}).items():
                for axis, symbol in axes.items():
                    if (k, name, axis) in seen:
                        continue
                    seen.add((k, name, axis))
                    t = _follow(name, contracts[k + 1 :], "output")
                    port = now.get(t.name) if t is not None else None
                    if t is None or port is None or port.dims is None or axis >= len(port.dims):
                        continue
                    if isinstance(port.dims[axis], int) and not (t.dims_free or axis in t.free_axes):
                        what = f"axis {axis} is {port.dims[axis]}, was '{symbol}' (named by a step; symbolic -> static)"
                        out.append(_fail(f"output '{t.name}'", what))
    return out


def _made_static(label: str, m: MadeStatic, produced: Sequence[Mapping[str, tuple[int, ...]]]) -> OutputCheck:
    shapes = [p.get(m.output) for p in produced]
    sizes = [shape[m.axis] for shape in shapes if shape is not None and m.axis < len(shape)]
    what = f"axis {m.axis} is {m.size}, was '{m.symbol}' (a symbol no input has, named by the exporter)"
    name = f"interface: {label} axis {m.axis}"
    if sizes and all(n == m.size for n in sizes):
        note = f"{what}: the model gives {m.size} at every size run ({len(sizes)}), so no caller sees a change"
        return OutputCheck(name, True, Verdict.OK, note=note, kind=CheckKind.INTERFACE)
    seen = ", ".join(str(n) for n in sizes) or "no run"
    note = f"{what}, but the model gives {seen} (symbolic -> static); no contract declares it"
    return OutputCheck(name, False, Verdict.FAIL, note=note, kind=CheckKind.INTERFACE)


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
