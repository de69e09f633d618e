"""Remove graph outputs, and the nodes only they needed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from surgeon.errors import PassPreconditionError, suggest
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import listing
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    from surgeon.ir.adapter import ModelIR


@register_pass("remove-outputs")
class RemoveOutputs(Pass):
    """Remove graph outputs; the nodes and initializers that only they needed go too (prune).

    Graph inputs stay (use cleanup with remove_unused_inputs to drop those no longer read).
    Contract: the outputs that stay are unchanged; the removed ones are no longer compared.
    """

    edits_protobuf = True

    class Params(PassParams):
        outputs: list[str] = Field(min_length=1, description="names of the graph outputs to remove")
        missing_ok: bool = Field(
            False,
            description="skip names that are not graph outputs (so the step can be re-applied) instead of failing",
        )
        prune: bool = Field(True, description="remove nodes and initializers no output depends on any more")

    params: Params

    def requires(self, model: ModelIR) -> None:
        outs = _output_names(model)
        if not self.params.missing_ok:
            for name in self.params.outputs:
                if name not in outs:
                    raise PassPreconditionError(
                        f"unknown output '{name}'{suggest(name, outs)}; graph outputs are: {listing(outs)}",
                        field=("outputs", name),
                    )
        remaining = [n for n in outs if n not in self.params.outputs]
        if not remaining:
            raise PassPreconditionError(
                f"removing {listing(self.params.outputs)} would leave the model without outputs; "
                f"graph outputs are: {listing(outs)}",
                field=("outputs", self.params.outputs[0]),
            )

    def run(self, model: ModelIR) -> PassResult:
        if not model.built:
            return self._run_proto(model)
        g = model.graph
        wanted = set(self.params.outputs)
        removed = [t.name for t in g.outputs if t.name in wanted]
        if not removed:
            return PassResult(False, notes=[f"no output named {listing(self.params.outputs)}; nothing removed"])
        g.outputs = [t for t in g.outputs if t.name not in wanted]
        notes = [f"removed output {n}" for n in dict.fromkeys(removed)]
        if self.params.prune:
            n_nodes = len(g.nodes)
            n_consts = _n_constants(g)
            g.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True)
            if len(g.nodes) != n_nodes or _n_constants(g) != n_consts:
                notes.append(
                    f"pruned {n_nodes - len(g.nodes)} node(s) and {n_consts - _n_constants(g)} "
                    "initializer(s) no output needs"
                )
        return PassResult(True, IOContract(removed_outputs=set(removed)), notes=notes)

    def _run_proto(self, model: ModelIR) -> PassResult:
        """The same on the protobuf of a model whose graph was never built: the outputs go, and with
        ``prune`` what only they needed (cleanup's protobuf walk, without sorting)."""
        from surgeon.passkit.proto import clean_proto

        g = model.proto_graph
        assert g is not None
        wanted = set(self.params.outputs)
        removed = [vi.name for vi in g.output if vi.name in wanted]
        if not removed:
            return PassResult(False, notes=[f"no output named {listing(self.params.outputs)}; nothing removed"])
        kept = [type(vi)() for vi in g.output if vi.name not in wanted]
        for c, vi in zip(kept, [vi for vi in g.output if vi.name not in wanted]):
            c.CopyFrom(vi)
        del g.output[:]
        g.output.extend(kept)
        notes = [f"removed output {n}" for n in dict.fromkeys(removed)]
        if self.params.prune:
            n_nodes, n_inits = len(g.node), len(g.initializer)
            clean_proto(g, remove_inputs=False, toposort=False, top=True)
            if len(g.node) != n_nodes or len(g.initializer) != n_inits:
                notes.append(
                    f"pruned {n_nodes - len(g.node)} node(s) and {n_inits - len(g.initializer)} "
                    "initializer(s) no output needs"
                )
        return PassResult(True, IOContract(removed_outputs=set(removed)), notes=notes)


def _output_names(model: ModelIR) -> list[str]:
    if model.built:
        return [t.name for t in model.graph.outputs]
    assert model.proto_graph is not None
    return [vi.name for vi in model.proto_graph.output]


def _n_constants(g: object) -> int:
    import onnx_graphsurgeon as gs

    assert isinstance(g, gs.Graph)
    return sum(isinstance(t, gs.Constant) for t in g.tensors().values())
