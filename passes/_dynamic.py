"""Constant shapes that hard-code the traced size, for mark-dynamic: rewritten to 0/-1/open
forms where those keep the meaning, else to sizes computed from ``Shape(<graph input>)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from surgeon.errors import PassError
from surgeon.verify.specs import Axes

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR


@dataclass(frozen=True)
class MarkedAxes:
    """The marked axes and each symbol's traced size and (distinct) other size used by inference."""

    ins: Axes
    outs: Axes
    traced: dict[str, int]
    other: dict[str, int]


INT64_MAX = 2**63 - 1
RULES = ("Reshape", "Expand", "Slice")


def _ints(shapes: dict, tensor: gs.Tensor) -> tuple[int, ...] | None:
    import onnx_graphsurgeon as gs

    shape = tuple(tensor.shape) if isinstance(tensor, gs.Constant) else shapes.get(tensor.name, (None, None))[1]
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(shape)


def _sides(model: ModelIR, node: gs.Node, slot: int, at_a: dict, at_b: dict) -> tuple[list[int], tuple, tuple] | None:
    from surgeon.passkit.shapes import constant_values

    if len(node.inputs) <= slot or not node.inputs[slot].name:
        return None
    const = constant_values(model, node.inputs[slot])
    in_a, in_b = _ints(at_a, node.inputs[0]), _ints(at_b, node.inputs[0])
    if const is None or in_a is None or in_b is None or in_a == in_b or len(in_a) != len(in_b):
        return None
    return [int(v) for v in const.reshape(-1)], in_a, in_b


def _set_const(model: ModelIR, node: gs.Node, slot: int, values: list[int], what: str) -> None:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.passkit.ops import unique_name
    from surgeon.passkit.shapes import drop_orphan_constant

    old = node.inputs[slot]
    node.inputs[slot] = gs.Constant(
        unique_name(model.graph, f"{node.name or node.op}_{what}"), np.array(values, dtype=np.int64)
    )
    drop_orphan_constant(model.graph, old)


def rule(model: ModelIR, node: gs.Node, at_a: dict, at_b: dict) -> str | None:
    """The 0/-1/open form rewrite of one Reshape, Expand or Slice (its note), or None."""
    return (
        {"Reshape": _reshape, "Expand": _expand, "Slice": _slice}[node.op](model, node, at_a, at_b)
        if node.op in RULES
        else None
    )


def _reshape(model: ModelIR, node: gs.Node, at_a: dict, at_b: dict) -> str | None:
    from surgeon.passkit.shapes import aligned_groups, resolve_reshape

    sides = _sides(model, node, 1, at_a, at_b)
    if sides is None:
        return None
    s, in_a, in_b = sides
    if node.attrs.get("allowzero", 0) and 0 in s:
        return None  # literal zero-size axes: leave alone
    out_a = resolve_reshape(s, in_a)
    if out_a is None:
        return None
    new = list(s)
    for i, v in enumerate(s):  # leading axes the reshape keeps: copy them (0)
        if i >= len(in_a) or out_a[i] != in_a[i]:
            break
        if v > 0 and in_b[i] != in_a[i]:
            new[i] = 0
    if resolve_reshape(new, in_b) is None and -1 not in new:
        dynamic = {k for k in range(len(in_a)) if in_a[k] != in_b[k] and not (k < len(new) and new[k] == 0)}
        groups = aligned_groups(in_a, out_a) or []
        hits = [gj for gi, gj in groups if dynamic & set(gi)]
        if len(hits) == 1 and len([j for j in hits[0] if new[j] > 0]) == 1:
            new[[j for j in hits[0] if new[j] > 0][0]] = -1
    if resolve_reshape(new, in_b) is None or resolve_reshape(new, in_a) != out_a:
        note = _reshape_from_shape(model, node, s, new, in_a, in_b, out_a)
        if note is not None:
            return note
        raise PassError(
            f"Reshape '{node.name}' reshapes {list(in_a)} to constant {s}: cannot tell which axes carry the "
            "dynamic size, so it cannot be made dynamic safely"
        )
    if new == s:
        return None
    _set_const(model, node, 1, new, "shape")
    if node.attrs.get("allowzero", 0):
        node.attrs["allowzero"] = 0  # no literal zero in the shape: same meaning, and 0 copies the input's size
        return f"Reshape '{node.name}': shape {s} -> {new}, allowzero 1 -> 0"
    return f"Reshape '{node.name}': shape {s} -> {new}"


def _reshape_from_shape(
    model: ModelIR, node: gs.Node, s: list[int], new: list[int], in_a: tuple, in_b: tuple, out_a: list[int]
) -> str | None:
    """When several output axes carry dynamic sizes (so one -1 is not enough): each output axis
    made of dynamic input axes only becomes their product, read with Shape from the data input."""
    from surgeon.passkit.shapes import ShapeBuilder, aligned_groups, drop_dead

    groups = aligned_groups(in_a, out_a)
    dynamic = {k for k in range(len(in_a)) if in_a[k] != in_b[k] and not (k < len(new) and new[k] == 0)}
    if groups is None or any(dynamic & set(gi) and len(gj) != 1 for gi, gj in groups):
        return None
    build = ShapeBuilder(model)
    items: list = [out_a[i] if v == -1 else v for i, v in enumerate(new)]
    shown: list = list(items)
    for gi, gj in groups:
        if dynamic & set(gi):
            items[gj[0]] = build.span(node.inputs[0], gi[0], gi[-1] + 1, node)
            shown[gj[0]] = "*".join(f"{node.inputs[0].name}[{k}]" for k in gi)
    old = node.inputs[1]
    node.inputs[1] = build.vector(items, node)
    drop_dead(model.graph, old)
    if node.attrs.get("allowzero", 0):
        node.attrs["allowzero"] = 0  # the 0s left copy the input's size
    return f"Reshape '{node.name}': shape {s} -> {shown} (sizes read with Shape)"


def _expand(model: ModelIR, node: gs.Node, at_a: dict, at_b: dict) -> str | None:
    sides = _sides(model, node, 1, at_a, at_b)
    if sides is None:
        return None
    s, in_a, in_b = sides
    new, off = list(s), len(s) - len(in_a)
    for k in range(len(in_a)):
        idx = off + k
        if idx >= 0 and in_a[k] != in_b[k] and new[idx] == in_a[k] != 1:
            new[idx] = 1  # 1 keeps the input's size
    if new == s:
        return None
    _set_const(model, node, 1, new, "shape")
    return f"Expand '{node.name}': shape {s} -> {new}"


def _slice(model: ModelIR, node: gs.Node, at_a: dict, at_b: dict) -> str | None:
    from surgeon.passkit.shapes import constant_values

    sides = _sides(model, node, 2, at_a, at_b)
    if sides is None:
        return None
    ends, in_a, in_b = sides
    starts = constant_values(model, node.inputs[1])
    axes = (
        constant_values(model, node.inputs[3])
        if len(node.inputs) > 3 and node.inputs[3].name
        else list(range(len(ends)))
    )
    steps = constant_values(model, node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else [1] * len(ends)
    if starts is None or axes is None or steps is None:
        return None
    new = list(ends)
    for i, ax in enumerate(int(a) % len(in_a) for a in list(axes)):
        if in_a[ax] != in_b[ax] and int(list(steps)[i]) > 0 and in_a[ax] <= ends[i] < INT64_MAX:
            new[i] = INT64_MAX  # "to the end" instead of the traced size
    if new == ends:
        return None
    _set_const(model, node, 2, new, "ends")
    shown = ["end" if v == INT64_MAX else v for v in new]
    return f"Slice '{node.name}': ends {ends} -> {shown}"


# -- Shape-derived sizes ----------------------------------------------------------------------

BROADCAST = frozenset(
    "Add Sub Mul Div Pow Mod Max Min Sum Mean Where Equal Greater Less GreaterOrEqual LessOrEqual "
    "And Or Xor BitShift BitwiseAnd BitwiseOr BitwiseXor PRelu".split()
)
UNARY = frozenset(
    "Identity Cast Neg Abs Relu Sigmoid Tanh Exp Log Sqrt Reciprocal Floor Ceil Round Sign Not Erf".split()
)
SOURCES = {"Expand": (1, "shape"), "ConstantOfShape": (0, "shape"), "Tile": (1, "repeats")}


class Follow:
    """Static tensors that meet a dynamic one: an input of Concat (off its axis) or of a
    broadcasting op whose size along an axis equals the dynamic input's traced size (not 1 for a
    broadcasting op), or a declared output axis that stays at its traced size. Heuristic: such a
    size is taken to be batch-derived (the traced model only ran because the two were equal), the
    symbol being the one whose traced and other sizes the dynamic side has. Its source is then
    made to follow ``Shape(<graph input>)``: the shape of an Expand or ConstantOfShape, the
    repeats of a Tile (of an input of size 1, or d with the traced size a multiple of d), or a
    constant whose slices along that axis are equal (its first slice, broadcast or expanded).
    Anything else is refused with the node and input named."""

    def __init__(self, model: ModelIR, at_a: dict, sizes: MarkedAxes) -> None:
        from surgeon.passkit.shapes import ShapeBuilder

        self.model, self.at_a, self.sizes = model, at_a, sizes
        self.build = ShapeBuilder(model)

    def one(self, at_b: dict) -> str | None:
        """Make the first static tensor that meets a dynamic one follow it; its note, or None."""
        self.at_b = at_b
        for node in list(self.model.graph.nodes):
            if node.op in BROADCAST or node.op == "Concat":
                hit = self._meeting(node)
                if hit is not None:
                    return self.follow(*hit)
        outputs = {t.name: t for t in self.model.graph.outputs}
        for name, axes in self.sizes.outs.items():
            shape = _ints(at_b, outputs[name]) or ()
            for axis, sym in axes.items():
                traced, other = self.sizes.traced.get(sym), self.sizes.other.get(sym)
                if axis < len(shape) and shape[axis] == traced != other and _ints(self.at_a, outputs[name]):
                    return self.follow(outputs[name], axis, sym, None, 0, False)
        return None

    def _meeting(self, node: gs.Node) -> tuple[gs.Tensor, int, str, gs.Node, int, bool] | None:
        cells = [(slot, t, *self._sides(t)) for slot, t in enumerate(node.inputs) if t.name]
        if not cells or any(a is None or b is None or len(a) != len(b) for _, _, a, b in cells):
            return None
        rank = max(len(a) for _, _, a, _ in cells)  # type: ignore[arg-type]
        skip = int(node.attrs.get("axis", 0)) % rank if node.op == "Concat" else None
        for p in range(rank):
            here = [(slot, t, k, a[k], b[k]) for slot, t, a, b in cells if (k := p - rank + len(a)) >= 0]  # type: ignore[arg-type,index]
            dyn = {(a, b) for *_, a, b in here if a != b}
            if p == skip or len(dyn) != 1:
                continue
            da, db = dyn.pop()
            for slot, t, k, a, b in here:
                if a == b == da != db and (skip is not None or a != 1):
                    return t, k, self._symbol(node, slot, t, da, db), node, slot, skip is None
        return None

    def _sides(self, t: gs.Tensor) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
        a, b = _ints(self.at_a, t), _ints(self.at_b, t)
        if a is None and b is None:  # e.g. Expand to TorchScript shape arithmetic inference cannot read
            a = b = self._static(t)
        return a, b

    def _static(self, t: gs.Tensor, depth: int = 0) -> tuple[int, ...] | None:
        """The shape of ``t`` when it is the same at both sizes (computed through Expand,
        ConstantOfShape and Tile of constant shapes where inference leaves it unknown)."""
        import numpy as np

        from surgeon.passkit.shapes import fold_values

        a = _ints(self.at_a, t)
        if a is not None:
            return a if a == _ints(self.at_b, t) else None
        node = t.inputs[0] if len(t.inputs) == 1 else None
        if node is None or depth > 16 or node.op not in UNARY | set(SOURCES):
            return None
        x = None if node.op == "ConstantOfShape" else self._static(node.inputs[0], depth + 1)
        if node.op in UNARY:
            return x
        values = fold_values(self.model, node.inputs[SOURCES[node.op][0]])
        if values is None or (x is None and node.op != "ConstantOfShape"):
            return None
        vals = tuple(int(v) for v in values.reshape(-1))
        if node.op == "ConstantOfShape":
            return vals
        if node.op == "Tile":
            return tuple(d * r for d, r in zip(x, vals)) if len(x) == len(vals) else None  # type: ignore[arg-type]
        try:
            return tuple(int(d) for d in np.broadcast_shapes(x, vals))  # type: ignore[arg-type]
        except ValueError:
            return None

    def _symbol(self, node: gs.Node, slot: int, t: gs.Tensor, da: int, db: int) -> str:
        syms = [s for s, v in self.sizes.traced.items() if v == da and self.sizes.other[s] == db]
        if len(syms) != 1:
            raise PassError(
                f"{node.op} '{node.name}' input {slot} ('{t.name}') has the static size {da} where another input's "
                f"size changes ({da} -> {db}) in a way no single marked symbol explains; cannot make it dynamic safely"
            )
        return syms[0]

    def follow(self, t: gs.Tensor, axis: int, sym: str, consumer: gs.Node | None, slot: int, broadcast: bool) -> str:
        from surgeon.passkit.shapes import constant_values

        where = (
            f"{consumer.op} '{consumer.name}' input {slot} ('{t.name}')"
            if consumer is not None
            else f"output '{t.name}'"
        )
        value = constant_values(self.model, t)
        if value is not None and consumer is not None:
            return self._constant(t, value, axis, sym, consumer, slot, broadcast)
        producer = t.inputs[0] if len(t.inputs) == 1 else None
        if producer is not None and producer.op in SOURCES:
            return self._source(producer, axis, sym, where)
        if producer is not None and producer.op in UNARY:
            return self.follow(producer.inputs[0], axis, sym, producer, 0, False)
        source = f"{producer.op} '{producer.name}'" if producer is not None else "a graph input or constant"
        fixed = self._hard_coded(t, axis, self.sizes.traced[sym])
        if fixed:
            raise PassError(
                f"{fixed} (what {where} gets along axis {axis}, where '{sym}' is dynamic): cannot make it dynamic "
                "safely; re-export with scale_factor instead of size"
            )
        raise PassError(
            f"{where} stays {self.sizes.traced[sym]} along axis {axis} where '{sym}' is dynamic; it "
            f"comes from {source}, "
            f"which cannot be made to follow '{sym}' safely"
        )

    def _hard_coded(self, t: gs.Tensor, axis: int, traced: int) -> str:
        """The Resize upstream of ``t`` (through each node's first input) whose constant ``sizes``
        fix ``axis`` at ``traced``: the node that hard-codes the size, named in the refusal."""
        from surgeon.passkit.shapes import constant_values

        seen: set[int] = set()
        while len(t.inputs) == 1 and id(t) not in seen and len(seen) < 256:
            seen.add(id(t))
            node = t.inputs[0]
            if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
                sizes = constant_values(self.model, node.inputs[3])
                vals = [int(v) for v in sizes.reshape(-1)] if sizes is not None else []
                if axis < len(vals) and vals[axis] == traced:
                    return (
                        f"Resize '{node.name}' hard-codes the size: its constant sizes {vals} fix axis {axis} "
                        f"at {traced}"
                    )
            if not node.inputs:
                break
            t = node.inputs[0]
        return ""

    def _constant(
        self, t: gs.Tensor, value: np.ndarray, axis: int, sym: str, consumer: gs.Node, slot: int, broadcast: bool
    ) -> str:
        import numpy as np
        import onnx_graphsurgeon as gs

        from surgeon.passkit.shapes import drop_orphan_constant

        first = np.take(value, [0], axis=axis)
        if not np.array_equal(np.broadcast_to(first, value.shape), value):
            raise PassError(
                f"{consumer.op} '{consumer.name}' input {slot}: constant '{t.name}' "
                f"{list(value.shape)} has the traced size "
                f"{value.shape[axis]} of '{sym}' along axis {axis}, but its slices along that axis differ (data, not a "
                "broadcast): cannot make it dynamic safely"
            )
        base = gs.Constant(self.build.name(f"{t.name}_{sym}_1"), first)
        shown = [sym if i == axis else d for i, d in enumerate(value.shape)]
        if broadcast:
            consumer.inputs[slot] = base
            note = (
                f"{consumer.op} '{consumer.name}': constant '{t.name}' {list(value.shape)} -> its first slice "
                f"{list(first.shape)}, broadcast along '{sym}'"
            )
        else:
            shape = self.build.vector(
                [self._piece(sym) if i == axis else int(d) for i, d in enumerate(value.shape)], consumer
            )
            out = gs.Variable(self.build.name(f"{t.name}_{sym}"), dtype=value.dtype)
            self.build.insert(
                consumer, gs.Node("Expand", self.build.name(f"{t.name}_expand"), inputs=[base, shape], outputs=[out])
            )
            consumer.inputs[slot] = out
            self.at_a[out.name] = (None, tuple(value.shape))  # its shape at the traced sizes, for later rounds
            note = (
                f"{consumer.op} '{consumer.name}': constant '{t.name}' {list(value.shape)} -> Expand of its "
                f"first slice to {shown}"
            )
        drop_orphan_constant(self.model.graph, t)
        return note

    def _source(self, node: gs.Node, axis: int, sym: str, where: str) -> str:
        import numpy as np
        import onnx_graphsurgeon as gs

        from surgeon.passkit.shapes import drop_dead, fold_values

        slot, what = SOURCES[node.op]
        values = fold_values(self.model, node.inputs[slot])
        out_a, x_a = self._static(node.outputs[0]), self._static(node.inputs[0])
        traced = self.sizes.traced[sym]
        refuse = (
            f"{where} stays {traced} along axis {axis} where '{sym}' is dynamic; it comes from {node.op} '{node.name}'"
        )
        if values is None or out_a is None or (node.op != "ConstantOfShape" and x_a is None):
            raise PassError(f"{refuse}, whose {what} or input shape is not constant: cannot make it dynamic safely")
        vals = [int(v) for v in values.reshape(-1)]
        idx = axis - len(out_a) + len(vals)
        piece = self._piece(sym)
        if node.op == "Tile":
            d = x_a[axis]  # type: ignore[index]
            if d < 1 or vals[axis] * d != traced:
                raise PassError(
                    f"{refuse}, whose input has size {d} there and repeats {vals[axis]}: cannot make it dynamic safely"
                )
            if d != 1:
                q = gs.Variable(self.build.name(f"{node.name}_repeats_{sym}"), dtype=np.int64)
                self.build.insert(
                    node,
                    gs.Node(
                        "Div",
                        q.name,
                        inputs=[piece, gs.Constant(self.build.name(f"{q.name}_d"), np.array([d], np.int64))],
                        outputs=[q],
                    ),
                )
                piece = q
        elif node.op == "Expand" and (xi := axis - len(out_a) + len(x_a)) >= 0 and x_a[xi] != 1:  # type: ignore[arg-type,index]
            return self.follow(node.inputs[0], xi, sym, node, 0, True)  # the size comes from the expanded input
        if not 0 <= idx < len(vals) or (node.op != "Tile" and vals[idx] != traced):
            raise PassError(f"{refuse}, whose {what} is {vals}: cannot tell which entry carries '{sym}'")
        old = node.inputs[slot]
        node.inputs[slot] = self.build.vector([piece if i == idx else v for i, v in enumerate(vals)], node)
        drop_dead(self.model.graph, old)
        shown = [sym if i == idx else v for i, v in enumerate(vals)]
        if node.op == "Tile" and x_a[axis] != 1:  # type: ignore[index]
            shown[idx] = f"{sym}/{x_a[axis]}"  # type: ignore[index]
        return f"{node.op} '{node.name}': {what} {vals} -> {shown} ('{sym}' from {self._origin(sym)})"

    def _piece(self, sym: str) -> gs.Tensor:
        """int64[1]: the size of ``sym``, read from the first graph input marked with it."""
        name, axis = next((n, a) for n, axes in self.sizes.ins.items() for a, s in axes.items() if s == sym)
        return self.build.dim(name, axis)

    def _origin(self, sym: str) -> str:
        name, axis = next((n, a) for n, axes in self.sizes.ins.items() for a, s in axes.items() if s == sym)
        return f"Shape({name})[{axis}]"
