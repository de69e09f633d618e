"""Make input/output axes dynamic after export (torch.onnx.export's dynamic_axes, done properly)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from surgeon.errors import PassError, PassPreconditionError
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import names, require_names
from surgeon.verify.contract import IOContract, io_types
from surgeon.verify.probes import BatchProbe, SizeProbe
from surgeon.verify.specs import Axes

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR
    from surgeon.passes._dynamic import MarkedAxes

DynamicPlan = tuple[Axes, Axes, dict[str, int]]
"""Input axes, output axes (normalised) and the traced size of each symbol."""


@register_pass("mark-dynamic")
class MarkDynamic(Pass[DynamicPlan]):
    """Make input and output axes symbolic (dynamic_axes after the fact), rewriting constant
    shapes that hard-code the traced size.

    Symbols shared across tensors mean equal sizes. Stale intermediate shapes are cleared and shape
    inference re-run. Constant shapes derived from the traced size (Reshape ``[1, 512]``, Expand,
    Slice ends) are rewritten to ``0``/``-1``/open forms; where no such form exists (a ViT cls token
    expanded to ``[2, 1, D]``, ``torch.zeros(x.shape[0], n)``, ``x.repeat(B, 1)``: static tensors
    that meet a dynamic one in a Concat or broadcasting op, or a declared output), the Expand or
    ConstantOfShape shape, Tile repeats, or a constant of equal slices is made to follow
    ``Shape(<graph input>)``. Each rewrite is reported; what cannot be made dynamic safely is
    refused with the node and input named (heuristic: see passes/_dynamic.py). Contract: equal
    outputs at the original size; a batch
    symbol is probed with a batch of distinct samples against one run per sample; other symbols
    are probed at another size (the model must run, output axes must match their symbols).
    """

    class Params(PassParams):
        inputs: dict[str, dict[int, str]] = Field(default_factory=dict, description="input name -> {axis: symbol}")
        outputs: dict[str, dict[int, str]] = Field(default_factory=dict, description="output name -> {axis: symbol}")
        batch: str | None = Field(
            None, min_length=1, description="shorthand: axis 0 of every input and output is this symbol"
        )
        batch_symbols: list[str] | None = Field(
            None,
            description="symbols probed as batch axes (default: 'batch' and any symbol whose name contains 'batch')",
        )

    params: Params

    # -- plan ----------------------------------------------------------------------------------
    def plan(self, model: ModelIR) -> DynamicPlan:
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
            # batch: axis 0 of every tensor; a sequence, map or optional value has no axes to name
            plan: Axes = {t.name: {0: p.batch} for t in tensors if _is_tensor(t)} if p.batch else {}
            if p.batch and kind == "inputs":
                _refuse_shaped_optionals(model, tensors)
            for name, axes in given.items():
                plan.setdefault(name, {}).update(axes)
            by_name = {t.name: t for t in tensors}
            out: Axes = {}
            for name, axes in plan.items():
                shape = by_name[name].shape
                if not _is_tensor(by_name[name]):
                    raise PassPreconditionError(
                        f"{kind[:-1]} '{name}' is a {by_name[name].type.removesuffix('_type')}, not a tensor; "
                        "it has no axes to name",
                        field=(kind, name),
                    )
                if shape is None:
                    raise PassPreconditionError(
                        f"{kind[:-1]} '{name}' has no known rank; cannot name its axes", field=(kind, name)
                    )
                out[name] = {}
                for axis, sym in axes.items():
                    if not -len(shape) <= axis < len(shape):
                        raise PassPreconditionError(
                            f"{kind[:-1]} '{name}' has rank {len(shape)} {list(shape)}; axis {axis} does not exist",
                            field=(kind, name),
                        )
                    if not sym or sym.strip().isdigit():
                        raise PassPreconditionError(
                            f"{kind[:-1]} '{name}' axis {axis}: symbol '{sym}' must be a name, not a "
                            "number (fix-dims fixes sizes)",
                            field=(kind, name),
                        )
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
                    raise PassPreconditionError(
                        f"symbol '{sym}' means equal sizes, but {where[sym]} is {traced[sym]} and {name}:{axis} is {d}",
                        field=("inputs", name),
                    )
                traced[sym], where[sym] = d, f"{name}:{axis}"
        return traced

    # -- run -----------------------------------------------------------------------------------
    def requires(self, model: ModelIR, plan: DynamicPlan | None = None) -> None:
        self.plan_of(model, plan)  # the plan refuses what it cannot plan

    def run(self, model: ModelIR, plan: DynamicPlan | None = None) -> PassResult:
        from surgeon.ir.walk import wiring
        from surgeon.passes._dynamic import MarkedAxes
        from surgeon.passkit.shapes import infer, refresh_shapes

        ins, outs, traced = self.plan_of(model, plan)
        g = model.graph
        by_name = {t.name: t for t in list(g.inputs) + list(g.outputs)}
        before = {n: list(by_name[n].shape) for n in list(ins) + list(outs)}
        io_before = io_types(g)
        other = _other_sizes(traced)
        at_a = infer(model)
        wired = wiring(g)
        for name, axes in ins.items():
            shape = list(by_name[name].shape)
            for axis, sym in axes.items():
                shape[axis] = sym
            by_name[name].shape = shape
        dims_b = {n: [other.get(d, d) if isinstance(d, str) else d for d in by_name[n].shape] for n in ins}
        notes = rewrite_constant_shapes(model, at_a, dims_b, MarkedAxes(ins, outs, traced, other))
        at_b = self._check_outputs(model, outs, traced, other, dims_b)
        pins = {name: tuple(axes.get(i) for i in range(len(by_name[name].shape))) for name, axes in outs.items()}
        refresh_shapes(model, pins)
        for name, axes in outs.items():
            t = by_name[name]
            t.shape = [axes.get(i, d) for i, d in enumerate(t.shape)]
        changed = {n: list(by_name[n].shape) for n in before if list(by_name[n].shape) != before[n]}
        if not changed and wiring(g) == wired:
            return PassResult(False, IOContract())
        notes = [f"{n}: {before[n]} -> {s}" for n, s in changed.items()] + notes
        batch = set(
            self.params.batch_symbols
            or [s for s in traced if "batch" in s.lower()] + ([self.params.batch] if self.params.batch else [])
        )
        probes: list = []
        for sym in sorted({s for axes in ins.values() for s in axes.values()}):
            if sym in batch:
                probes.append(BatchProbe(sym, ins, outs, traced))
            else:
                probes.append(SizeProbe(sym, ins, outs, traced))
        contract = IOContract(probes=probes, traced_dims=dict(traced))
        contract.declare_changes(io_before, io_types(g), axes=_following(g, ins, outs, at_a, at_b))
        return PassResult(True, contract, notes=notes)

    @staticmethod
    def _check_outputs(
        model: ModelIR, outs: Axes, traced: dict[str, int], other: dict[str, int], dims_b: dict[str, list]
    ) -> dict:
        """At another size, a declared output axis must not stay at its traced size. Returns the
        shapes inferred at the other sizes."""
        from surgeon.passkit.shapes import infer

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
        return at_b


def _following(g: gs.Graph, ins: Axes, outs: Axes, at_a: dict, at_b: dict) -> dict[str, set[int]]:
    """The axes the pass may change: those it marks, and the output axes whose size follows a
    marked one (inferred at the traced and at other sizes; an axis unknown at either follows)."""
    from surgeon.passkit.shapes import changing_axes

    allowed = {name: set(axes) for name, axes in ins.items()}
    for name, axes in changing_axes([t for t in g.outputs if t.name], at_a, at_b).items():
        allowed[name] = allowed.get(name, set()) | axes | set(outs.get(name, {}))
    return allowed


def rewrite_constant_shapes(model: ModelIR, at_a: dict, dims_b: dict, sizes: MarkedAxes) -> list[str]:
    """Rewrite the constants that only fit the traced sizes; one note per rewrite. Shapes at the
    traced sizes (``at_a``) and at other sizes (inference with ``dims_b``) decide: first the
    0/-1/open forms (Reshape, Expand of a dynamic input, Slice ends), then, one at a time,
    Shape-derived sizes for static tensors that meet a dynamic one (see ``_dynamic.Follow``)."""
    from surgeon.passes._dynamic import Follow, rule
    from surgeon.passkit.shapes import infer

    follow = Follow(model, at_a, sizes)
    notes: list[str] = []
    rounds = 32 + len(model.graph.nodes)
    for _ in range(rounds):
        at_b = infer(model, dims_b)
        found = [note for node in list(model.graph.nodes) if (note := rule(model, node, at_a, at_b))]
        if not found:
            note = follow.one(at_b)
            if note is None:
                return notes
            found = [note]
        notes += found
    raise PassError(f"constant shape rewrites did not settle after {rounds} rounds")


def _other_sizes(traced: dict[str, int]) -> dict[str, int]:
    """A second size per symbol for shape inference: distinct from every traced size and from each
    other, so that a size seen at both tells which symbol it follows."""
    used = set(traced.values())
    other: dict[str, int] = {}
    for sym, size in traced.items():
        value = 2 * size if size > 1 else 3
        while value in used:
            value += 1
        other[sym] = value
        used.add(value)
    return other


def _is_tensor(t: gs.Tensor) -> bool:
    """Whether ``t`` is a tensor (not a sequence, map or optional value)."""
    return getattr(t, "type", "tensor_type") in ("tensor_type", "sparse_tensor_type")


def _refuse_shaped_optionals(model: ModelIR, inputs: list[gs.Tensor]) -> None:
    """``batch`` names axis 0 of every input; an optional(tensor) input with a shape has one, but
    its shape lives in a type onnx-graphsurgeon does not hold, so this pass cannot rename it and
    the model would be left declaring two sizes for what must agree."""
    from surgeon.errors import PassError

    for t in inputs:
        tp = model.exotic_types.get(t.name)
        if tp is None or not tp.HasField("optional_type"):
            continue
        elem = tp.optional_type.elem_type
        if elem.HasField("tensor_type") and elem.tensor_type.HasField("shape") and elem.tensor_type.shape.dim:
            raise PassError(
                f"input '{t.name}' is an optional tensor with a shape: mark-dynamic cannot rename its axes; "
                "name the tensor inputs to mark in 'inputs' (the optional input keeps its dims)"
            )
