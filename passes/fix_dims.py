"""Bind symbolic input dims to fixed sizes (for runtimes that need static shapes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt

from surgeon.errors import PassPreconditionError
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.verify.contract import IOContract, io_types, unknown_axes

if TYPE_CHECKING:
    from surgeon.ir.adapter import ModelIR

Axis = tuple[str, int]


@register_pass("fix-dims")
class FixDims(Pass[dict[Axis, int]]):
    """Bind symbolic dims of the inputs to fixed sizes and re-infer every shape (like
    onnxruntime's make_dynamic_shape_fixed).

    Dims are named by symbol (``batch: 1``: every input axis with that symbol) or by input axis
    (``'image:2': 224``: that axis, and every other axis sharing its symbol). Intermediate and output
    shapes are re-inferred, so no symbolic dim the fix resolves is left anywhere.
    An output declared with a fixed symbol whose size the model does not follow (a sliding-window
    cache declared ``[1, past, 4]`` that returns 7 positions) keeps the size inference finds, and
    the notes say so: declaring the symbol's size there would be a declaration the checker rejects.
    Contract: same outputs at the fixed sizes. The edited model accepts no other sizes, so the
    verifier's check runs at exactly those sizes: verify.dims must give them (onnxruntime rejects
    the feed with "invalid dimensions" otherwise).
    """

    class Params(PassParams):
        dims: dict[str, PositiveInt] = Field(min_length=1, description="symbol or 'input:axis' -> fixed size")

    params: Params

    def plan(self, model: ModelIR) -> dict[Axis, int]:
        """``{(input, axis): size}`` for every input axis that becomes static."""
        from surgeon.passkit.shapes import dims_text, input_symbols

        g = model.graph
        symbols = input_symbols(g)
        by_name = {t.name: t for t in g.inputs}
        plan: dict[Axis, int] = {}
        where: dict[Axis, str] = {}
        for key, size in self.params.dims.items():
            if key in symbols:
                axes = symbols[key]
            else:
                name, _, axis_text = key.rpartition(":")
                if name not in by_name or not axis_text.lstrip("-").isdigit():
                    shapes = ", ".join(
                        f"{t.name}{dims_text(tuple(t.shape) if t.shape is not None else None)}" for t in g.inputs
                    )
                    raise PassPreconditionError(
                        f"'{key}' is neither a symbolic dim of an input nor 'input:axis'; symbols: "
                        f"{', '.join(symbols) or '(none)'}; inputs: {shapes}",
                        field=("dims", key),
                    )
                t = by_name[name]
                rank = len(t.shape or [])
                axis = int(axis_text)
                if not -rank <= axis < rank:
                    raise PassPreconditionError(
                        f"input '{name}' has rank {rank}; axis {axis} does not exist", field=("dims", key)
                    )
                axis %= rank
                d = t.shape[axis]
                if isinstance(d, int) and d > 0:  # -1, 0: some exporters mark a dynamic axis so
                    if d != size:
                        raise PassPreconditionError(
                            f"input '{name}' axis {axis} is already fixed to {d}, not {size}", field=("dims", key)
                        )
                    continue
                axes = symbols.get(d, [(name, axis)]) if d else [(name, axis)]
            for ax in axes:
                if ax in plan and plan[ax] != size:
                    raise PassPreconditionError(
                        f"'{key}' sets {ax[0]}:{ax[1]} to {size} but '{where[ax]}' sets it to {plan[ax]}",
                        field=("dims", key),
                    )
                plan[ax], where[ax] = size, key
        return plan

    def bound_sizes(self) -> Mapping[str, int]:
        return dict(self.params.dims)

    def requires(self, model: ModelIR, plan: dict[Axis, int] | None = None) -> None:
        self.plan_of(model, plan)  # the plan refuses what it cannot plan

    def run(self, model: ModelIR, plan: dict[Axis, int] | None = None) -> PassResult:
        from surgeon.passkit.shapes import dims_text, infer, refresh_shapes

        plan = self.plan_of(model, plan)
        if not plan:
            return PassResult(False, IOContract())
        g = model.graph
        io_before = io_types(g)
        fixed: dict[str, int] = {}
        notes = []
        for t in g.inputs:
            shape = list(t.shape or [])
            for axis, d in enumerate(shape):
                if (t.name, axis) in plan:
                    if isinstance(d, str) and d:
                        fixed[d] = plan[(t.name, axis)]
                    shape[axis] = plan[(t.name, axis)]
            if shape != list(t.shape or []):
                notes.append(f"input '{t.name}': {dims_text(t.shape)} -> {dims_text(shape)}")
                t.shape = shape
        produced = infer(model)  # what the model computes at the fixed sizes, declarations aside
        pins = {}
        for o in g.outputs:
            if o.shape is not None:
                pin = [
                    fixed.get(d, d) if isinstance(d, str) else (None if isinstance(d, int) and d <= 0 else d)
                    for d in o.shape
                ]
                made = produced.get(o.name, (None, None))[1]
                for axis, (d, size) in enumerate(zip(pin, made or [])):
                    # an output that does not follow its symbol (a sliding-window cache returns 7
                    # positions where the symbol says 10): declaring the symbol's size would be a
                    # declaration the checker rejects; the dim is left as inferred
                    if (
                        isinstance(o.shape[axis], str)
                        and o.shape[axis] in fixed
                        and isinstance(size, int)
                        and size != d
                    ):
                        notes.append(
                            f"output '{o.name}' axis {axis} is declared '{o.shape[axis]}' ({d} now), but the model "
                            f"produces {size} there: left as inferred ({size})"
                        )
                        pin[axis] = None
                pins[o.name] = tuple(pin)
        refresh_shapes(model, pins)
        contract = IOContract()
        # sizes only become known: a dim that was static before must stay what it was
        contract.declare_changes(io_before, io_types(g), axes=unknown_axes(io_before))
        return PassResult(True, contract, notes)
