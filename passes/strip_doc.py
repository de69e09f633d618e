"""Remove doc strings (and optionally metadata_props) from the model, graphs, nodes and tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from surgeon.ir.walk import iter_graphs, iter_proto_graphs
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass

if TYPE_CHECKING:
    from surgeon.ir.adapter import ModelIR


@register_pass("strip-doc")
class StripDoc(Pass):
    """Remove doc strings from the model, its graphs, functions, nodes and graph inputs/outputs.

    With ``metadata``, node, value and graph ``metadata_props`` go too (model-level
    metadata_props are left to set-metadata; surgeon's provenance is written after the passes).
    Node doc strings and metadata live in ModelIR.node_meta and are cleared there; the graph-level
    ones the export carries from the source are turned off with ModelIR.source_docs/source_metadata.

    Weights: reads no weights.

    Contract: same interface, outputs exact.
    """

    edits_protobuf = True

    class Params(PassParams):
        metadata: bool = Field(
            False, description="also remove metadata_props of nodes, graph inputs/outputs/values and graphs"
        )

    params: Params

    def run(self, model: ModelIR) -> PassResult:
        if not model.built:
            return self._run_proto(model)
        changed = _has_docs(model, self.params.metadata)  # (no export to compare: a big graph's costs seconds)
        shell = model.shell
        shell.ClearField("doc_string")
        for func in shell.functions:
            func.ClearField("doc_string")
            for node in func.node:
                node.ClearField("doc_string")
                if self.params.metadata and hasattr(node, "metadata_props"):
                    del node.metadata_props[:]
        for g in iter_graphs(model.graph):
            g.doc_string = ""
        for key, (node, meta) in list(model.node_meta.items()):
            stripped = (
                "",
                [] if self.params.metadata else meta[1],
                *meta[2:],
            )  # doc, props, what else the core carries
            model.node_meta[key] = (node, stripped)  # type: ignore[assignment]
        model.source_docs = False
        if self.params.metadata:
            model.source_metadata = False
        return PassResult(
            changed,
            notes=["doc strings removed" + (" and metadata_props" if self.params.metadata else "")] if changed else [],
        )

    def _run_proto(self, model: ModelIR) -> PassResult:
        """The same, on the protobuf of a model whose graph was never built (no import)."""
        assert model.proto_graph is not None
        meta = self.params.metadata
        changed = _strip(model.shell, meta, props=False)
        for func in model.shell.functions:
            changed |= _strip(func, meta, props=False)
            for node in func.node:
                changed |= _strip(node, meta)
        for g in iter_proto_graphs(model.proto_graph):
            changed |= _strip(g, meta)
            for item in [*g.node, *g.input, *g.output, *g.value_info]:
                changed |= _strip(item, meta)
        model.source_docs = False
        if meta:
            model.source_metadata = False
        what = "doc strings removed" + (" and metadata_props" if meta else "")
        return PassResult(changed, notes=[what] if changed else [])


def _strip(msg: Any, metadata: bool, props: bool = True) -> bool:
    """Clear ``msg``'s doc string (and, with ``metadata`` and ``props``, its metadata_props); whether
    anything was there."""
    had = bool(msg.doc_string)
    if had:
        msg.ClearField("doc_string")
    if metadata and props and len(getattr(msg, "metadata_props", ())):
        del msg.metadata_props[:]
        had = True
    return had


def _has_docs(model: ModelIR, metadata: bool) -> bool:
    """Whether the built model carries anything the pass removes: doc strings of the model, its
    functions and their nodes, its graphs and nodes, and the source's value docs (and, with
    ``metadata``, metadata_props) that the export would restore for tensors still present."""
    shell = model.shell
    if shell.doc_string or any(f.doc_string or any(n.doc_string for n in f.node) for f in shell.functions):
        return True
    if metadata and any(len(getattr(n, "metadata_props", [])) for f in shell.functions for n in f.node):
        return True
    if any(g.doc_string for g in iter_graphs(model.graph)):
        return True
    for _node, meta in model.node_meta.values():
        if meta[0] or (metadata and meta[1]):
            return True
    source = model.source.proto.graph if model.source is not None else None
    if source is None:
        return False
    if model.source_docs and source.doc_string:
        return True
    if metadata and model.source_metadata and len(getattr(source, "metadata_props", [])):
        return True
    present = set(model.graph.tensors())
    for vi in [*source.input, *source.output, *source.value_info]:
        if vi.name not in present:
            continue
        if model.source_docs and vi.doc_string:
            return True
        if metadata and model.source_metadata and len(getattr(vi, "metadata_props", [])):
            return True
    return False
