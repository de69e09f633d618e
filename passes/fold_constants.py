"""Fold constant subgraphs with onnx-graphsurgeon."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from surgeon.errors import PassError
from surgeon.ir.walk import iter_graphs, signature
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

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
        fold_shapes: bool = Field(True, description="also fold Shape (and shape arithmetic) of tensors whose shape is static")
        max_tensor_bytes: int | None = Field(16 << 20, ge=0, description="do not fold into tensors larger than this many bytes (null: no limit)")
        partitioning: Literal["none", "basic", "recursive"] = Field("none", description="split the constant subgraph so that one op onnxruntime cannot run does not stop the rest from folding")
        subgraphs: bool = Field(True, description="also fold inside If/Loop/Scan bodies (and flatten If with a constant condition)")

    params: Params

    def run(self, model: ModelIR) -> PassResult:
        import onnx_graphsurgeon as gs

        g = model.graph
        before = signature(g)
        ops_before = Counter(n.op for n in g.nodes)
        masked = _mask_defaults(g, set(getattr(model, "default_inputs", {})))
        split = _split_shape_slices(g) if self.params.fold_shapes else []
        lazy = _load_foldable_values(model, g, self.params.fold_shapes)
        gs_log = gs.logger.G_LOGGER
        severity = gs_log.severity
        gs_log.severity = gs_log.ERROR
        try:
            g.fold_constants(
                fold_shapes=self.params.fold_shapes,
                recurse_subgraphs=self.params.subgraphs,
                flatten_subgraphs=self.params.subgraphs,
                partitioning=None if self.params.partitioning == "none" else self.params.partitioning,
                error_ok=False,
                size_threshold=self.params.max_tensor_bytes,
            )
            g.cleanup(recurse_subgraphs=True)
        except Exception as exc:  # onnx-graphsurgeon / onnxruntime raise plain exceptions
            lines = str(exc).strip().splitlines()
            hint = " (partitioning: basic folds what it can around it)" if self.params.partitioning == "none" else ""
            raise PassError(f"constant folding failed: {lines[0][:300] if lines else type(exc).__name__}{hint}") from None
        finally:
            gs_log.severity = severity
            _unmask_defaults(g, masked)
            _merge_shape_slices(split)
        _restore_lazy(g, lazy)
        if signature(g) == before:
            return PassResult(False, IOContract())
        folded = ops_before - Counter(n.op for n in g.nodes)
        notes = [f"folded {sum(folded.values())} node(s): " + ", ".join(f"{k} x{v}" for k, v in sorted(folded.items()))] if folded else []
        return PassResult(True, notes=notes or ["folded constant subgraphs"])


def _split_shape_slices(graph: gs.Graph) -> list[tuple[gs.Graph, gs.Node, gs.Node, dict[str, Any]]]:
    """onnx-graphsurgeon's shape folding ignores Shape's ``start``/``end`` (opset 15) and folds
    the whole shape: make each such Shape a plain Shape followed by a Slice, which it folds right."""
    import numpy as np
    import onnx_graphsurgeon as gs

    made = []
    for g in iter_graphs(graph):
        for node in list(g.nodes):
            attrs = {k: node.attrs[k] for k in ("start", "end") if k in node.attrs}
            if node.op != "Shape" or not attrs:
                continue
            for k in attrs:
                del node.attrs[k]
            out = node.outputs[0]
            full = gs.Variable(f"{out.name}__full_shape", dtype=np.int64)
            node.outputs.clear()
            node.outputs.append(full)
            bounds = [gs.Constant(f"{out.name}__{k}", np.array([attrs.get(k, d)], np.int64)) for k, d in (("start", 0), ("end", np.iinfo(np.int64).max))]
            sl = gs.Node("Slice", name=f"{node.name or out.name}__slice", inputs=[full, *bounds], outputs=[out])
            g.nodes.insert(g.nodes.index(node) + 1, sl)
            made.append((g, node, sl, attrs))
    return made


def _merge_shape_slices(made: list[tuple[gs.Graph, gs.Node, gs.Node, dict[str, Any]]]) -> None:
    """Put back the Shape nodes that were split for folding and did not fold."""
    for g, shape, sl, attrs in made:
        if not any(n is sl for n in g.nodes) or not any(n is shape for n in g.nodes):
            continue
        out = sl.outputs[0]
        sl.outputs.clear()
        sl.inputs.clear()
        g.nodes.remove(sl)
        shape.outputs.clear()
        shape.outputs.append(out)
        shape.attrs.update(attrs)


def _mask_defaults(graph: gs.Graph, defaults: set[str]) -> dict[int, tuple[gs.Constant, gs.Variable]]:
    """Replace the constants of inputs with an initializer default (onnx-graphsurgeon imports
    them as constants) by variables of the same name, so folding leaves their consumers alone."""
    import onnx_graphsurgeon as gs

    swapped: dict[int, tuple[gs.Constant, gs.Variable]] = {}
    for g in iter_graphs(graph):
        for node in g.nodes:
            for i, t in enumerate(node.inputs):
                if isinstance(t, gs.Constant) and t.name in defaults:
                    if id(t) not in swapped:
                        swapped[id(t)] = (t, gs.Variable(t.name, dtype=t.dtype, shape=t.shape))
                    node.inputs[i] = swapped[id(t)][1]
    return swapped


def _unmask_defaults(graph: gs.Graph, swapped: dict[int, tuple[gs.Constant, gs.Variable]]) -> None:
    back = {id(var): const for const, var in swapped.values()}
    for g in iter_graphs(graph):
        for node in g.nodes:
            for i, t in enumerate(node.inputs):
                if id(t) in back:
                    node.inputs[i] = back[id(t)]


def _load_foldable_values(model: ModelIR, graph: gs.Graph, fold_shapes: bool) -> dict[int, tuple[gs.Constant, Any]]:
    """Read the values of externally stored constants that feed a foldable node (walking nodes in
    order), so onnxruntime gets them inline. Returns the lazy references, to put back afterwards."""
    import onnx_graphsurgeon as gs

    from surgeon.ir.external import is_external

    loaded: dict[int, tuple[gs.Constant, Any]] = {}
    for g in iter_graphs(graph):
        const = {name for name, t in g.tensors().items() if isinstance(t, gs.Constant)}
        for node in g.nodes:
            ins = [t for t in node.inputs if not t.is_empty()]
            if fold_shapes and node.op == "Shape" and _static(node):
                const.update(t.name for t in node.outputs)
                continue
            if not all(t.name in const for t in ins):
                continue
            const.update(t.name for t in node.outputs)
            for t in ins:
                lazy = t._values if isinstance(t, gs.Constant) else None
                if isinstance(lazy, gs.ir.tensor.LazyValues) and is_external(lazy.tensor) and id(t) not in loaded:
                    loaded[id(t)] = (t, lazy)
                    t.values = model.values(t)
    return loaded


def _static(node: gs.Node) -> bool:
    shape = node.inputs[0].shape if node.inputs else None
    return shape is not None and all(isinstance(d, int) for d in shape)


def _restore_lazy(graph: gs.Graph, loaded: dict[int, tuple[gs.Constant, Any]]) -> None:
    for t, lazy in loaded.values():
        t._values = lazy
