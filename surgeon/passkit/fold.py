"""Constant folding over the IR (onnx-graphsurgeon's fold_constants, run in onnxruntime), shared by
the passes that fold: ``fold-constants`` and ``simplify`` (its fallback when onnxsim fails).

Inputs with an initializer default are never folded; Shape with ``start``/``end`` folds right;
externally stored constants are read one tensor at a time and get their on-disk reference back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from surgeon.errors import PassError
from surgeon.ir.walk import iter_graphs

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR

Partitioning = Literal["none", "basic", "recursive"]
SEQUENCE_MAKERS = {
    "SequenceEmpty",
    "SequenceConstruct",
    "SequenceInsert",
    "SequenceErase",
    "SplitToSequence",
    "SequenceMap",
}
"""Ops whose output is a sequence: onnx-graphsurgeon cannot hold a sequence as a constant."""


def fold(
    model: ModelIR,
    fold_shapes: bool = True,
    max_tensor_bytes: int | None = 16 << 20,
    partitioning: Partitioning = "none",
    subgraphs: bool = True,
) -> None:
    """Fold every node whose inputs are all constant into a constant, then drop what no output
    needs. Raises :class:`PassError` naming what onnxruntime could not run."""
    import onnx_graphsurgeon as gs

    from surgeon.verify.runtime import quiet_ort

    quiet_ort()  # onnx-graphsurgeon's sessions log through onnxruntime's default logger
    g = model.graph
    masked = _mask_defaults(g, set(model.default_inputs))
    held = _hold_sequences(g)
    split = _split_shape_slices(g) if fold_shapes else []
    lazy = _load_foldable_values(model, g, fold_shapes)
    versioned = _version_subgraphs(g)
    gs_log = gs.logger.G_LOGGER
    severity = gs_log.severity
    gs_log.severity = gs_log.ERROR
    try:
        g.fold_constants(
            fold_shapes=fold_shapes,
            recurse_subgraphs=subgraphs,
            flatten_subgraphs=subgraphs,
            partitioning=None if partitioning == "none" else partitioning,
            error_ok=False,
            size_threshold=max_tensor_bytes,
        )
        g.cleanup(recurse_subgraphs=True)
    except Exception as exc:  # onnx-graphsurgeon / onnxruntime raise plain exceptions
        lines = str(exc).strip().splitlines()
        hint = " (partitioning: basic folds what it can around it)" if partitioning == "none" else ""
        raise PassError(f"constant folding failed: {lines[0][:300] if lines else type(exc).__name__}{hint}") from None
    finally:
        gs_log.severity = severity
        _unmask_defaults(g, masked)
        _release_sequences(held)
        _merge_shape_slices(split)
        for sub in versioned:
            sub.ir_version = None
    _restore_lazy(g, lazy)
    dangling = _dangling(g, set())
    if dangling:
        node, name = dangling
        label = f"'{node.name}' ({node.op})" if node.name else f"{node.op} -> {', '.join(t.name for t in node.outputs)}"
        raise FoldBrokeGraph(
            f"constant folding failed: once folded, node {label} reads '{name}', which nothing defines "
            "(onnx-graphsurgeon's folding of If/Loop bodies broke the graph); nothing is folded"
        )


class FoldBrokeGraph(PassError):
    """Folding left a graph that reads a value nothing defines: the model is not usable, and no
    second attempt may start from it."""


def _dangling(graph: gs.Graph, outer: set[str]) -> tuple[gs.Node, str] | None:
    """The first node (subgraphs included) reading a variable that neither its graph nor an
    enclosing one defines (an input, or a node's output)."""
    import onnx_graphsurgeon as gs

    from surgeon.ir.walk import gs_subgraphs

    defined = set(outer) | {t.name for t in graph.inputs}
    defined |= {t.name for n in graph.nodes for t in n.outputs}
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Variable) and t.name and t.name not in defined:
                return node, t.name
        for sub in gs_subgraphs(node):
            found = _dangling(sub, defined)
            if found:
                return found
    return None


def _version_subgraphs(graph: gs.Graph) -> list[gs.Graph]:
    """Give If/Loop/Scan bodies the model's IR version while folding. onnx-graphsurgeon folds a
    body's constant nodes (those reading outer-scope constants) in a model of its own, made
    with onnx's newest IR version when the body has none, which onnxruntime may refuse
    ("Model::Model ... Unsupported model IR version"): every such fold failed."""
    made = []
    for sub in iter_graphs(graph):
        if sub is not graph and sub.ir_version is None:
            sub.ir_version = graph.ir_version
            made.append(sub)
    return made


def _hold_sequences(graph: gs.Graph) -> list[tuple[gs.Node, gs.Variable]]:
    """Give every sequence-making node an extra input that is not constant, so folding leaves it
    (and what reads its sequence) alone: a folded sequence cannot become a constant."""
    import onnx_graphsurgeon as gs

    held = []
    for g in iter_graphs(graph):
        for node in g.nodes:
            if node.op in SEQUENCE_MAKERS:
                hold = gs.Variable(f"{node.name or node.op}__surgeon_not_constant")
                node.inputs.append(hold)
                held.append((node, hold))
    return held


def _release_sequences(held: list[tuple[gs.Node, gs.Variable]]) -> None:
    for node, hold in held:
        for i, t in enumerate(node.inputs):
            if t is hold:
                del node.inputs[i]
                hold.outputs.clear()
                break


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
            bounds = [
                gs.Constant(f"{out.name}__{k}", np.array([attrs.get(k, d)], np.int64))
                for k, d in (("start", 0), ("end", np.iinfo(np.int64).max))
            ]
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
