"""Append a post-processing op at a graph output (no re-export needed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from surgeon.errors import PassPreconditionError
from surgeon.ir.walk import all_tensor_names
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import (
    DTYPES,
    Shape,
    check_axis,
    describe,
    require_output,
    typed,
    unique_name,
    unique_node_name,
)
from surgeon.verify.compare import Tolerance
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR

Op = Literal["Clip", "Softmax", "Sigmoid", "ArgMax", "TopK", "Cast", "Transpose"]
TAKES: dict[str, tuple[str, ...]] = {
    "Clip": ("min", "max"),
    "Softmax": ("axis",),
    "Sigmoid": (),
    "ArgMax": ("axis", "keepdims", "select_last_index"),
    "TopK": ("k", "axis", "largest", "indices_name"),
    "Cast": ("to",),
    "Transpose": ("perm",),
}
OPTIONAL = ("min", "max", "axis", "keepdims", "select_last_index", "k", "largest", "indices_name", "to", "perm")
FLOAT_ONLY = {"Softmax", "Sigmoid"}
TOLERANCE = {"float16": Tolerance(1e-3, 1e-3), "float32": Tolerance(1e-5, 1e-6), "float64": Tolerance(1e-12, 1e-12)}
"""Softmax and Sigmoid against numpy's float64 reference: a few ulps of the output type."""
Reference = Callable[["np.ndarray"], "list[np.ndarray]"]


@register_pass("append-op")
class AppendOp(Pass):
    """Append a post-processing op (Clip, Softmax, Sigmoid, ArgMax, TopK, Cast, Transpose) at a graph output.

    The graph output keeps its name (the tensor before the op is renamed '<output>_pre_<op>')
    unless ``name`` names the result. TopK adds a second output for the indices. A Cast to the
    type the output already has, or an identity Transpose, changes nothing (modified: false).
    Contract: the output equals the op applied (in numpy) to the output of the model before.
    Where it keeps its name, the dtype (ArgMax: int64, Cast: ``to``) and static dims (ArgMax,
    TopK, Transpose) the op gives it are declared as changed where they differ from the output's;
    Clip, Softmax and Sigmoid keep both.
    """

    class Params(PassParams):
        output: str = Field(description="the graph output to post-process")
        op: Op = Field(description="the op to append: Clip, Softmax, Sigmoid, ArgMax, TopK, Cast or Transpose")
        name: str | None = Field(None, description="name of the result (default: the output keeps its name)")
        min: float | None = Field(None, description="Clip: lower bound")
        max: float | None = Field(None, description="Clip: upper bound")
        axis: int | None = Field(
            None,
            description="Softmax, ArgMax, TopK: the axis (default as in ONNX: -1 for Softmax and TopK, 0 for ArgMax)",
        )
        keepdims: bool | None = Field(None, description="ArgMax: keep the reduced axis with size 1 (default true)")
        select_last_index: bool | None = Field(
            None, description="ArgMax: on ties, take the last index (default false; opset 12+)"
        )
        k: int | None = Field(None, ge=1, description="TopK: how many elements")
        largest: bool | None = Field(None, description="TopK: the largest (default true) or the smallest elements")
        indices_name: str | None = Field(
            None, description="TopK: name of the indices output (default '<name>_indices')"
        )
        to: Literal[DTYPES] | None = Field(  # type: ignore[valid-type]
            None, description="Cast: the element type to cast to (float32, float16, int64, uint8, bool...)"
        )
        perm: list[int] | None = Field(None, description="Transpose: the permutation (default: axes reversed)")

        @model_validator(mode="after")
        def _fits_op(self) -> AppendOp.Params:
            takes = TAKES[self.op]
            for key in OPTIONAL:
                if getattr(self, key) is not None and key not in takes:
                    raise ValueError(
                        f"'{key}' does not apply to {self.op}; {self.op} takes: {', '.join(takes) or 'nothing'}"
                    )
            if self.op == "Clip" and self.min is None and self.max is None:
                raise ValueError("Clip needs min, max or both")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"Clip min {self.min} is greater than max {self.max}")
            if self.op == "TopK" and self.k is None:
                raise ValueError("TopK needs k")
            if self.op == "Cast" and self.to is None:
                raise ValueError("Cast needs to (the element type)")
            return self

    params: Params

    def requires(self, model: ModelIR) -> None:
        p, g = self.params, model.graph
        out = require_output(g, p.output, ("output",))
        if model.opset < 11:
            raise PassPreconditionError(
                f"append-op needs opset 11 or newer; the model uses opset {model.opset}", field=("op",)
            )
        if p.select_last_index and model.opset < 12:
            raise PassPreconditionError(
                f"ArgMax select_last_index needs opset 12 or newer; the model uses opset {model.opset}",
                field=("select_last_index",),
            )
        if p.name is None and out in g.inputs:
            raise PassPreconditionError(
                f"'{p.output}' is also a graph input; give name: for the result", field=("output",)
            )
        dtype, shape = typed(model, [p.output], "append-op")[p.output]
        self._check_dtype(dtype)
        rank = None if shape is None else len(shape)
        if p.op in ("Softmax", "ArgMax", "TopK"):
            axis = check_axis(self._axis(model.opset), rank, p.output, ("axis",))
            size = None if shape is None else shape[axis]
            if p.k is not None and isinstance(size, int) and p.k > size:
                raise PassPreconditionError(
                    f"TopK k={p.k} but axis {axis} of '{p.output}' ({describe(dtype, shape)}) has size {size}",
                    field=("k",),
                )
        if p.perm is not None and rank is not None and sorted(p.perm) != list(range(rank)):
            raise PassPreconditionError(
                f"perm {p.perm} is not a permutation of the {rank} axes of '{p.output}' ({describe(dtype, shape)})",
                field=("perm",),
            )
        existing = all_tensor_names(g)
        for key in ("name", "indices_name"):
            value = getattr(p, key)
            if value is not None and value in existing:
                raise PassPreconditionError(f"a tensor named '{value}' already exists in the graph", field=(key,))

    def _check_dtype(self, dtype: np.dtype) -> None:
        p = self.params
        if p.op in FLOAT_ONLY and dtype.kind != "f":
            raise PassPreconditionError(f"{p.op} needs a floating-point output; '{p.output}' is {dtype}", field=("op",))
        if p.op in ("Clip", "ArgMax", "TopK") and dtype.kind not in "fiu":
            raise PassPreconditionError(f"{p.op} needs a numeric output; '{p.output}' is {dtype}", field=("op",))
        for key in ("min", "max"):
            value = getattr(p, key)
            if dtype.kind in "iu" and value is not None and value != int(value):
                raise PassPreconditionError(
                    f"'{p.output}' is {dtype}: Clip {key} must be a whole number, got {value}", field=(key,)
                )

    def _axis(self, opset: int) -> int:
        p = self.params
        if p.axis is not None:
            return p.axis
        return {"ArgMax": 0, "TopK": -1}.get(p.op, -1 if opset >= 13 else 1)

    def _identity(self, dtype: np.dtype, shape: Shape) -> bool:
        p = self.params
        if p.name is not None:
            return False
        if p.op == "Cast":
            return str(dtype) == p.to
        perm = p.perm
        return (
            p.op == "Transpose"
            and perm is not None
            and perm == sorted(perm)
            and shape is not None
            and len(shape) == len(perm)
        )

    def run(self, model: ModelIR) -> PassResult:
        import onnx_graphsurgeon as gs

        p, g = self.params, model.graph
        dtype, shape = typed(model, [p.output], "append-op")[p.output]
        if self._identity(dtype, shape):
            return PassResult(
                False, notes=[f"{p.op} would not change '{p.output}' ({describe(dtype, shape)}); nothing appended"]
            )
        tensor = next(t for t in g.outputs if t.name == p.output)
        tensor.dtype, tensor.shape = dtype, shape
        name = p.name or p.output
        if p.name is None:
            tensor.name = unique_name(g, f"{p.output}_pre_{p.op.lower()}")
        attrs = self._attrs(model.opset, dtype)
        result_dtype = dtype if p.op not in ("ArgMax", "Cast") else _result_dtype(p.op, p.to)
        result_shape = _result_shape(p.op, shape, attrs, p.k)
        results = [gs.Variable(name, result_dtype, result_shape)]
        if p.op == "TopK":
            results.append(
                gs.Variable(p.indices_name or unique_name(g, f"{name}_indices"), _np("int64"), results[0].shape)
            )
        node_attrs = {k: list(v) if isinstance(v, list) else v for k, v in attrs.items()}  # the reference keeps its own
        g.nodes.append(
            gs.Node(
                p.op,
                unique_node_name(g, f"{p.op}_{name}"),
                node_attrs,
                [tensor, *self._extra_inputs(g, dtype)],
                results,
            )
        )
        g.outputs = [x for t in g.outputs for x in (results if t is tensor else [t])]
        contract = IOContract(removed_outputs={p.output} if p.name is not None else set())
        fn = _reference(p.op, attrs, p, model.opset)
        for i, r in enumerate(results):
            contract.expectations[r.name] = _expect(fn, p.output, i)
        if p.name is None:  # the output keeps its name: declare what the op changes of it, and only that
            if result_dtype != dtype:
                contract.changed_types.add(name)
            if result_shape != shape:
                contract.changed_dims.add(name)
        shown = ", ".join(f"{k}={v}" for k, v in attrs.items() if k != "to")
        what = f"{p.op}{f' to {p.to}' if p.to else ''}{f' ({shown})' if shown else ''}"
        moved = (
            f"the tensor before it is now '{tensor.name}'" if p.name is None else f"'{p.output}' is no longer an output"
        )
        notes = [
            f"{what} appended at {p.output} ({describe(dtype, shape)}) -> "
            + ", ".join(f"{r.name} ({describe(r.dtype, r.shape)})" for r in results)
            + f"; {moved}"
        ]
        return PassResult(True, contract, notes)

    def default_tolerance(self, model: ModelIR) -> Tolerance | None:
        """Softmax and Sigmoid: a few ulps of the appended output's type (the model after the pass);
        the other ops are exact."""
        p = self.params
        if p.op not in FLOAT_ONLY:
            return None
        result = next((t for t in model.graph.outputs if t.name == (p.name or p.output)), None)
        return TOLERANCE.get(str(result.dtype)) if result is not None and result.dtype is not None else None

    def _attrs(self, opset: int, dtype: np.dtype) -> dict[str, Any]:
        p = self.params
        if p.op == "Softmax":
            return {"axis": self._axis(opset)}
        if p.op == "ArgMax":
            attrs: dict[str, Any] = {"axis": self._axis(opset), "keepdims": int(p.keepdims is not False)}
            return {**attrs, "select_last_index": 1} if p.select_last_index else attrs
        if p.op == "TopK":
            return {"axis": self._axis(opset), "largest": int(p.largest is not False), "sorted": 1}
        if p.op == "Transpose":
            return {"perm": list(p.perm)} if p.perm is not None else {}
        if p.op == "Cast":
            from onnx import helper

            return {"to": int(helper.np_dtype_to_tensor_dtype(_np(str(p.to))))}
        return {}

    def _extra_inputs(self, g: gs.Graph, dtype: np.dtype) -> list[gs.Tensor]:
        import numpy as np
        import onnx_graphsurgeon as gs

        p = self.params
        if p.op == "TopK":
            return [gs.Constant(unique_name(g, f"{p.output}_topk_k"), np.array([p.k], dtype=np.int64))]
        if p.op != "Clip":
            return []
        bounds: list[gs.Tensor] = []
        for key, value in (("min", p.min), ("max", p.max)):
            bounds.append(
                gs.Variable.empty()
                if value is None
                else gs.Constant(unique_name(g, f"{p.output}_clip_{key}"), np.array(value, dtype=dtype))
            )
        return bounds if p.max is not None else bounds[:1]


def _np(name: str) -> np.dtype:
    import numpy as np

    return np.dtype(name)


def _result_dtype(op: str, to: str | None) -> np.dtype:
    return _np("int64") if op == "ArgMax" else _np(str(to))


def _result_shape(op: str, shape: Shape, attrs: dict[str, Any], k: int | None) -> Shape:
    if shape is None:
        return None
    if op == "Transpose":
        perm = attrs.get("perm") or list(range(len(shape)))[::-1]
        return [shape[i] for i in perm]
    if op in ("ArgMax", "TopK"):
        axis = attrs["axis"] % len(shape)
        if op == "TopK":
            return [k if i == axis else d for i, d in enumerate(shape)]
        return [1 if i == axis else d for i, d in enumerate(shape) if i != axis or attrs["keepdims"]]
    return list(shape)


def _reference(op: str, attrs: dict[str, Any], p: AppendOp.Params, opset: int) -> Reference:
    """The op in numpy (float64 math for Softmax and Sigmoid), returning the list of its outputs."""
    import numpy as np

    def softmax(x: np.ndarray) -> list[np.ndarray]:
        axis = attrs["axis"] % x.ndim
        y = x.astype(np.float64) if opset >= 13 else x.astype(np.float64).reshape(int(np.prod(x.shape[:axis])), -1)
        ax = axis if opset >= 13 else 1
        e = np.exp(y - y.max(axis=ax, keepdims=True))
        return [(e / e.sum(axis=ax, keepdims=True)).reshape(x.shape).astype(x.dtype)]

    def argmax(x: np.ndarray) -> list[np.ndarray]:
        axis = attrs["axis"] % x.ndim
        if attrs.get("select_last_index"):
            idx = x.shape[axis] - 1 - np.argmax(np.flip(x, axis), axis=axis)
        else:
            idx = np.argmax(x, axis=axis)
        return [np.expand_dims(idx, axis).astype(np.int64) if attrs["keepdims"] else idx.astype(np.int64)]

    def topk(x: np.ndarray) -> list[np.ndarray]:
        axis, n = attrs["axis"] % x.ndim, x.shape[attrs["axis"]]
        if attrs["largest"]:  # descending; ties: lower index first (stable sort of the flipped array, reversed)
            order = (n - 1 - np.argsort(np.flip(x, axis), axis=axis, kind="stable")).take(
                range(n - 1, -1, -1), axis=axis
            )
        else:
            order = np.argsort(x, axis=axis, kind="stable")
        idx = order.take(range(p.k or 0), axis=axis)
        return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]

    funcs: dict[str, Reference] = {
        "Clip": lambda x: [
            np.clip(
                x,
                x.dtype.type(p.min) if p.min is not None else None,
                x.dtype.type(p.max) if p.max is not None else None,
            )
        ],
        "Sigmoid": lambda x: [(1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(x.dtype)],
        "Cast": lambda x: [x.astype(_np(str(p.to)))],
        "Transpose": lambda x: [np.transpose(x, attrs.get("perm"))],
        "Softmax": softmax,
        "ArgMax": argmax,
        "TopK": topk,
    }
    return funcs[op]


def _expect(fn: Reference, output: str, index: int) -> Callable[[Any, Any], np.ndarray]:
    def expected(outputs: Any, feed: Any) -> np.ndarray:
        return fn(outputs[output])[index]

    return expected
