"""Prepend input pre-processing (cast, normalisation, layout transpose) at a graph input."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from surgeon.errors import PassPreconditionError
from surgeon.ir.walk import all_tensor_names
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import DTYPES, Shape, check_axis, describe, require_input, typed, unique_name, unique_node_name
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR

TAKES: dict[str, tuple[str, ...]] = {
    "Cast": ("dtype",),
    "Normalize": ("mean", "std", "scale", "axis"),
    "Transpose": ("perm",),
}
OPTIONAL = ("dtype", "mean", "std", "scale", "axis", "perm")
Derive = Callable[[Mapping[str, "np.ndarray"]], "np.ndarray"]


@register_pass("prepend-op")
class PrependOp(Pass):
    """Prepend input pre-processing at a graph input: Cast from another type,
    Normalize ((x*scale - mean) / std), or Transpose.

    The graph input keeps its name (unless ``name`` gives it another) and gets the new dtype and
    shape; the old input becomes an inner tensor ('<input>_float32', '_normalized', '_transposed').
    Transpose ``perm`` maps the new input to the old layout: [0, 3, 1, 2] takes NHWC to NCHW.
    Contract: outputs equal the model before fed with the pre-processed input. The verifier makes
    random data for the new input and derives the old input from it with numpy. The input is
    declared as changing dtype (Cast) or dims (a Transpose that moves sizes) where it does, and
    as renamed when ``name`` is given; Normalize keeps both.
    """

    class Params(PassParams):
        input: str = Field(description="the graph input to pre-process")
        op: Literal["Cast", "Normalize", "Transpose"] = Field(description="Cast, Normalize or Transpose")
        name: str | None = Field(None, description="name of the new input (default: the input keeps its name)")
        dtype: Literal[DTYPES] | None = Field(  # type: ignore[valid-type]
            None, description="Cast: element type of the new input (e.g. uint8); it is cast to the input's type"
        )
        mean: list[float] | None = Field(
            None, description="Normalize: per-channel (or one) mean, subtracted after scale"
        )
        std: list[float] | None = Field(
            None, description="Normalize: per-channel (or one) standard deviation, divided by last"
        )
        scale: float | None = Field(
            None, description="Normalize: factor applied first (e.g. 0.00392156862745098 for 1/255)"
        )
        axis: int | None = Field(None, description="Normalize: the channel axis of the input (default 1, as in NCHW)")
        perm: list[int] | None = Field(
            None, description="Transpose: permutation from the new input to the old one ([0, 3, 1, 2]: NHWC -> NCHW)"
        )

        @model_validator(mode="after")
        def _fits_op(self) -> PrependOp.Params:
            takes = TAKES[self.op]
            for key in OPTIONAL:
                if getattr(self, key) is not None and key not in takes:
                    raise ValueError(f"'{key}' does not apply to {self.op}; {self.op} takes: {', '.join(takes)}")
            if self.op == "Cast" and self.dtype is None:
                raise ValueError("Cast needs dtype (the element type of the new input)")
            if self.op == "Transpose" and self.perm is None:
                raise ValueError("Transpose needs perm")
            if self.op == "Normalize" and self.mean is None and self.std is None and self.scale is None:
                raise ValueError("Normalize needs mean, std or scale")
            if self.std is not None and any(s == 0 for s in self.std):
                raise ValueError("std must not contain 0")
            if self.mean and self.std and len(self.mean) > 1 and len(self.std) > 1 and len(self.mean) != len(self.std):
                raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
            return self

    params: Params

    def requires(self, model: ModelIR) -> None:
        p, g = self.params, model.graph
        tensor = require_input(g, p.input, ("input",))
        if tensor in g.outputs:
            raise PassPreconditionError(
                f"'{p.input}' is also a graph output; pre-processing it would change that output", field=("input",)
            )
        dtype, shape = typed(model, [p.input], "prepend-op")[p.input]
        rank = None if shape is None else len(shape)
        if p.op == "Normalize":
            if dtype.kind != "f":
                raise PassPreconditionError(
                    f"Normalize needs a floating-point input; '{p.input}' is {dtype} (Cast it first)", field=("op",)
                )
            axis = check_axis(p.axis if p.axis is not None else 1, rank, p.input, ("axis",))
            size = shape[axis] if shape is not None else None
            for key in ("mean", "std"):
                values = getattr(p, key) or []
                if len(values) > 1 and isinstance(size, int) and len(values) != size:
                    raise PassPreconditionError(
                        f"{key} has {len(values)} values but axis {axis} of '{p.input}' "
                        f"({describe(dtype, shape)}) has {size} channels",
                        field=(key,),
                    )
        if p.op == "Cast" and dtype.kind not in "fiub":
            raise PassPreconditionError(f"cannot cast to '{p.input}', which is {dtype}", field=("op",))
        if p.perm is not None and rank is not None and sorted(p.perm) != list(range(rank)):
            raise PassPreconditionError(
                f"perm {p.perm} is not a permutation of the {rank} axes of '{p.input}' ({describe(dtype, shape)})",
                field=("perm",),
            )
        if p.name is not None and p.name in all_tensor_names(g):
            raise PassPreconditionError(f"a tensor named '{p.name}' already exists in the graph", field=("name",))

    def _identity(self, dtype: np.dtype) -> bool:
        p = self.params
        if p.name is not None:
            return False
        if p.op == "Cast":
            return str(dtype) == p.dtype
        if p.op == "Transpose":
            return p.perm == sorted(p.perm or [])
        return all(v == 0 for v in p.mean or []) and all(v == 1 for v in p.std or []) and p.scale in (None, 1.0)

    def run(self, model: ModelIR) -> PassResult:
        import onnx_graphsurgeon as gs

        p, g = self.params, model.graph
        dtype, shape = typed(model, [p.input], "prepend-op")[p.input]
        if self._identity(dtype):
            return PassResult(
                False, notes=[f"{p.op} would not change '{p.input}' ({describe(dtype, shape)}); nothing prepended"]
            )
        old = next(t for t in g.inputs if t.name == p.input)
        old.dtype, old.shape = dtype, shape
        suffix = {"Cast": str(dtype), "Normalize": "normalized", "Transpose": "transposed"}[p.op]
        old.name = unique_name(g, f"{p.input}_{suffix}")
        new_dtype = _np(str(p.dtype)) if p.op == "Cast" else dtype
        new_shape = _inverse_shape(shape, p.perm) if p.op == "Transpose" else shape
        new = gs.Variable(p.name or p.input, new_dtype, new_shape)
        nodes, derive = self._build(g, new, old, dtype)
        g.nodes[0:0] = nodes
        g.inputs = [new if t is old else t for t in g.inputs]
        contract = IOContract(derived_inputs={p.input: derive}, renamed_inputs={p.input: new.name} if p.name else {})
        if new_dtype != dtype:  # the input's domain changes: say exactly how
            contract.changed_types.add(new.name)
        if new_shape != shape:
            contract.changed_dims.add(new.name)
        chain = " -> ".join(n.op for n in nodes)
        notes = [
            f"input {new.name} ({describe(new_dtype, new_shape)}) -> {chain} -> {old.name} "
            f"({describe(dtype, shape)}), what '{p.input}' was"
        ]
        return PassResult(True, contract, notes)

    def _build(self, g: gs.Graph, new: gs.Variable, old: gs.Variable, dtype: np.dtype) -> tuple[list[gs.Node], Derive]:
        import onnx_graphsurgeon as gs
        from onnx import helper

        p, name = self.params, new.name
        if p.op == "Cast":
            node = gs.Node(
                "Cast",
                unique_node_name(g, f"Cast_{name}"),
                {"to": int(helper.np_dtype_to_tensor_dtype(dtype))},
                [new],
                [old],
            )
            return [node], lambda feed: feed[name].astype(dtype)
        if p.op == "Transpose":
            perm = tuple(p.perm or [])  # the node gets its own list: the reference must not follow later edits
            node = gs.Node("Transpose", unique_node_name(g, f"Transpose_{name}"), {"perm": list(perm)}, [new], [old])
            return [node], lambda feed: feed[name].transpose(perm)
        return self._normalize(g, new, old, dtype)

    def _normalize(
        self, g: gs.Graph, new: gs.Variable, old: gs.Variable, dtype: np.dtype
    ) -> tuple[list[gs.Node], Derive]:
        import numpy as np
        import onnx_graphsurgeon as gs

        p, name = self.params, str(new.name)
        rank = len(new.shape) if new.shape is not None else None
        axis = 1 if p.axis is None else p.axis
        steps: list[tuple[str, np.ndarray]] = []
        if p.scale not in (None, 1.0):
            steps.append(("Mul", np.array(p.scale, dtype=dtype)))
        if p.mean and any(v != 0 for v in p.mean):
            steps.append(("Sub", _per_channel(p.mean, axis, rank, dtype)))
        if p.std and any(v != 1 for v in p.std):
            steps.append(("Div", _per_channel(p.std, axis, rank, dtype)))
        if not steps:
            identity = gs.Node("Identity", unique_node_name(g, f"Identity_{new.name}"), {}, [new], [old])
            return [identity], lambda feed: feed[name]
        nodes, cur = [], new
        labels = {"Mul": ("scale", "scaled"), "Sub": ("mean", "centered"), "Div": ("std", "divided")}
        for i, (op, value) in enumerate(steps):
            const = gs.Constant(unique_name(g, f"{name}_{labels[op][0]}"), value.copy())
            last = i == len(steps) - 1
            out = old if last else gs.Variable(unique_name(g, f"{name}_{labels[op][1]}"), dtype, new.shape)
            nodes.append(gs.Node(op, unique_node_name(g, f"{op}_{new.name}"), {}, [cur, const], [out]))
            cur = out
        funcs = {"Mul": np.multiply, "Sub": np.subtract, "Div": np.divide}

        def derive(feed: Mapping[str, np.ndarray]) -> np.ndarray:
            x = feed[name]
            for op, value in steps:
                x = funcs[op](x, value)
            return x

        return nodes, derive


def _np(name: str) -> np.dtype:
    import numpy as np

    return np.dtype(name)


def _inverse_shape(shape: Shape, perm: list[int] | None) -> Shape:
    """Shape of the new input, whose Transpose by ``perm`` has ``shape``."""
    if shape is None or perm is None:
        return shape
    out: list[Any] = [None] * len(shape)
    for i, src in enumerate(perm):
        out[src] = shape[i]
    return out


def _per_channel(values: list[float], axis: int, rank: int | None, dtype: np.dtype) -> np.ndarray:
    """One value, or one per channel shaped to broadcast along ``axis`` of a tensor of ``rank``."""
    import numpy as np

    arr = np.array(values, dtype=dtype)
    if arr.size == 1:
        return arr.reshape(())
    if rank is None:
        raise PassPreconditionError(
            "per-channel mean/std need the input's rank; the input has no shape", field=("mean",)
        )
    trailing = rank - 1 - (axis % rank)
    return arr.reshape((arr.size,) + (1,) * trailing)
