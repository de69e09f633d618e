"""Expose intermediate tensors as graph outputs."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from surgeon.errors import PassPreconditionError
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import describe, require_tensor, short_listing, typed
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR


@register_pass("add-outputs")
class AddOutputs(Pass):
    """Expose intermediate tensors as extra graph outputs (for debugging, or to compare layers across runtimes).

    Tensors are chosen by name, by the op type of the node that computes them, or by a regular
    expression on their name. Each new output gets the dtype and shape the graph declares or ONNX
    shape inference finds. Tensors that already are outputs are left as they are.
    Contract: the original outputs are unchanged; the new ones must be produced.
    """

    class Params(PassParams):
        tensors: list[str] = Field(default_factory=list, description="names of tensors to expose, in this order")
        op_types: list[str] = Field(
            default_factory=list,
            description="expose every output of the nodes of these op types (e.g. Conv, Relu), in graph order",
        )
        pattern: str | None = Field(
            None, description="expose every computed tensor whose whole name matches this regular expression"
        )

        @model_validator(mode="after")
        def _needs_a_selection(self) -> AddOutputs.Params:
            if not (self.tensors or self.op_types or self.pattern):
                raise ValueError("name what to expose: tensors, op_types or pattern")
            return self

    params: Params

    def requires(self, model: ModelIR) -> None:
        import onnx_graphsurgeon as gs

        g = model.graph
        for name in self.params.tensors:
            t = require_tensor(g, name, ("tensors", name))
            if isinstance(t, gs.Constant):
                raise PassPreconditionError(
                    f"'{name}' is a constant (initializer), not a computed tensor; it cannot be an output",
                    field=("tensors", name),
                )
        present = sorted({n.op for n in g.nodes})
        for op in self.params.op_types:
            if op not in present:
                raise PassPreconditionError(
                    f"no node of op type '{op}' in the graph; op types present: {short_listing(present)}",
                    field=("op_types", op),
                )
        if self.params.pattern is not None:
            try:
                rx = re.compile(self.params.pattern)
            except re.error as exc:
                raise PassPreconditionError(
                    f"invalid pattern '{self.params.pattern}': {exc}", field=("pattern",)
                ) from None
            if not any(rx.fullmatch(t.name) for t in _computed(g)):
                computed = [t.name for t in _computed(g)]
                raise PassPreconditionError(
                    f"pattern '{self.params.pattern}' matches no computed tensor; they are: {short_listing(computed)}",
                    field=("pattern",),
                )

    def _chosen(self, g: gs.Graph) -> list[str]:
        chosen = list(self.params.tensors)
        ops = set(self.params.op_types)
        chosen += [t.name for n in g.nodes if n.op in ops for t in n.outputs if t.name]
        if self.params.pattern is not None:
            rx = re.compile(self.params.pattern)
            chosen += [t.name for t in _computed(g) if rx.fullmatch(t.name)]
        outputs = {t.name for t in g.outputs}
        return [n for n in dict.fromkeys(chosen) if n not in outputs]

    def run(self, model: ModelIR) -> PassResult:
        g = model.graph
        new = self._chosen(g)
        if not new:
            return PassResult(False, notes=["every chosen tensor already is a graph output"])
        types = typed(model, new, "a graph output")
        tensors = g.tensors()
        for name in new:
            t = tensors[name]
            t.dtype, shape = types[name]
            if shape is not None:
                t.shape = shape
            g.outputs.append(t)
        notes = [f"output {n} ({describe(*types[n])})" for n in new]
        return PassResult(True, IOContract(added_outputs=set(new)), notes=notes)


def _computed(g: gs.Graph) -> list[gs.Tensor]:
    """Tensors computed by main-graph nodes, in graph order (optional empty outputs left out)."""
    return [t for n in g.nodes for t in n.outputs if t.name]
