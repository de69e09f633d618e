"""Small helpers over the onnx-graphsurgeon graph that several passes share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from surgeon.errors import PassPreconditionError

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs


def names(tensors: Iterable[gs.Tensor]) -> list[str]:
    return [t.name for t in tensors]


def listing(items: Iterable[str]) -> str:
    items = list(items)
    return ", ".join(items) if items else "(none)"


def require_names(wanted: Iterable[str], existing: list[str], kind: str, field: str) -> None:
    """Raise for the first name in ``wanted`` that is not in ``existing``, listing what exists."""
    from surgeon.pass_api import suggest

    for name in wanted:
        if name not in existing:
            raise PassPreconditionError(
                f"unknown {kind} '{name}'{suggest(name, existing)}; graph {kind}s are: {listing(existing)}",
                field=(field, name),
            )


def iter_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    import onnx_graphsurgeon as gs

    yield graph
    for node in graph.nodes:
        for value in node.attrs.values():
            subs = value if isinstance(value, list) else [value]
            for sub in subs:
                if isinstance(sub, gs.Graph):
                    yield from iter_graphs(sub)


def all_tensor_names(graph: gs.Graph) -> set[str]:
    out: set[str] = set()
    for g in iter_graphs(graph):
        out.update(g.tensors().keys())
    return out


def signature(graph: gs.Graph) -> tuple[object, ...]:
    """What a pass could change at graph level: node order and identity, I/O, tensor names."""
    return (
        tuple(id(n) for n in graph.nodes),
        tuple(t.name for t in graph.inputs),
        tuple(t.name for t in graph.outputs),
        tuple(sorted(graph.tensors().keys())),
    )
