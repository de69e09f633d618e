"""Walking graphs and their subgraphs (If/Loop/Scan bodies), on both sides of the IR: the
``onnx`` protos on disk and the onnx-graphsurgeon graph passes edit. Every walker lives here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    import onnx_graphsurgeon as gs

_GRAPH, _GRAPHS, _TENSOR, _TENSORS = 5, 10, 4, 9  # AttributeProto.AttributeType


# --- protos -------------------------------------------------------------------------------------


def node_subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node's attributes hold (If branches, Loop/Scan bodies)."""
    out: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == _GRAPH:
            out.append(attr.g)
        elif attr.type == _GRAPHS:
            out.extend(attr.graphs)
    return out


def iter_proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph, depth first."""
    yield graph
    for node in graph.node:
        for sub in node_subgraphs(node):
            yield from iter_proto_graphs(sub)


def all_value_infos(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Inputs, outputs and value_info of the graph and every subgraph."""
    out: list[onnx.ValueInfoProto] = []
    for g in iter_proto_graphs(graph):
        out += list(g.input) + list(g.output) + list(g.value_info)
    return out


def iter_graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that carries data in a graph and its subgraphs: initializers (dense and the
    values/indices of sparse ones) and tensor attributes (Constant ``value``, If/Loop bodies...)."""
    for g in iter_proto_graphs(graph):
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in g.node:
            yield from _attr_tensors(node)


def iter_model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every data-carrying tensor of the model: its graphs' and its functions' constants."""
    yield from iter_graph_tensors(model.graph)
    for func in model.functions:
        for node in func.node:
            yield from _attr_tensors(node)


def _attr_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.type == _TENSOR:
            yield attr.t
        elif attr.type == _TENSORS:
            yield from attr.tensors


# --- onnx-graphsurgeon ----------------------------------------------------------------------------


def gs_subgraphs(node: gs.Node) -> list[gs.Graph]:
    """The graphs a node's attributes hold."""
    import onnx_graphsurgeon as gs

    out: list[gs.Graph] = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, gs.Graph))
    return out


def iter_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.nodes:
        for sub in gs_subgraphs(node):
            yield from iter_graphs(sub)


def all_tensor_names(graph: gs.Graph) -> set[str]:
    out: set[str] = set()
    for g in iter_graphs(graph):
        out.update(g.tensors().keys())
    return out


def wiring(graph: gs.Graph) -> tuple[object, ...]:
    """Which tensor objects every node of every graph reads and writes: a rewrite that adds, removes
    or rewires a node, or replaces a tensor, changes it (an in-place value change does not)."""
    return tuple(
        (id(n), tuple(map(id, n.inputs)), tuple(map(id, n.outputs))) for g in iter_graphs(graph) for n in g.nodes
    )


def signature(graph: gs.Graph) -> tuple[object, ...]:
    """What a pass could change at graph level: node order and identity, I/O, tensor names."""
    return (
        tuple(id(n) for n in graph.nodes),
        tuple(t.name for t in graph.inputs),
        tuple(t.name for t in graph.outputs),
        tuple(sorted(graph.tensors().keys())),
    )
