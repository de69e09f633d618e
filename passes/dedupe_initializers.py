"""Merge byte-identical initializers."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from pydantic import Field

from surgeon.ir.walk import iter_graphs
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR


@register_pass("dedupe-initializers")
class DedupeInitializers(Pass):
    """Merge initializers with the same type, shape and bytes into one; consumers share it.

    Each graph (and each If/Loop/Scan body) is deduplicated on its own. Constants that are graph
    outputs or inputs with an initializer default keep their names and are never merged away.
    The first constant of a group (in node order) is kept.

    Weights: one tensor at a time and never twice. A tensor stored externally is hashed from its
    byte range in the data file, in chunks (sha256), without building an array; inline tensors
    hash their raw bytes.

    Contract: same interface, outputs exact.
    """

    class Params(PassParams):
        min_bytes: int = Field(0, ge=0, description="only merge tensors of at least this many bytes")

    params: Params

    def run(self, model: ModelIR) -> PassResult:
        protected = set(getattr(model, "default_inputs", {}))
        pairs: list[tuple[str, str, int]] = []
        for g in iter_graphs(model.graph):
            keep = protected | {t.name for t in g.outputs} | {t.name for t in g.inputs}
            canon = _canonical(model, g, self.params.min_bytes, keep)
            for node in g.nodes:
                for i, t in enumerate(node.inputs):
                    if id(t) in canon:
                        node.inputs[i] = canon[id(t)][1]
            pairs += [(dup.name, target.name, _nbytes(dup)) for dup, target in canon.values()]
        if not pairs:
            return PassResult(False, IOContract())
        notes = [f"merged {len(pairs)} duplicate initializer(s), {sum(p[2] for p in pairs)} bytes"]
        notes += [f"{a} -> {b}" for a, b, _ in pairs[:20]]
        if len(pairs) > 20:
            notes.append(f"... {len(pairs) - 20} more")
        return PassResult(True, notes=notes)


def _nbytes(t: gs.Constant) -> int:
    import onnx_graphsurgeon as gs

    lazy = t._values
    if isinstance(lazy, gs.ir.tensor.LazyValues):
        return int(lazy.nbytes)
    return int(t.values.nbytes)


def _constants(g: gs.Graph) -> list[gs.Constant]:
    import onnx_graphsurgeon as gs

    return [t for node in g.nodes for t in node.inputs if isinstance(t, gs.Constant)]


def _canonical(
    model: ModelIR, g: gs.Graph, min_bytes: int, keep: set[str]
) -> dict[int, tuple[gs.Constant, gs.Constant]]:
    """Duplicate constant (by id) -> (it, the first constant of its group in node order);
    constants named in ``keep`` are never merged away."""
    groups: dict[tuple[str, tuple[int, ...], str], gs.Constant] = {}
    dups: dict[int, tuple[gs.Constant, gs.Constant]] = {}
    done: set[int] = set()
    for t in _constants(g):
        if id(t) in done or _nbytes(t) < min_bytes:
            continue
        done.add(id(t))
        key = _key(model, t)
        if key is None:
            continue
        first = groups.setdefault(key, t)
        if first is not t and t.name not in keep:
            dups[id(t)] = (t, first)
    return dups


def _key(model: ModelIR, t: gs.Constant) -> tuple[str, tuple[int, ...], str] | None:
    import onnx_graphsurgeon as gs

    from surgeon.ir.external import tensor_digest

    lazy = t._values
    if isinstance(lazy, gs.ir.tensor.LazyValues):
        if lazy.tensor.data_type == 8:  # STRING: no raw bytes
            return None
        digest = tensor_digest(lazy.tensor, model.base_dir)
        if digest is None:  # typed fields (float_data...): small, read it
            digest = hashlib.sha256(model.values(t).tobytes()).hexdigest()
        return str(lazy.tensor.data_type), tuple(lazy.shape), digest
    import numpy as np

    values = np.ascontiguousarray(t.values)
    if values.dtype.kind in "OSU":
        return None
    from onnx import helper

    dtype = helper.np_dtype_to_tensor_dtype(values.dtype)
    return str(dtype), tuple(values.shape), hashlib.sha256(values.tobytes()).hexdigest()
