"""Rewrite constant negative Gather / GatherElements / Slice indices to non-negative ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from surgeon.ir.walk import iter_graphs
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR
    from surgeon.passkit.infer import TypeMap

Op = Literal["Gather", "GatherElements", "Slice"]


def _all_ops() -> list[Op]:
    return ["Gather", "GatherElements", "Slice"]


@register_pass("fix-negative-indices")
class FixNegativeIndices(Pass):
    """Rewrite constant negative indices of Gather, GatherElements and Slice to non-negative ones.

    For runtimes and compilers that reject negative indices. Only where the indexed axis has a
    static size (from the graph or onnx shape inference): ``i < 0`` becomes ``i + size``. Slice
    starts/ends below ``-size`` (clamped by ONNX, e.g. INT64_MIN with a negative step) stay as
    they are. A constant shared with other nodes is copied, not changed in place.

    Weights: reads only the small index constants (one at a time), never the weights.

    Contract: same interface, outputs exact.
    """

    class Params(PassParams):
        ops: list[Op] = Field(default_factory=_all_ops, description="op types to rewrite")

    params: Params

    def run(self, model: ModelIR) -> PassResult:
        from surgeon.passkit.infer import tensor_types

        wanted = set(self.params.ops)
        if not any(n.op in wanted for g in iter_graphs(model.graph) for n in g.nodes):
            return PassResult(False, IOContract())
        types = tensor_types(model)
        edits: list[tuple[gs.Constant, str]] = []
        for g in iter_graphs(model.graph):
            for node in g.nodes:
                if node.op in wanted:
                    edits += _fix(model, node, types)
        return PassResult(bool(edits), notes=[note for _, note in edits])


def _dims(t: gs.Tensor, types: TypeMap) -> tuple[int | str | None, ...] | None:
    if t.shape is not None and all(isinstance(d, int) for d in t.shape):
        return tuple(t.shape)
    entry = types.get(t.name)
    shape = entry[1] if entry else t.shape
    return tuple(shape) if shape is not None else None


def _fix(model: ModelIR, node: gs.Node, types: TypeMap) -> list[tuple[gs.Constant, str]]:
    dims = _dims(node.inputs[0], types)
    if dims is None:
        return []
    rank = len(dims)
    if node.op in ("Gather", "GatherElements"):
        axis = int(node.attrs.get("axis", 0)) % max(rank, 1)
        size = dims[axis] if axis < rank else None
        return _rewrite(model, node, 1, [size], broadcast=True)
    axes_t = node.inputs[3] if len(node.inputs) > 3 and not node.inputs[3].is_empty() else None
    starts = _const(model, node.inputs[1]) if len(node.inputs) > 1 else None
    if starts is None:
        return []
    if axes_t is None:
        axes = list(range(len(starts)))
    else:
        values = _const(model, axes_t)
        if values is None:
            return []
        axes = [int(a) % rank for a in values]
    sizes = [dims[a] for a in axes]
    return _rewrite(model, node, 1, sizes) + _rewrite(model, node, 2, sizes)


def _constant_of(t: gs.Tensor) -> gs.Constant | None:
    """The constant behind ``t``: ``t`` itself, or the value of the Constant node that makes it
    (the TorchScript exporter writes indices such as ``x[:, -1]`` as Constant nodes)."""
    import onnx_graphsurgeon as gs

    if isinstance(t, gs.Constant):
        return t
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant" and isinstance(t.inputs[0].attrs.get("value"), gs.Constant):
        value: gs.Constant = t.inputs[0].attrs["value"]
        return value
    return None


def _const(model: ModelIR, t: gs.Tensor) -> np.ndarray | None:
    import numpy as np

    c = _constant_of(t)
    return None if c is None else np.asarray(model.values(c)).ravel()


def _rewrite(
    model: ModelIR, node: gs.Node, slot: int, sizes: list[int | str | None], broadcast: bool = False
) -> list[tuple[gs.Constant, str]]:
    """Add the axis size to negative entries of constant input ``slot`` (valid negatives only).
    Returns the constant rewritten (replaced or given new values) and a line for the report."""
    import numpy as np
    import onnx_graphsurgeon as gs

    if len(node.inputs) <= slot:
        return []
    t = node.inputs[slot]
    c = _constant_of(t)
    if c is None:
        return []
    values = np.asarray(model.values(c))
    flat = values.reshape(-1)
    size_arr = np.array(
        [s if isinstance(s, int) else -1 for s in (sizes * flat.size if broadcast else sizes)], dtype=np.int64
    )
    if size_arr.size != flat.size:
        return []
    fixable = (flat < 0) & (size_arr > 0) & (flat + size_arr >= 0)
    if not fixable.any():
        return []
    new = np.where(fixable, flat + size_arr, flat).astype(values.dtype).reshape(values.shape)
    if len(t.outputs) > 1:
        c = gs.Constant(f"{t.name}_nonneg", new)
        node.inputs[slot] = c
        name = c.name
    else:
        c.values = new
        name = t.name
    label = f"'{node.name}'" if node.name else f"({', '.join(o.name for o in node.outputs)})"
    return [(c, f"{node.op} {label}: {name} {_short(flat)} -> {_short(new.reshape(-1))}")]


def _short(values: np.ndarray) -> str:
    items = values[:8].tolist()
    return str(items)[:-1] + (", ...]" if values.size > 8 else "]")
