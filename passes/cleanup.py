"""Remove dead nodes and unused tensors, then sort the graph topologically."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from surgeon.errors import PassError
from surgeon.ir.walk import signature
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import names
from surgeon.passkit.proto import clean_proto
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    from surgeon.ir.adapter import ModelIR


@register_pass("cleanup")
class Cleanup(Pass):
    """Remove nodes that no output depends on and unused initializers; sort nodes topologically.

    Contract: same interface (minus unused inputs when ``remove_unused_inputs``), outputs exact.
    """

    edits_protobuf = True

    class Params(PassParams):
        remove_unused_inputs: bool = Field(
            False, description="also remove graph inputs that no node reads (changes the interface)"
        )
        toposort: bool = Field(True, description="sort nodes topologically")
        remove_initializer_inputs: bool = Field(
            False,
            description=(
                "stop listing initializers as graph inputs (old exporters' habit): they become plain weights "
                "runtimes can fold; an IR 3 model, which must list them, is raised to IR 4"
            ),
        )

    params: Params

    def run(self, model: ModelIR) -> PassResult:
        if not model.built:
            return self._run_proto(model)
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
                f"removed {len(orphans)} unused initializer(s): "
                f"{', '.join(orphans[:10])}{' ...' if len(orphans) > 10 else ''}"
            )
        if len(g.nodes) != n_nodes:
            notes.append(f"removed {n_nodes - len(g.nodes)} dead node(s)")
        if removed:
            notes.append(f"removed input(s): {', '.join(removed)}")
        if notes_ir:
            notes.append(notes_ir)
        return PassResult(signature(g) != before or bool(orphans) or bool(removed), contract, notes)

    def _run_proto(self, model: ModelIR) -> PassResult:
        """The same on the protobuf of a model whose graph was never built (no import, no export)."""
        g = model.proto_graph
        assert g is not None
        before = g.SerializeToString(deterministic=True)
        n_nodes = len(g.node)
        inits = {t.name for t in g.initializer}
        caller_inputs = [vi.name for vi in g.input if vi.name not in inits]
        defaults = [vi.name for vi in g.input if vi.name in inits]
        init_names = [t.name for t in g.initializer]
        clean_proto(g, self.params.remove_unused_inputs, self.params.toposort, top=True)
        removed = [n for n in caller_inputs if n not in {vi.name for vi in g.input}]
        notes_ir = ""
        if self.params.remove_initializer_inputs and defaults:
            kept = [vi for vi in g.input if vi.name not in set(defaults)]
            del g.input[:]
            g.input.extend(kept)
            if model.shell.ir_version < 4:
                notes_ir = f"ir_version {model.shell.ir_version} -> 4 (IR 3 lists every initializer as an input)"
                model.shell.ir_version = 4
            removed += sorted(defaults)
        notes: list[str] = []
        left = {t.name for t in g.initializer}
        dropped = [n for n in init_names if n not in left]
        if dropped:
            more = " ..." if len(dropped) > 10 else ""
            notes.append(f"removed {len(dropped)} unused initializer(s): {', '.join(dropped[:10])}{more}")
        if len(g.node) != n_nodes:
            notes.append(f"removed {n_nodes - len(g.node)} dead node(s)")
        if removed:
            notes.append(f"removed input(s): {', '.join(removed)}")
        if notes_ir:
            notes.append(notes_ir)
        changed = bool(removed) or g.SerializeToString(deterministic=True) != before
        return PassResult(changed, IOContract(removed_inputs=set(removed)), notes)
