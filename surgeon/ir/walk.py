"""Walking graphs and their subgraphs (If/Loop/Scan bodies), on both sides of the IR: the
``onnx`` protos on disk and the onnx-graphsurgeon graph passes edit. Every walker lives here, and
the pieces every layer repeats: the producer map, the weightless copy shape inference reads, and
fresh names."""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Iterable, Iterator
from typing import TYPE_CHECKING, Any

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
        if node.attribute:  # (most nodes of a big graph have none: no call for them)
            for sub in node_subgraphs(node):
                yield from iter_proto_graphs(sub)


_NAME_TAGS = (0x0A, 0x12, 0x42)
"""Tags (field number and wire type, one byte) of the string fields that name a value: a node's
input (1) and output (2), a ValueInfoProto's name (1), a TensorProto's name (8: a subgraph's
weights; the main graph's are left to the caller)."""
_OP_TYPE = 0x22
"""The tag of NodeProto.op_type (field 4)."""


def mentioned(graph: onnx.GraphProto, names: Iterable[str], ops: Iterable[str]) -> tuple[set[str], set[str]]:
    """:func:`may_mention` of ``names``, and those of ``ops`` that may be some node's op_type, in one
    reading of the graph's bytes."""
    patterns: dict[Any, list[bytes]] = {("name", n): [_string_field(tag, n) for tag in _NAME_TAGS] for n in names}
    patterns.update({("op", op): [_string_field(_OP_TYPE, op)] for op in ops})
    found = _mentioned(graph, patterns)
    return {n for kind, n in found if kind == "name"}, {op for kind, op in found if kind == "op"}


def may_mention(graph: onnx.GraphProto, names: Iterable[str]) -> set[str]:
    """Those of ``names`` that may name a node's input or output or a declared value anywhere in
    ``graph`` (subgraphs included), found in its serialized bytes: a name not returned is named by
    no node and no declaration. Weights' names are not looked at (the caller compares those
    exactly); a weight's bytes may hold a name's bytes by chance, so hits inside them are not
    counted. One serialization, no walk of the nodes: milliseconds on a 100 000-node graph."""
    return _mentioned(graph, {n: [_string_field(tag, n) for tag in _NAME_TAGS] for n in names})


def _mentioned(graph: onnx.GraphProto, patterns: dict[Any, list[bytes]]) -> set[Any]:
    if not patterns:
        return set()
    data = graph.SerializeToString()
    hits = {p: data.count(p) for ps in patterns.values() for p in ps if p in data}
    if hits:
        inside = dict.fromkeys(hits, 0)
        for t in graph.initializer:
            blob = t.SerializeToString()
            for p in hits:
                inside[p] += blob.count(p)
        hits = {p: n for p, n in hits.items() if n > inside[p]}
    return {key for key, ps in patterns.items() if any(p in hits for p in ps)}


def _string_field(tag: int, text: str) -> bytes:
    """``text`` as protobuf writes it in a string field: the tag, the length, the bytes."""
    data = text.encode()
    n, head = len(data), bytearray([tag])
    while True:
        byte, n = n & 0x7F, n >> 7
        head.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(head) + data


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
            if node.attribute:
                yield from _attr_tensors(node)


def iter_model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every data-carrying tensor of the model: its graphs' and its functions' constants."""
    yield from iter_graph_tensors(model.graph)
    for func in model.functions:
        for node in func.node:
            yield from _attr_tensors(node)


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``model`` (as :func:`iter_model_tensors` walks them) whose data is in an
    external file. One tight walk: the question every load and save asks of a 100 000-node graph
    with no external data at all, in a few tens of milliseconds."""
    out: list[onnx.TensorProto] = []
    _external(model.graph, out)
    for func in model.functions:
        for node in func.node:
            out += [t for t in _attr_tensors(node) if t.data_location == _EXTERNAL]
    return out


_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def _external(g: onnx.GraphProto, out: list[onnx.TensorProto]) -> None:
    out += [t for t in g.initializer if t.data_location == _EXTERNAL]
    for sparse in g.sparse_initializer:
        out += [t for t in (sparse.values, sparse.indices) if t.data_location == _EXTERNAL]
    for node in g.node:
        if not node.attribute:
            continue
        for attr in node.attribute:
            kind = attr.type
            if kind == _TENSOR:
                if attr.t.data_location == _EXTERNAL:
                    out.append(attr.t)
            elif kind == _TENSORS:
                out += [t for t in attr.tensors if t.data_location == _EXTERNAL]
            elif kind == _GRAPH:
                _external(attr.g, out)
            elif kind == _GRAPHS:
                for sub in attr.graphs:
                    _external(sub, out)


def _attr_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.type == _TENSOR:
            yield attr.t
        elif attr.type == _TENSORS:
            yield from attr.tensors


def producers(graph: onnx.GraphProto, skip: Container[str] = ()) -> dict[str, onnx.NodeProto]:
    """Each tensor a node of ``graph`` (not of its subgraphs) outputs -> that node, in node order.
    Unnamed outputs (optional ones left out) and names in ``skip`` (initializers, say) are not keys."""
    return {o: n for n in graph.node for o in n.output if o and o not in skip}


def element_count(t: onnx.TensorProto) -> int:
    """How many elements a tensor holds (from its dims; nothing is read)."""
    n = 1
    for d in t.dims:
        n *= d
    return n


def copy_fields(src: Any, dst: Any, skip: Collection[str]) -> None:
    """Copy every set field of the message ``src`` into ``dst`` but those named in ``skip``."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


LIGHT_ELEMENTS = 1024
"""Initializers with more elements than this reach shape inference without their values (they
never decide a shape, and copying them is what makes inference slow on big models)."""


def light_copy(
    proto: onnx.ModelProto,
    max_elements: int,
    *,
    big_as_inputs: bool = False,
    value_info: bool = True,
    output_shapes: bool = True,
) -> onnx.ModelProto:
    """A copy of ``proto`` for shape inference, built without copying the bytes of its initializers
    over ``max_elements`` elements and without touching ``proto``. Those keep their name, type and
    dims: as initializers marked external (one already external is copied as it is), or with
    ``big_as_inputs`` as typed graph inputs (an initializer that is a graph input already keeps
    that input). ``value_info=False`` leaves the graph's value_info out (stale entries do not feed
    back into inference); ``output_shapes=False`` drops the declared shapes of tensor outputs (so
    inference computes them instead of trusting them)."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    copy_fields(proto, out, skip=("graph",))
    copy_fields(proto.graph, out.graph, skip=("initializer",) if value_info else ("initializer", "value_info"))
    inputs = {vi.name for vi in proto.graph.input}
    for t in proto.graph.initializer:
        if element_count(t) <= max_elements or (t.data_location == onnx.TensorProto.EXTERNAL and not big_as_inputs):
            out.graph.initializer.add().CopyFrom(t)
        elif big_as_inputs:
            if t.name not in inputs:
                out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            light = out.graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
            light.data_location = onnx.TensorProto.EXTERNAL
            light.external_data.add(key="location", value="<not read>")
    if not output_shapes:
        for o in out.graph.output:
            if o.type.HasField("tensor_type"):
                o.type.tensor_type.ClearField("shape")
    return out


def _numbered(base: str, i: int) -> str:
    return f"{base}_{i}"


def unused_name(
    base: str,
    taken: Container[str],
    suffix: Callable[[str, int], str] = _numbered,
    key: Callable[[str], str] | None = None,
) -> str:
    """The first of ``base``, ``suffix(base, 1)``, ``suffix(base, 2)``... (default ``base_1``,
    ``base_2``...) that is not in ``taken``, names compared as ``key(name)`` (``str.lower``: case
    insensitively). The caller records it where it must stay taken."""
    name, i = base, 0
    while (key(name) if key else name) in taken:
        i += 1
        name = suffix(base, i)
    return name


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
