"""Remove dead nodes and unused tensors, then sort the graph topologically."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from surgeon.errors import PassError
from surgeon.ir.walk import signature
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import names
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    from surgeon.ir.adapter import ModelIR


@register_pass("cleanup")
class Cleanup(Pass):
    """Remove nodes that no output depends on and unused initializers; sort nodes topologically.

    Contract: same interface (minus unused inputs when ``remove_unused_inputs``), outputs exact.
    """

    class Params(PassParams):
        remove_unused_inputs: bool = Field(
            False, description="also remove graph inputs that no node reads (changes the interface)"
        )
        toposort: bool = Field(True, description="sort nodes topologically")
        remove_initializer_inputs: bool = Field(
            False,
            description="stop listing initializers as graph inputs (old exporters' habit): they become plain weights runtimes can fold; an IR 3 model, which must list them, is raised to IR 4",
        )

    params: Params

    def run(self, model: ModelIR) -> PassResult:
        g = model.graph
        before = signature(g)
        inputs_before = names(g.inputs)
        n_nodes = len(g.nodes)
        g.cleanup(remove_unused_graph_inputs=self.params.remove_unused_inputs, recurse_subgraphs=True)
        if self.params.toposort:
            try:
                g.toposort(recurse_subgraphs=True)
            except Exception as exc:  # onnx-graphsurgeon reports cycles as a plain exception
                raise PassError(f"cannot sort the graph: {str(exc).splitlines()[0]}") from None
        removed = [n for n in inputs_before if n not in names(g.inputs)]
        notes_ir = ""
        if self.params.remove_initializer_inputs and model.default_inputs:
            dropped = sorted(model.default_inputs)
            model.default_inputs = {}
            if model.shell.ir_version < 4:
                notes_ir = f"ir_version {model.shell.ir_version} -> 4 (IR 3 lists every initializer as an input)"
                model.shell.ir_version = 4
            removed += dropped
        orphans = [t.name for t in model.orphans]
        model.orphans = []
        contract = IOContract(removed_inputs=set(removed))
        notes: list[str] = []
        if orphans:
            notes.append(
                f"removed {len(orphans)} unused initializer(s): {', '.join(orphans[:10])}{' ...' if len(orphans) > 10 else ''}"
            )
        if len(g.nodes) != n_nodes:
            notes.append(f"removed {n_nodes - len(g.nodes)} dead node(s)")
        if removed:
            notes.append(f"removed input(s): {', '.join(removed)}")
        if notes_ir:
            notes.append(notes_ir)
        return PassResult(signature(g) != before or bool(orphans) or bool(removed), contract, notes)
