"""Extract the subgraph between named input and output tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from surgeon.errors import PassPreconditionError
from surgeon.ir.walk import iter_graphs, signature
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import listing, require_tensor, snapshot, typed, unique_name
from surgeon.verify.contract import IOContract, io_types

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR


@register_pass("extract")
class Extract(Pass):
    """Keep only the subgraph between named input and output tensors (like onnx.utils.extract_model, on the IR).

    Inputs and outputs may be graph inputs/outputs or intermediate tensors; new ones get the
    dtype and shape the graph declares or shape inference finds. Nodes and initializers outside
    the subgraph are dropped; weights are never read and external data stays external.
    Contract: outputs that were outputs keep their values; new outputs equal the intermediate
    tensors of the model before the step, fed with the intermediate values it computes.
    """

    class Params(PassParams):
        inputs: list[str] = Field(min_length=1, description="tensors that become the graph inputs, in this order")
        outputs: list[str] = Field(min_length=1, description="tensors that become the graph outputs, in this order")

        @model_validator(mode="after")
        def _no_duplicates(self) -> Extract.Params:
            for kind, names in (("inputs", self.inputs), ("outputs", self.outputs)):
                dup = sorted({n for n in names if names.count(n) > 1})
                if dup:
                    raise ValueError(f"{kind} names {', '.join(dup)} more than once")
            return self

    params: Params

    def requires(self, model: ModelIR) -> None:
        import onnx_graphsurgeon as gs

        g = model.graph
        for kind in ("inputs", "outputs"):
            for name in getattr(self.params, kind):
                t = require_tensor(g, name, (kind, name))
                if isinstance(t, gs.Constant):
                    raise PassPreconditionError(
                        f"'{name}' is a constant (initializer); {kind} must be computed tensors or graph inputs",
                        field=(kind, name),
                    )
        missing = _unreached(g, self.params.outputs, set(self.params.inputs))
        if missing:
            name, out = next(iter(missing.items()))
            raise PassPreconditionError(
                f"output '{out}' depends on {listing(missing)}, which "
                f"{'is' if len(missing) == 1 else 'are'} not among the inputs "
                f"({listing(self.params.inputs)}); add {'it' if len(missing) == 1 else 'them'} to inputs",
                field=("outputs", out),
            )

    def run(self, model: ModelIR) -> PassResult:
        g = model.graph
        before = signature(g)
        old_in = [t.name for t in g.inputs]
        old_out = [t.name for t in g.outputs]
        ins, outs = self.params.inputs, self.params.outputs
        inner = [n for n in dict.fromkeys([*ins, *outs]) if n not in old_in and (n in ins or n not in old_out)]
        contract = IOContract(
            removed_inputs={n for n in old_in if n not in ins},
            removed_outputs={n for n in old_out if n not in outs},
            intermediates=snapshot(model, inner) if inner else None,
            reordered=True,  # the inputs and outputs are those listed, in the order listed
        )
        io_before = io_types(g)
        types = typed(model, [*ins, *outs], "a graph input or output")
        tensors = g.tensors()
        for name in ins:
            _cut(g, tensors[name])
        for name, (dtype, shape) in types.items():
            tensors[name].dtype = dtype
            if shape is not None:
                tensors[name].shape = shape
        g.inputs = [tensors[n] for n in ins]
        g.outputs = [tensors[n] for n in outs]
        n_nodes = len(g.nodes)
        g.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True)
        for name in ins:
            if name not in old_in:
                contract.feed_transforms[name] = _value_of(name)
        for name in outs:
            if name not in old_out:
                contract.expectations[name] = _input_value(name) if name in old_in else _output_value(name)
        contract.declare_changes(io_before, io_types(g))
        notes = _notes(old_in, old_out, ins, outs, n_nodes - len(g.nodes))
        return PassResult(signature(g) != before, contract, notes)


def _unreached(g: gs.Graph, outputs: list[str], inputs: set[str]) -> dict[str, str]:
    """Graph inputs the outputs need that are not in ``inputs``: name -> an output that needs it."""
    import onnx_graphsurgeon as gs

    tensors = g.tensors()
    missing: dict[str, str] = {}
    for out in outputs:
        stack, seen = [tensors[out]], set()
        while stack:
            t = stack.pop()
            if t.name in seen or t.name in inputs or isinstance(t, gs.Constant):
                continue
            seen.add(t.name)
            if not t.inputs:
                if t.name:
                    missing.setdefault(t.name, out)
                continue
            for node in t.inputs:
                stack.extend(node.inputs)
                stack.extend(_outer_refs(node, tensors))
    return missing


def _outer_refs(node: gs.Node, tensors: Mapping[str, gs.Tensor]) -> list[gs.Tensor]:
    """Main-graph tensors a node's subgraphs (If/Loop/Scan bodies) read from the outer scope."""
    from surgeon.ir.walk import gs_subgraphs

    refs = []
    for sub in gs_subgraphs(node):
        for graph in iter_graphs(sub):
            for inner in graph.nodes:
                refs += [t for t in inner.inputs if tensors.get(t.name) is t]
    return refs


def _cut(g: gs.Graph, tensor: gs.Tensor) -> None:
    """Detach ``tensor`` from the node computing it (that node's slot gets a fresh, unused tensor)."""
    import onnx_graphsurgeon as gs

    for node in list(tensor.inputs):
        idx = node.outputs.index(tensor)
        node.outputs[idx] = gs.Variable(unique_name(g, f"{tensor.name}_detached"), tensor.dtype, tensor.shape)


Transform = Callable[[Mapping[str, "np.ndarray"]], "np.ndarray"]
Expectation = Callable[[Mapping[str, "np.ndarray"], Mapping[str, "np.ndarray"]], "np.ndarray"]


def _value_of(name: str) -> Transform:
    def fn(feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return feed[name]

    return fn


def _input_value(name: str) -> Expectation:
    def fn(outputs: Mapping[str, np.ndarray], feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return feed[name]

    return fn


def _output_value(name: str) -> Expectation:
    def fn(outputs: Mapping[str, np.ndarray], feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return outputs[name]

    return fn


def _notes(old_in: list[str], old_out: list[str], ins: list[str], outs: list[str], pruned: int) -> list[str]:
    notes = [f"input {n} (was an intermediate tensor)" for n in ins if n not in old_in]
    notes += [f"output {n} (was an intermediate tensor)" for n in outs if n not in old_out]
    notes += [f"removed input {n}" for n in old_in if n not in ins]
    notes += [f"removed output {n}" for n in old_out if n not in outs]
    if pruned:
        notes.append(f"removed {pruned} node(s) outside the subgraph")
    return notes
