"""ONNX shape inference over the IR, without weights: the one place passes get dtypes and shapes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from surgeon.errors import PassError
from surgeon.ir.walk import LIGHT_ELEMENTS, iter_proto_graphs, light_copy

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from surgeon.ir.adapter import ModelIR

Dim = int | str | None
Shape = tuple[Dim, ...] | list[Dim] | None
"""Dims as inference and onnx-graphsurgeon keep them: ints, symbol strings, None for unknown."""
TypeMap = dict[str, "tuple[np.dtype | None, Shape]"]


def _light_proto(
    model: ModelIR,
    input_dims: Mapping[str, Iterable[Dim]] | None,
    keep_outputs: bool,
    cuts: Mapping[str, Shape] | None = None,
) -> onnx.ModelProto:
    from onnx import helper

    proto = light_copy(
        model.to_proto(), LIGHT_ELEMENTS, big_as_inputs=True, value_info=False, output_shapes=keep_outputs
    )
    g = proto.graph
    for name, shape in (cuts or {}).items():  # inference takes these shapes as given
        for node in g.node:
            node.output[:] = [f"{o}__cut" if o == name else o for o in node.output]
        elem = next((t.dtype for t in model.graph.tensors().values() if t.name == name), None)
        g.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(elem), shape))
    for vi in g.input:
        if input_dims and vi.name in input_dims:
            dims = vi.type.tensor_type.shape.dim
            for d, value in zip(dims, input_dims[vi.name]):
                if isinstance(value, int):
                    d.dim_value = value
                elif isinstance(value, str):
                    d.dim_param = value
    return proto


def infer(
    model: ModelIR,
    input_dims: Mapping[str, Iterable[Dim]] | None = None,
    strict: bool = False,
    keep_outputs: bool = False,
    cuts: Mapping[str, Shape] | None = None,
) -> dict[str, tuple[Any, Shape]]:
    """``{tensor name: (onnx elem type or None, shape)}`` from ONNX shape inference over the graph
    and its subgraphs (intermediate shapes ignored; output shapes too unless ``keep_outputs``),
    optionally with some input dims replaced (by input name)."""
    import onnx

    proto = _light_proto(model, input_dims, keep_outputs, cuts)
    try:
        out = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=strict, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError / RuntimeError with the node named
        raise PassError(f"shape inference failed: {str(exc).strip().splitlines()[0]}") from None
    result: dict[str, tuple[Any, Shape]] = {}
    for gproto in iter_proto_graphs(out.graph):
        for vi in list(gproto.value_info) + list(gproto.output) + list(gproto.input):
            result[vi.name] = _type_of(vi)
    return result


def _type_of(vi: onnx.ValueInfoProto) -> tuple[Any, Shape]:
    if not vi.type.HasField("tensor_type"):
        return None, None
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return tt.elem_type or None, None
    dims: list[Dim] = []
    for d in tt.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return tt.elem_type or None, tuple(dims)


def tensor_types(model: ModelIR) -> TypeMap:
    """numpy dtype and shape of every tensor that inference (or, where inference fails, the graph's
    own declarations) can type. Best effort: unknown tensors are simply absent."""
    from onnx import helper

    try:
        inferred = infer(model, keep_outputs=True)
    except PassError:
        inferred = {}
    declared = model.to_proto().graph
    for vi in list(declared.input) + list(declared.output) + list(declared.value_info):
        inferred.setdefault(vi.name, _type_of(vi))
    return {
        name: (helper.tensor_dtype_to_np_dtype(elem) if elem else None, shape)
        for name, (elem, shape) in inferred.items()
        if elem or shape is not None
    }


def dims_text(shape: Shape) -> str:
    """``[N, 3, ?, 224]``: dims as a user reads them (``?`` for unknown)."""
    if shape is None:
        return "unknown rank"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
