"""Remove doc strings (and optionally metadata_props) from the model, graphs, nodes and tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from surgeon.ir.walk import iter_graphs
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

    class Params(PassParams):
        metadata: bool = Field(
            False, description="also remove metadata_props of nodes, graph inputs/outputs/values and graphs"
        )

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
            stripped = (
                "",
                [] if self.params.metadata else meta[1],
                *meta[2:],
            )  # doc, props, what else the core carries
            model.node_meta[key] = (node, stripped)  # type: ignore[assignment]
        model.source_docs = False
        if self.params.metadata:
            model.source_metadata = False
        changed = model.to_proto().SerializeToString() != before
        return PassResult(
            changed,
            notes=["doc strings removed" + (" and metadata_props" if self.params.metadata else "")] if changed else [],
        )
