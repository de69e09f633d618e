"""The inputs a model must be fed, as the verifier sees them: each dim a size, a symbol, or (for a
placeholder, negative or missing dim) its own ``input:axis`` key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from surgeon.errors import ModelError

if TYPE_CHECKING:
    import numpy as np
    import onnx

Axes = dict[str, dict[int, str]]
"""Named axes of inputs or outputs: ``{tensor: {axis: symbol}}`` (mark-dynamic's plan, its probes)."""


class Choice(tuple[float, ...]):
    """A domain of listed values (each element is drawn from them), where a range would miss them:
    the constants an input is compared with (:mod:`surgeon.verify.domains`)."""


Domain = tuple[float, ...]
"""Values random data for an input is drawn from: ``(low, high)`` for ``[low, high)``, or a :class:`Choice`."""

PLACEHOLDERS = frozenset({"?", "None", "none", "null", "unk", "unknown", "N/A", "dynamic", "*", "-1"})


def axis_key(name: str, axis: int) -> str:
    return f"{name}:{axis}"


def symbol_of(name: str, axis: int, value: int | None, param: str) -> int | str:
    """A dim as the verifier sees it: a size (``value >= 0``), a symbol, or its own ``input:axis`` key."""
    if value is not None and value >= 0:  # 0 stays 0: onnxruntime requires exactly 0 there
        return value
    if param and param.strip() not in PLACEHOLDERS and not param.strip().lstrip("-").isdigit():
        return param
    return axis_key(name, axis)


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """Inputs a caller must feed (inputs with an initializer default are left to their default)."""
    import numpy as np
    from onnx import helper

    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tp = vi.type
        if tp.HasField("optional_type") and tp.optional_type.elem_type.HasField("tensor_type"):
            tp = tp.optional_type.elem_type  # fed present: a tensor of its element type
        tt = tp.tensor_type
        if not tp.HasField("tensor_type"):
            raise ModelError(
                f"input '{vi.name}' is a {_type_text(vi.type)}; the verifier feeds tensor and optional(tensor) "
                "inputs only (--no-verify applies the recipe without verification)"
            )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype(np.float32)
        dims: list[int | str | None] = []
        if tt.HasField("shape"):
            for axis, d in enumerate(tt.shape.dim):
                dims.append(symbol_of(vi.name, axis, d.dim_value if d.HasField("dim_value") else None, d.dim_param))
        specs.append(InputSpec(vi.name, dtype, tuple(dims)))
    return specs


def _type_text(tp: onnx.TypeProto) -> str:
    """``seq(map(int64, tensor(float)))`` and the like, for a message."""
    from onnx import helper

    kind = tp.WhichOneof("value")
    if kind == "sequence_type":
        return f"seq({_type_text(tp.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_type_text(tp.optional_type.elem_type)})"
    if kind == "map_type":
        key = helper.tensor_dtype_to_string(tp.map_type.key_type).removeprefix("TensorProto.").lower()
        return f"map({key}, {_type_text(tp.map_type.value_type)})"
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(tp, kind).elem_type
        name = helper.tensor_dtype_to_string(elem).removeprefix("TensorProto.").lower() if elem else "?"
        return f"{'sparse_' if kind == 'sparse_tensor_type' else ''}tensor({name})"
    return kind or "value of no type"
