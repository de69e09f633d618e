"""Remove doc strings (and optionally metadata_props) from the model, graphs, nodes and tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from surgeon.contract import IOContract
from surgeon.graph import iter_graphs
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass

if TYPE_CHECKING:
    from surgeon.model import Model, ModelIR


@register_pass("strip-doc")
class StripDoc(Pass):
    """Remove doc strings from the model, its graphs, functions, nodes and graph inputs/outputs.

    With ``metadata``, node, value and graph ``metadata_props`` go too (model-level
    metadata_props are left to set-metadata; surgeon's provenance is written after the passes).
    Node doc strings and metadata live in ModelIR.node_meta and are cleared there; the graph-level
    ones the export copies from the source are cleared in a weightless view of the source's graph.

    Weights: reads no weights.

    Contract: same interface, outputs exact.
    """

    class Params(PassParams):
        metadata: bool = Field(False, description="also remove metadata_props of nodes, graph inputs/outputs/values and graphs")

    params: Params

    def run(self, model: ModelIR) -> PassResult:
        before = model.to_proto().SerializeToString()
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
            stripped = ("", [] if self.params.metadata else meta[1], *meta[2:])  # doc, props, what else the core carries
            model.node_meta[key] = (node, stripped)  # type: ignore[assignment]
        if model.source is not None:
            model.source = _doc_view(model.source, self.params.metadata)
        changed = model.to_proto().SerializeToString() != before
        return PassResult(changed, IOContract(notes=["doc strings removed" + (" and metadata_props" if self.params.metadata else "")] if changed else []))


def _doc_view(source: Model, metadata: bool) -> Model:
    """A stand-in for the source model holding only what ModelIR.to_proto copies from the
    source graph (doc string, metadata, quantization annotations, value docs), stripped; no
    nodes or weights. Nothing else reads ModelIR.source."""
    import onnx

    from surgeon.model import Model as _Model

    src = source.proto.graph
    view = onnx.ModelProto()
    g = view.graph
    g.name = src.name
    if not metadata and hasattr(src, "metadata_props"):
        g.metadata_props.extend(src.metadata_props)
    g.quantization_annotation.extend(src.quantization_annotation)
    for field in ("input", "output", "value_info"):
        for vi in getattr(src, field):
            if not metadata and len(getattr(vi, "metadata_props", [])):
                copy = getattr(g, field).add()
                copy.name = vi.name
                copy.metadata_props.extend(vi.metadata_props)
    return _Model(view, path=source.path, base_dir=source.base_dir, data_files=list(source.data_files))
