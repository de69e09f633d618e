"""Helpers the passes share: tensor look-ups with clear errors (listing what exists), dtypes and
shapes from inference, fresh names, and the model-before-the-step snapshot the verifier reads
intermediates from."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from surgeon.errors import PassError, PassPreconditionError, listing, suggest
from surgeon.ir.walk import all_tensor_names, iter_graphs, unused_name
from surgeon.passkit.infer import Shape, dims_text

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR
    from surgeon.verify.contract import Intermediates

MAX_LISTED = 40

DTYPES = (
    "float32",
    "float16",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)
"""Element types the passes accept as parameters (numpy names)."""


def short_listing(items: Iterable[str], limit: int = MAX_LISTED) -> str:
    items = list(items)
    if len(items) <= limit:
        return listing(items)
    return f"{listing(items[:limit])} ... and {len(items) - limit} more"


def require_tensor(graph: gs.Graph, name: str, field: tuple[str | int, ...], kind: str = "tensor") -> gs.Tensor:
    """The main-graph tensor called ``name``, or an error naming what exists (with a suggestion)."""
    tensors = graph.tensors()
    if name in tensors:
        return tensors[name]
    existing = sorted(tensors)
    if name in all_tensor_names(graph):
        raise PassPreconditionError(
            f"{kind} '{name}' is inside a subgraph (If/Loop/Scan body); only main-graph tensors can be used",
            field=field,
        )
    raise PassPreconditionError(
        f"no {kind} '{name}' in the graph{suggest(name, existing)}; tensors are: {short_listing(existing)}", field=field
    )


def require_output(graph: gs.Graph, name: str, field: tuple[str | int, ...]) -> gs.Tensor:
    outs = [t.name for t in graph.outputs]
    if name not in outs:
        raise PassPreconditionError(
            f"unknown output '{name}'{suggest(name, outs)}; graph outputs are: {listing(outs)}", field=field
        )
    return graph.outputs[outs.index(name)]


def require_input(graph: gs.Graph, name: str, field: tuple[str | int, ...]) -> gs.Tensor:
    ins = [t.name for t in graph.inputs]
    if name not in ins:
        raise PassPreconditionError(
            f"unknown input '{name}'{suggest(name, ins)}; graph inputs are: {listing(ins)}", field=field
        )
    return graph.inputs[ins.index(name)]


def names(tensors: Iterable[gs.Tensor]) -> list[str]:
    return [t.name for t in tensors]


def require_names(wanted: Iterable[str], existing: list[str], kind: str, field: str) -> None:
    """Raise for the first name in ``wanted`` that is not in ``existing``, listing what exists."""
    for name in wanted:
        if name not in existing:
            raise PassPreconditionError(
                f"unknown {kind} '{name}'{suggest(name, existing)}; graph {kind}s are: {listing(existing)}",
                field=(field, name),
            )


def unique_name(graph: gs.Graph, base: str, taken: set[str] | None = None) -> str:
    """``base``, or ``base_1``, ``base_2``... the first not used by a tensor or a node (subgraphs
    included) nor in ``taken``."""
    used = all_tensor_names(graph) | {n.name for g in iter_graphs(graph) for n in g.nodes} | (taken or set())
    return unused_name(base, used)


def unique_node_name(graph: gs.Graph, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``... the first not used by a node of ``graph`` itself."""
    return unused_name(base, {n.name for n in graph.nodes})


def inferred_types(model: ModelIR, names: Sequence[str]) -> dict[str, tuple[np.dtype | None, Shape]]:
    """dtype and shape of main-graph tensors: what the graph declares, completed by ONNX shape
    inference (which reads no weights). Unknown parts are None."""
    import onnx_graphsurgeon as gs

    tensors = model.graph.tensors()
    out: dict[str, tuple[np.dtype | None, Shape]] = {}
    missing = []
    for name in names:
        t = tensors[name]
        dtype = _np_dtype(t.dtype) if t.dtype is not None else None
        shape: Shape = list(t.shape) if t.shape is not None or isinstance(t, gs.Constant) else None
        out[name] = (dtype, shape)
        if dtype is None or shape is None:
            missing.append(name)
    if missing:
        from surgeon.passkit.infer import tensor_types

        inferred = tensor_types(model)
        for name in missing:
            dtype, shape = out[name]
            ishape: Shape
            idtype, ishape = inferred.get(name, (None, None))
            out[name] = (
                dtype if dtype is not None else idtype,
                shape if shape is not None else (list(ishape) if ishape is not None else None),
            )
    return out


def _np_dtype(dtype: Any) -> np.dtype | None:
    import numpy as np
    from onnx import helper

    if isinstance(dtype, int):
        return np.dtype(helper.tensor_dtype_to_np_dtype(dtype)) if dtype else None
    return np.dtype(dtype)


def typed(model: ModelIR, names: Sequence[str], why: str) -> dict[str, tuple[np.dtype, Shape]]:
    """Like :func:`inferred_types` but every dtype must be known (graph inputs and outputs need one)."""
    types = inferred_types(model, names)
    unknown = [n for n, (dtype, _) in types.items() if dtype is None]
    if unknown:
        raise PassError(
            f"cannot tell the element type of {', '.join(unknown)} (the graph declares none and ONNX shape "
            f"inference finds none); {why} needs it: run a shape-inference pass first"
        )
    return {n: (d, s) for n, (d, s) in types.items() if d is not None}


def snapshot(model: ModelIR, names: Sequence[str]) -> Intermediates:
    """The model as it is now with ``names`` exposed as extra outputs, for the verifier to read
    intermediate values from (external weights stay referenced, never read)."""
    from onnx import helper

    from surgeon.verify.contract import Intermediates

    types = inferred_types(model, names)
    before = model.to_model()
    graph = before.proto.graph
    present = {o.name for o in graph.output}
    for name in names:
        if name in present:
            continue
        dtype, shape = types[name]
        if dtype is None:
            graph.output.add().name = name
        else:
            elem = helper.np_dtype_to_tensor_dtype(dtype)
            graph.output.append(helper.make_tensor_value_info(name, elem, shape))
    return Intermediates(before, list(names))


def check_axis(axis: int, rank: int | None, tensor: str, field: tuple[str | int, ...]) -> int:
    """``axis`` made non-negative, or an error when it is out of range for a tensor of ``rank``."""
    if rank is None:
        return axis
    if not -rank <= axis < rank:
        raise PassPreconditionError(f"axis {axis} is out of range for '{tensor}', which has {rank} axes", field=field)
    return axis % rank


def describe(dtype: object, shape: Shape) -> str:
    """``float32 [N, 3, 224, 224]`` (``?`` for what is unknown), as Netron would show it."""
    dims = "?" if shape is None else dims_text(shape)
    return f"{dtype} {dims}"
