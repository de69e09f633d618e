"""Bypass pass-through nodes: Identity, inference Dropout, no-op Cast and Reshape."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from surgeon.errors import PassPreconditionError
from surgeon.ir.walk import iter_graphs
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.infer import TypeMap, tensor_types
from surgeon.passkit.ops import require_names

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR

Bypassable = Literal["Identity", "Dropout", "Cast", "Reshape"]


def _default_ops() -> list[Bypassable]:
    return ["Identity", "Dropout"]


@register_pass("remove-nodes")
class RemoveNodes(Pass):
    """Remove nodes that pass their input through unchanged, wiring consumers to the input.

    Removable: Identity; Dropout in inference (``training_mode`` absent or constant false, mask
    output unused); Cast to the type it already has; Reshape to the (static) shape it already has.
    Selected by op type (``ops``: only the nodes that really are no-ops) or by node name
    (``names``: each must be a no-op, else the pass refuses). Graph outputs keep their names:
    when a removed node produces one, the tensor before it takes the output's name; a node
    between a graph input (or a constant) and a graph output is kept and reported.

    Weights: reads no weights (only small constant shape / flag inputs).

    Contract: same interface, outputs exact.
    """

    class Params(PassParams):
        ops: list[Bypassable] = Field(
            default_factory=_default_ops, description="op types whose no-op nodes are removed"
        )
        names: list[str] = Field(default_factory=list, description="nodes to remove by name (each must be a no-op)")

    params: Params

    def requires(self, model: ModelIR) -> None:
        nodes = {n.name: n for g in iter_graphs(model.graph) for n in g.nodes if n.name}
        require_names(self.params.names, sorted(nodes), "node", "names")
        types = tensor_types(model)
        for name in self.params.names:
            why = _not_noop(model, nodes[name], types)
            if why:
                raise PassPreconditionError(
                    f"node '{name}' ({nodes[name].op}) cannot be removed: {why}", field=("names", name)
                )

    def run(self, model: ModelIR) -> PassResult:
        wanted = set(self.params.names)
        notes: list[str] = []
        types = tensor_types(model) if {"Cast", "Reshape"} & set(self.params.ops) or wanted else {}
        for g in iter_graphs(model.graph):
            for node in list(g.nodes):
                if node.name not in wanted and (node.op not in self.params.ops or _not_noop(model, node, types)):
                    continue
                label = f"{node.op} '{node.name}'" if node.name else node.op
                io = f"{node.inputs[0].name} -> {node.outputs[0].name}"
                if _bypass(model.graph, g, node):
                    notes.append(f"removed {label} ({io})")
                else:
                    notes.append(
                        f"kept {label}: it connects a graph input or constant straight to graph "
                        f"output '{node.outputs[0].name}'"
                    )
        changed = any(n.startswith("removed") for n in notes)
        return PassResult(changed, notes=notes)


def _not_noop(model: ModelIR, node: gs.Node, types: TypeMap) -> str:
    """Why ``node`` is not a pass-through ('' when it is)."""
    import onnx_graphsurgeon as gs

    ins = [t for t in node.inputs if not t.is_empty()]
    outs = node.outputs
    if node.op not in ("Identity", "Dropout", "Cast", "Reshape"):
        return "only Identity, Dropout and no-op Cast / Reshape nodes pass their input through"
    if not ins or not outs:
        return "it has no input or output"
    graph_outputs = {t.name for t in model.graph.outputs}
    if any(o.outputs or o.name in graph_outputs for o in outs[1:]):
        return "its second output is used"
    x = ins[0]
    dtype, shape = (
        (x.dtype, x.shape) if x.dtype is not None and x.shape is not None else types.get(x.name, (x.dtype, x.shape))
    )
    if node.op == "Dropout" and len(node.inputs) > 2 and not node.inputs[2].is_empty():
        mode = node.inputs[2]
        if not isinstance(mode, gs.Constant) or bool(model.values(mode).any()):
            return "training_mode is not a constant false"
    if node.op == "Cast":
        from onnx import helper

        to = node.attrs.get("to")
        if dtype is None or to is None or helper.tensor_dtype_to_np_dtype(int(to)) != dtype:
            return f"it converts {dtype} to another type"
    if node.op == "Reshape":
        target_t = node.inputs[1] if len(node.inputs) > 1 else None
        if shape is None or not all(isinstance(d, int) for d in shape) or not isinstance(target_t, gs.Constant):
            return "its input shape or target shape is not static"
        target = [int(v) for v in model.values(target_t).ravel()]
        if target != [int(d) for d in shape]:
            return f"it changes the shape {list(shape)} to {target}"
    return ""


def _bypass(root: gs.Graph, g: gs.Graph, node: gs.Node) -> bool:
    """Remove ``node``, wiring its output's users to its input. False when it must stay."""
    x = node.inputs[0]
    y = node.outputs[0]
    is_output = any(t is y for t in g.outputs)
    if is_output:
        import onnx_graphsurgeon as gs

        if (
            isinstance(x, gs.Constant)
            or not x.inputs
            or any(t is x for t in g.inputs)
            or any(t is x for t in g.outputs)
        ):
            return False
        producer = x.inputs[0]
        node.inputs.clear()
        node.outputs.clear()
        producer.outputs[producer.outputs.index(x)] = y
        _replace_uses(root, x, y)
    else:
        node.inputs.clear()
        node.outputs.clear()
        _replace_uses(root, y, x)
    g.nodes.remove(node)
    return True


def _replace_uses(root: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    for g in iter_graphs(root):
        for n in g.nodes:
            for i, t in enumerate(n.inputs):
                if t is old:
                    n.inputs[i] = new
        for i, t in enumerate(g.outputs):
            if t is old and g is not root:
                g.outputs[i] = new
