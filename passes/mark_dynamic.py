"""Make input/output axes dynamic after export (torch.onnx.export's dynamic_axes, done properly)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from surgeon.contract import IOContract
from surgeon.errors import PassError, PassPreconditionError
from surgeon.graph import names, require_names
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from surgeon.model import ModelIR

Axes = dict[str, dict[int, str]]


@register_pass("mark-dynamic")
class MarkDynamic(Pass):
    """Make input and output axes symbolic (dynamic_axes after the fact), rewriting constant shapes that hard-code the traced size.

    Symbols shared across tensors mean equal sizes. Stale intermediate shapes are cleared and shape
    inference re-run. Constant shapes derived from the traced size (Reshape ``[1, 512]``, Expand,
    Slice ends) are rewritten to ``0``/``-1``/open forms, each reported; what cannot be made dynamic
    safely is refused with the node named. Contract: equal outputs at the original size; a batch
    symbol is probed with a batch of distinct samples against one run per sample; other symbols
    are probed at another size (the model must run, output axes must match their symbols).
    """

    class Params(PassParams):
        inputs: dict[str, dict[int, str]] = Field(default_factory=dict, description="input name -> {axis: symbol}")
        outputs: dict[str, dict[int, str]] = Field(default_factory=dict, description="output name -> {axis: symbol}")
        batch: str | None = Field(None, min_length=1, description="shorthand: axis 0 of every input and output is this symbol")
        batch_symbols: list[str] | None = Field(None, description="symbols probed as batch axes (default: 'batch' and any symbol whose name contains 'batch')")

    params: Params

    # -- plan ----------------------------------------------------------------------------------
    def _plan(self, model: ModelIR) -> tuple[Axes, Axes, dict[str, int]]:
        """Input axes, output axes (normalised) and the traced size of each symbol."""
        import onnx_graphsurgeon as gs

        g = model.graph
        p = self.params
        if not (p.inputs or p.outputs or p.batch):
            raise PassPreconditionError("nothing to mark: give inputs, outputs or batch", field=("inputs",))
        feeds = [t for t in g.inputs if isinstance(t, gs.Variable)]
        require_names(p.inputs, names(feeds), "input", "inputs")
        require_names(p.outputs, names(g.outputs), "output", "outputs")
        plans: list[Axes] = []
        for kind, tensors, given in (("inputs", feeds, p.inputs), ("outputs", g.outputs, p.outputs)):
            plan: Axes = {t.name: {0: p.batch} for t in tensors} if p.batch else {}
            for name, axes in given.items():
                plan.setdefault(name, {}).update(axes)
            by_name = {t.name: t for t in tensors}
            out: Axes = {}
            for name, axes in plan.items():
                shape = by_name[name].shape
                if shape is None:
                    raise PassPreconditionError(f"{kind[:-1]} '{name}' has no known rank; cannot name its axes", field=(kind, name))
                out[name] = {}
                for axis, sym in axes.items():
                    if not -len(shape) <= axis < len(shape):
                        raise PassPreconditionError(f"{kind[:-1]} '{name}' has rank {len(shape)} {list(shape)}; axis {axis} does not exist", field=(kind, name))
                    if not sym or sym.strip().isdigit():
                        raise PassPreconditionError(f"{kind[:-1]} '{name}' axis {axis}: symbol '{sym}' must be a name, not a number (fix-dims fixes sizes)", field=(kind, name))
                    out[name][axis % len(shape)] = sym
            plans.append(out)
        return plans[0], plans[1], self._traced(g, plans[0])

    @staticmethod
    def _traced(g: gs.Graph, ins: Axes) -> dict[str, int]:
        traced: dict[str, int] = {}
        where: dict[str, str] = {}
        shapes = {t.name: t.shape for t in g.inputs}
        for name, axes in ins.items():
            for axis, sym in axes.items():
                d = shapes[name][axis]
                if not isinstance(d, int):
                    continue
                if sym in traced and traced[sym] != d:
                    raise PassPreconditionError(f"symbol '{sym}' means equal sizes, but {where[sym]} is {traced[sym]} and {name}:{axis} is {d}", field=("inputs", name))
                traced[sym], where[sym] = d, f"{name}:{axis}"
        return traced

    def requires(self, model: ModelIR) -> None:
        self._plan(model)

    # -- run -----------------------------------------------------------------------------------
    def run(self, model: ModelIR) -> PassResult:
        from surgeon.passes._shapes import BatchProbe, SizeProbe, infer, refresh_shapes

        ins, outs, traced = self._plan(model)
        g = model.graph
        by_name = {t.name: t for t in list(g.inputs) + list(g.outputs)}
        before = {n: list(by_name[n].shape) for n in list(ins) + list(outs)}
        other = {s: (2 * a if a > 1 else 3) for s, a in traced.items()}
        at_a = infer(model)
        for name, axes in ins.items():
            shape = list(by_name[name].shape)
            for axis, sym in axes.items():
                shape[axis] = sym
            by_name[name].shape = shape
        dims_b = {n: [other.get(d, d) if isinstance(d, str) else d for d in by_name[n].shape] for n in ins}
        notes = rewrite_constant_shapes(model, at_a, dims_b)
        self._check_outputs(model, outs, traced, other, dims_b)
        pins = {name: tuple(axes.get(i) for i in range(len(by_name[name].shape))) for name, axes in outs.items()}
        refresh_shapes(model, pins)
        for name, axes in outs.items():
            t = by_name[name]
            t.shape = [axes.get(i, d) for i, d in enumerate(t.shape)]
        changed = {n: list(by_name[n].shape) for n in before if list(by_name[n].shape) != before[n]}
        if not changed and not notes:
            return PassResult(False, IOContract())
        notes = [f"{n}: {before[n]} -> {s}" for n, s in changed.items()] + notes
        batch = set(self.params.batch_symbols or [s for s in traced if "batch" in s.lower()] + ([self.params.batch] if self.params.batch else []))
        probes: list = []
        for sym in sorted({s for axes in ins.values() for s in axes.values()}):
            if sym in batch:
                probes.append(BatchProbe(sym, ins, outs, traced))
            else:
                probes.append(SizeProbe(sym, ins, outs, traced))
        return PassResult(True, IOContract(probes=probes, notes=notes))

    @staticmethod
    def _check_outputs(model: ModelIR, outs: Axes, traced: dict[str, int], other: dict[str, int], dims_b: dict[str, list]) -> None:
        """At another size, a declared output axis must not stay at its traced size."""
        from surgeon.passes._shapes import infer

        try:
            at_b = infer(model, dims_b, strict=True)
        except PassError as exc:
            raise PassError(f"the graph cannot run at other sizes and cannot be made dynamic safely: {exc}") from None
        for name, axes in outs.items():
            shape = at_b.get(name, (None, None))[1]
            for axis, sym in axes.items():
                d = shape[axis] if shape is not None and axis < len(shape) else None
                if sym in traced and isinstance(d, int) and d == traced[sym] != other[sym]:
                    raise PassError(
                        f"output '{name}' axis {axis} stays {d} when '{sym}' is {other[sym]}: something in the graph "
                        "hard-codes that size and was not rewritten; cannot make it dynamic safely"
                    )


# -- constant shapes that hard-code the traced size -------------------------------------------

INT64_MAX = 2**63 - 1


def rewrite_constant_shapes(model: ModelIR, at_a: dict, dims_b: dict) -> list[str]:
    """Rewrite Reshape/Expand/Slice constants that only fit the traced sizes; one note per rewrite.
    Shapes at the traced sizes (``at_a``) and at other sizes (inference with ``dims_b``) decide."""
    from surgeon.passes._shapes import infer

    rules = {"Reshape": _reshape, "Expand": _expand, "Slice": _slice}
    notes: list[str] = []
    for _ in range(32):
        at_b = infer(model, dims_b)
        found = [note for node in list(model.graph.nodes) if node.op in rules and (note := rules[node.op](model, node, at_a, at_b))]
        if not found:
            return notes
        notes += found
    raise PassError("constant shape rewrites did not settle after 32 rounds")


def _ints(shapes: dict, tensor: gs.Tensor) -> tuple[int, ...] | None:
    shape = shapes.get(tensor.name, (None, None))[1]
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(shape)


def _sides(model: ModelIR, node: gs.Node, slot: int, at_a: dict, at_b: dict) -> tuple[list[int], tuple, tuple] | None:
    from surgeon.passes._shapes import constant_values

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
    from surgeon.passes._shapes import drop_orphan_constant, unique_name

    old = node.inputs[slot]
    node.inputs[slot] = gs.Constant(unique_name(model, f"{node.name or node.op}_{what}"), np.array(values, dtype=np.int64))
    drop_orphan_constant(model.graph, old)


def _prod(xs: list[int] | tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _resolve(s: list[int], dims: tuple[int, ...]) -> list[int] | None:
    out = [dims[i] if v == 0 and i < len(dims) else v for i, v in enumerate(s)]
    if -1 in out:
        known = _prod([v for v in out if v != -1])
        if known <= 0 or _prod(dims) % known:
            return None
        out[out.index(-1)] = _prod(dims) // known
    return out if _prod(out) == _prod(dims) else None


def _groups(a: tuple[int, ...], b: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Split two shapes of equal size into aligned groups of axes with equal products."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj, pa, pb = [], [], 1, 1
        if i < len(a):
            pa, i = a[i], i + 1
            gi.append(i - 1)
        if j < len(b):
            pb, j = b[j], j + 1
            gj.append(j - 1)
        while pa != pb:
            if pa < pb and i < len(a):
                pa, i = pa * a[i], i + 1
                gi.append(i - 1)
            elif pb < pa and j < len(b):
                pb, j = pb * b[j], j + 1
                gj.append(j - 1)
            else:
                return None
        groups.append((gi, gj))
    return groups


def _reshape(model: ModelIR, node: gs.Node, at_a: dict, at_b: dict) -> str | None:
    sides = _sides(model, node, 1, at_a, at_b)
    if sides is None:
        return None
    s, in_a, in_b = sides
    if node.attrs.get("allowzero", 0) and 0 in s:
        return None  # literal zero-size axes: leave alone
    out_a = _resolve(s, in_a)
    if out_a is None:
        return None
    new = list(s)
    for i, v in enumerate(s):  # leading axes the reshape keeps: copy them (0)
        if i >= len(in_a) or out_a[i] != in_a[i]:
            break
        if v > 0 and in_b[i] != in_a[i]:
            new[i] = 0
    if _resolve(new, in_b) is None and -1 not in new:
        dynamic = {k for k in range(len(in_a)) if in_a[k] != in_b[k] and not (k < len(new) and new[k] == 0)}
        groups = _groups(in_a, out_a) or []
        hits = [gj for gi, gj in groups if dynamic & set(gi)]
        if len(hits) == 1 and len([j for j in hits[0] if new[j] > 0]) == 1:
            new[[j for j in hits[0] if new[j] > 0][0]] = -1
    if _resolve(new, in_b) is None or _resolve(new, in_a) != out_a:
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
    from surgeon.passes._shapes import constant_values

    sides = _sides(model, node, 2, at_a, at_b)
    if sides is None:
        return None
    ends, in_a, in_b = sides
    starts = constant_values(model, node.inputs[1])
    axes = constant_values(model, node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else list(range(len(ends)))
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
