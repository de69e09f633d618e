"""Fold constant subgraphs with onnx-graphsurgeon."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from surgeon.ir.walk import signature
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.fold import fold
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    from surgeon.ir.adapter import ModelIR


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Fold nodes whose inputs are all constant into constants (onnx-graphsurgeon fold_constants).

    Folding runs the constant subgraph in onnxruntime (CPU). Tensors bigger than
    ``max_tensor_bytes`` are left to be computed at run time instead of being stored in the model.
    Nodes that depend on a graph input are never folded, also when that input has an
    initializer default.

    Weights: one tensor at a time. Only constants that feed a foldable node are read (from
    external data through ModelIR.values); constants that survive folding get their on-disk
    reference back, so saving copies them file to file.

    Contract: same interface, outputs exact (within the pipeline tolerance).
    """

    class Params(PassParams):
        fold_shapes: bool = Field(
            True, description="also fold Shape (and shape arithmetic) of tensors whose shape is static"
        )
        max_tensor_bytes: int | None = Field(
            16 << 20, ge=0, description="do not fold into tensors larger than this many bytes (null: no limit)"
        )
        partitioning: Literal["none", "basic", "recursive"] = Field(
            "none",
            description=(
                "split the constant subgraph so that one op onnxruntime cannot run does not stop the rest from folding"
            ),
        )
        subgraphs: bool = Field(
            True, description="also fold inside If/Loop/Scan bodies (and flatten If with a constant condition)"
        )

    params: Params

    def run(self, model: ModelIR) -> PassResult:
        g = model.graph
        before = signature(g)
        ops_before = Counter(n.op for n in g.nodes)
        p = self.params
        fold(model, p.fold_shapes, p.max_tensor_bytes, p.partitioning, p.subgraphs)
        if signature(g) == before:
            return PassResult(False, IOContract())
        folded = ops_before - Counter(n.op for n in g.nodes)
        notes = (
            [f"folded {sum(folded.values())} node(s): " + ", ".join(f"{k} x{v}" for k, v in sorted(folded.items()))]
            if folded
            else []
        )
        return PassResult(True, notes=notes or ["folded constant subgraphs"])
