"""Slices after a promoted Resize that crop back to the traced size, for promote-resize-scales:
their ends opened where that keeps the traced result, any other crop of a scaled axis refused.

Shapes decide, as in mark-dynamic (passes/_dynamic.py): ONNX shape inference at the traced factor
and at a larger one (each promoted node reading another vector). A Slice whose output does not
keep the proportion of its input along an axis the factor scales crops there: ends equal to the
traced size of that axis, from start 0 with a positive step, are the crop back to the traced size
that TorchScript exports write (``y[:, :, :H * 2]`` with ``H`` a traced int), and become open
(``INT64_MAX``) in a new constant for that Slice alone; anything else is refused, naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from surgeon.errors import PassError, PassPreconditionError

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
KEEP = "set crops: keep to leave it as exported (the verifier's probe then checks the outputs)"

Others = list[tuple["gs.Node", int, "np.ndarray"]]
"""Each promoted node, the input slot of its scales (or sizes), and that vector at another factor."""


@dataclass(frozen=True)
class Bounds:
    """A Slice's starts, ends, axes (normalised) and steps, one entry per sliced axis."""

    starts: list[int]
    ends: list[int]
    axes: list[int]
    steps: list[int]


def open_traced_crops(model: ModelIR, others: Others, at_a: dict, at_b: dict | None) -> tuple[list[str], dict | None]:
    """Open the ends of the Slices that crop a scaled axis back to its traced size; one note each.
    ``at_a``, ``at_b``: the shapes inferred at the traced factor and at the other (:func:`shapes_at`).
    Raises :class:`PassPreconditionError` (field ``crops``) for any other crop of a scaled axis.
    Round by round (a crop behind an opened one only shows once that one is open); a round
    refuses before it edits. Main graph only; where inference fails at either factor, nothing
    is judged (the probe still checks the outputs). Returns the notes and the shapes at the
    other factor once every crop is open."""
    notes: list[str] = []
    slices = [n for n in model.graph.nodes if n.op == "Slice"]
    for _ in range(1 + 64 * len(slices)):  # each round opens an entry of some Slice's ends
        if at_b is None:
            return notes, None
        found = [(node, new) for node in slices if (new := _judge(model, node, at_a, at_b)) is not None]
        if not found:
            return notes, at_b
        notes += [_open(model, node, new) for node, new in found]
        at_b = shapes_at(model, others)
    raise PassError(f"opening traced-size crops did not settle after {len(notes)} rewrites")


def shapes_at(model: ModelIR, others: Others) -> dict | None:
    """Inferred shapes with each promoted node reading its other vector (restored after)."""
    import onnx_graphsurgeon as gs

    from surgeon.passkit.ops import unique_name
    from surgeon.passkit.shapes import infer

    saved = []
    try:
        for node, slot, vector in others:
            saved.append((node, slot, node.inputs[slot]))
            node.inputs[slot] = gs.Constant(unique_name(model.graph, f"{node.name}_other"), vector)
        return infer(model)
    except PassError:
        return None
    finally:
        for node, slot, old in reversed(saved):
            node.inputs[slot] = old


def _off(shapes: list) -> list[int]:
    """Of the shapes ``[in_a, in_b, out_a, out_b]`` (at the traced factor, at the other), the axes
    whose size the factor changes at the input and whose output does not keep the proportion;
    an axis with a symbolic or unknown size on either side is not judged."""
    if any(s is None for s in shapes) or len({len(s) for s in shapes if s is not None}) != 1:
        return []
    off = []
    for k, dims in enumerate(zip(*shapes)):
        if all(isinstance(d, int) for d in dims):
            a, b, oa, ob = dims
            if a != b and ob * a != oa * b:
                off.append(k)
    return off


def _judge(model: ModelIR, node: gs.Node, at_a: dict, at_b: dict) -> Bounds | None:
    """The bounds with the traced-size ends opened, None when the Slice follows the factor."""
    x, y = node.inputs[0], node.outputs[0]
    shapes = [at.get(t.name, (None, None))[1] for t in (x, y) for at in (at_a, at_b)]
    off = _off(shapes)
    if not off:
        return None
    in_a, in_b, out_a, out_b = shapes
    bounds = _bounds(model, node, len(in_a))
    if bounds is None:
        k = off[0]
        raise PassPreconditionError(
            f"Slice '{node.name}' crops axis {k} to {out_b[k]} where the factor makes it {in_b[k]} "
            f"({out_a[k]} of {in_a[k]} at the traced "
            "factor), and its starts/ends/axes/steps are computed in the graph: a crop tied to the "
            f"traced size cannot follow a new factor; {KEEP}",
            field=("crops",),
        )
    ends = list(bounds.ends)
    for k in off:
        a, b, oa, ob = in_a[k], in_b[k], out_a[k], out_b[k]
        if k not in bounds.axes:
            continue  # an axis the Slice does not slice keeps its size
        i = bounds.axes.index(k)
        start = bounds.starts[i] + a if bounds.starts[i] < 0 else bounds.starts[i]
        if min(max(start, 0), a) == 0 and bounds.steps[i] > 0 and bounds.ends[i] == a:
            ends[i] = INT64_MAX
            continue
        where = f"starts {_shown(bounds.starts)}, ends {_shown(bounds.ends)}, axes {bounds.axes}"
        if oa != a:
            what = f"crops axis {k} to {oa} (the traced size is {a}; {where})"
        else:
            what = (
                f"keeps axis {k} whole at the traced size {a} but crops it to {ob} where the factor "
                f"makes it {b} ({where}; only ends equal to the traced size, from start 0, are opened)"
            )
        raise PassPreconditionError(
            f"Slice '{node.name}' {what}: a crop tied to the traced size cannot follow a new factor "
            f"(at size {b} it gives {ob}, not {oa * b / a:g}); {KEEP}",
            field=("crops",),
        )
    return Bounds(bounds.starts, ends, bounds.axes, bounds.steps) if ends != bounds.ends else None


def _bounds(model: ModelIR, node: gs.Node, rank: int) -> Bounds | None:
    """Starts, ends, axes and steps as constants (Slice-1: attributes), or None."""
    from surgeon.passkit.shapes import fold_values

    read: list[list[int] | None]
    if model.opset < 10:
        a = node.attrs
        read = [a.get("starts"), a.get("ends"), a.get("axes"), None]
    else:
        read = []
        for slot in (1, 2, 3, 4):
            t = node.inputs[slot] if len(node.inputs) > slot and node.inputs[slot].name else None
            v = fold_values(model, t) if t is not None else None
            if t is not None and v is None:
                return None  # computed in the graph
            read.append([int(e) for e in v.reshape(-1)] if v is not None else None)
    if read[0] is None or read[1] is None:
        return None
    n = len(read[1])
    values = [
        read[0],
        read[1],
        read[2] if read[2] is not None else list(range(n)),
        read[3] if read[3] is not None else [1] * n,
    ]
    starts, ends, axes, steps = ([int(e) for e in v] for v in values)
    if not len(starts) == len(ends) == len(axes) == len(steps) or not all(-rank <= e < rank for e in axes):
        return None
    return Bounds(starts, ends, [e % rank for e in axes], steps)


def _open(model: ModelIR, node: gs.Node, new: Bounds) -> str:
    """Give ``node`` the opened ends: a new constant for it alone (or its attribute, Slice-1)."""
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.passkit.ops import unique_name
    from surgeon.passkit.shapes import drop_dead, fold_values

    if model.opset < 10:
        old = [int(e) for e in node.attrs["ends"]]
        node.attrs["ends"] = list(new.ends)
    else:
        value = fold_values(model, node.inputs[2])
        dtype = value.dtype if value is not None else np.dtype(np.int64)
        old = [int(e) for e in value.reshape(-1)] if value is not None else []
        ends = [min(e, INT32_MAX) for e in new.ends] if dtype == np.int32 else new.ends
        former = node.inputs[2]
        node.inputs[2] = gs.Constant(
            unique_name(model.graph, f"{node.name or 'Slice'}_ends"), np.array(ends, dtype=dtype)
        )
        drop_dead(model.graph, former)
    opened = [ax for ax, e, n in zip(new.axes, old, new.ends) if e != n]
    axes = ", ".join(map(str, opened))
    return f"Slice '{node.name}': ends {_shown(old)} -> {_shown(new.ends)} (the traced size of axis {axes}, now open)"


def _shown(values: list[int]) -> str:
    return "[" + ", ".join("end" if v >= INT32_MAX else str(v) for v in values) + "]"
