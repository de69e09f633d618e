"""Convert float32 tensors and weights to float16."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from surgeon.ir.walk import iter_graphs
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import require_names
from surgeon.verify.compare import Tolerance
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR

FP16_MAX = 65504.0
FLOAT, FLOAT16 = 1, 10
HAZARD_SLOTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
"""Inputs that stay float32 whatever their schema allows (onnxruntime kernels want float32)."""
SEQUENCE_OPS = {
    "SequenceEmpty",
    "SequenceConstruct",
    "SequenceInsert",
    "SequenceAt",
    "SequenceErase",
    "SequenceLength",
    "SplitToSequence",
    "ConcatFromSequence",
    "SequenceMap",
}
"""Sequences stay float32 (their element type is not tracked): these ops run as if blocked."""
DTYPE_ATTR_OPS = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "EyeLike",
    "Bernoulli",
    "Multinomial",
}
"""Generators whose ``dtype`` attribute sets the output type: left float32 (no float16 kernels)."""


@register_pass("to-fp16")
class ToFP16(Pass):
    """Convert float32 weights and activations to float16, with casts where float32 must stay.

    ``keep_io_types`` keeps float32 graph inputs/outputs (Cast nodes at the boundary).
    Blocked ops / nodes (``block_ops``, ``block_nodes``) run in float32, with Casts inserted where
    they meet converted tensors. Resize ``roi``/``scales`` (and any input whose schema does not
    allow float16) stay float32. Weights outside the float16 range are clamped to +-65504; the
    count is reported. Cast ``to`` and Constant / ConstantOfShape values follow (``value_float(s)``
    and ConstantOfShape's default zero become float16 tensors; CastLike's output follows its
    target). Generators with a ``dtype`` (RandomNormal, EyeLike...) stay float32, with Casts where
    they meet converted tensors: onnxruntime's CPU kernels have no float16 for them. Tensors of other types (float64, bfloat16, ints) are left alone, and so are
    sequences: sequence ops run in float32, with Casts where they meet converted tensors.

    Weights: one tensor at a time (ModelIR.values); converted weights are held in memory as
    float16 (half their float32 size), untouched ones stay on disk.

    Contract: approximate, the pass's ``tolerance`` (rtol 1e-2, atol 1e-2) unless the recipe overrides it.
    Without ``keep_io_types`` the verifier feeds float16 inputs (the float32 feed, rounded) and
    compares float16 outputs; those inputs and outputs are declared as changing dtype (and nothing
    else: their dims must stay). With it, the interface stays as it was.
    """

    class Params(PassParams):
        keep_io_types: bool = Field(True, description="keep float32 graph inputs and outputs (Casts at the boundary)")
        block_ops: list[str] = Field(default_factory=list, description="op types that stay float32")
        block_nodes: list[str] = Field(default_factory=list, description="node names that stay float32")

    params: Params
    tolerance = Tolerance(rtol=1e-2, atol=1e-2)

    def requires(self, model: ModelIR) -> None:
        nodes = sorted({n.name for g in iter_graphs(model.graph) for n in g.nodes if n.name})
        require_names(self.params.block_nodes, nodes, "node", "block_nodes")

    def run(self, model: ModelIR) -> PassResult:
        from surgeon.passkit.infer import tensor_types

        g = model.graph
        types = tensor_types(model)
        for t in g.tensors().values():
            if t.dtype is None and t.name in types:
                t.dtype = types[t.name][0]
        conv = _Converter(model, self.params)
        conv.run()
        if not conv.changed:
            return PassResult(False, IOContract())
        contract = IOContract()
        if not self.params.keep_io_types:  # only these ports change, and only their dtype
            for name in conv.fp16_inputs:
                contract.feed_transforms[name] = _half_feed(name)
            for name in conv.fp16_outputs:
                contract.expectations[name] = _half_output(name)
            contract.changed_types = {*conv.fp16_inputs, *conv.fp16_outputs}
        return PassResult(True, contract, conv.notes())


def _half_feed(name: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    import numpy as np

    return lambda feed: np.asarray(feed[name]).astype(np.float16)


def _half_output(name: str) -> Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], np.ndarray]:
    import numpy as np

    return lambda outs, feed: np.asarray(outs[name]).astype(np.float16)


class _Converter:
    def __init__(self, model: ModelIR, params: ToFP16.Params) -> None:
        import numpy as np

        self.model, self.p = model, params
        self.f32, self.f16 = np.dtype(np.float32), np.dtype(np.float16)
        self.converted = 0
        self.clamped = 0
        self.casts = 0
        self.fp16_inputs: list[str] = []
        self.fp16_outputs: list[str] = []
        self._cast_cache: dict[tuple[int, str], gs.Variable] = {}
        self._fp16_consts: dict[int, gs.Constant] = {}
        self._const_sources: dict[int, gs.Constant] = {}

    @property
    def changed(self) -> bool:
        return bool(self.converted or self.casts or self.fp16_inputs)

    def notes(self) -> list[str]:
        out = [f"converted {self.converted} tensor(s) to float16, inserted {self.casts} Cast(s)"]
        if self.clamped:
            out.append(f"clamped {self.clamped} weight value(s) outside the float16 range to +-{FP16_MAX:g}")
        return out

    def blocked(self, node: gs.Node) -> bool:
        return (
            node.op in self.p.block_ops
            or node.op in SEQUENCE_OPS
            or bool(node.name)
            and node.name in self.p.block_nodes
        )

    def run(self) -> None:
        for g in list(iter_graphs(self.model.graph)):
            self._graph(g, top=g is self.model.graph)
        for original, half in self._originals():
            if not original.outputs:  # every consumer converted: the float16 weight keeps the name
                half.name = original.name

    def _originals(self) -> list[tuple[gs.Constant, gs.Constant]]:
        return [(orig, self._fp16_consts[i]) for i, orig in self._const_sources.items()]

    def _graph(self, g: gs.Graph, top: bool) -> None:
        import onnx_graphsurgeon as gs

        if top and not self.p.keep_io_types:
            for t in g.inputs:
                if t.dtype == self.f32:
                    self._mark(t)
                    self.fp16_inputs.append(t.name)
        for node in list(g.nodes):
            blocked = self.blocked(node)
            for i, t in enumerate(node.inputs):
                if t.is_empty() or t.dtype not in (self.f32, self.f16):
                    continue
                want = self._wanted(node, i, blocked, t)
                if isinstance(t, gs.Constant):
                    if want == self.f16 and t.dtype == self.f32:
                        node.inputs[i] = self._fp16_const(t)
                elif want is not None and t.dtype != want and (t.dtype == self.f32 or _was_converted(t)):
                    node.inputs[i] = self._cast(g, node, t, want)
            if not blocked:
                self._outputs(node)
        if top:
            self._graph_outputs(g)
        g.toposort()

    def _wanted(self, node: gs.Node, i: int, blocked: bool, t: gs.Tensor) -> Any:
        if blocked or (node.op, i) in HAZARD_SLOTS or node.op in DTYPE_ATTR_OPS:  # *Like follow their input
            return self.f32
        allowed, follows = _slot(node, i, self.model.opset)
        if allowed is not None and "tensor(float16)" not in allowed:
            return self.f32
        if node.op == "Cast" or not follows:
            return None  # any float type is fine here: keep what it is
        return self.f16

    def _outputs(self, node: gs.Node) -> None:
        import onnx_graphsurgeon as gs

        if node.op == "Cast" and int(node.attrs.get("to", 0)) == FLOAT:
            node.attrs["to"] = FLOAT16
        elif node.op in ("Constant", "ConstantOfShape") and isinstance(node.attrs.get("value"), gs.Constant):
            value = node.attrs["value"]
            if value.dtype == self.f32:
                node.attrs["value"] = self._fp16_const(value)
        elif node.op == "ConstantOfShape" and node.attrs.get("value") is None:  # the default: float32 zero
            import numpy as np

            node.attrs["value"] = gs.Constant(f"{node.outputs[0].name}_value", np.zeros(1, np.float16))
        elif node.op == "Constant" and ("value_float" in node.attrs or "value_floats" in node.attrs):
            # a float attribute can only hold float32: the value becomes a float16 tensor
            import numpy as np

            floats = (
                node.attrs.pop("value_float") if "value_float" in node.attrs else list(node.attrs.pop("value_floats"))
            )
            node.attrs["value"] = self._fp16_const(
                gs.Constant(f"{node.outputs[0].name}_value", np.asarray(floats, np.float32))
            )
        elif node.op == "CastLike":  # the output takes the target's type, which may just have become float16
            target = node.inputs[1] if len(node.inputs) > 1 else None
            if target is not None and target.dtype == self.f16 and node.outputs[0].dtype == self.f32:
                self._mark(node.outputs[0])
            return
        elif node.op == "Cast" or node.op in DTYPE_ATTR_OPS:
            return
        for k, o in enumerate(node.outputs):
            allowed = _slot(node, -1 - k, self.model.opset)[0]
            if o.dtype == self.f32 and (allowed is None or "tensor(float16)" in allowed):
                self._mark(o)

    def _mark(self, t: gs.Tensor) -> None:
        t.dtype = self.f16
        t._surgeon_fp16 = True  # type: ignore[attr-defined]
        self.converted += 1

    def _fp16_const(self, t: gs.Constant) -> gs.Constant:
        import numpy as np
        import onnx_graphsurgeon as gs

        if id(t) not in self._fp16_consts:
            values = np.asarray(self.model.values(t))
            finite = np.isfinite(values)
            over = finite & (np.abs(values) > FP16_MAX)
            self.clamped += int(over.sum())
            half = np.where(over, np.sign(values) * FP16_MAX, values).astype(np.float16)
            self._fp16_consts[id(t)] = gs.Constant(f"{t.name}_fp16" if t.name else "", half)
            self._const_sources[id(t)] = t
            self.converted += 1
        return self._fp16_consts[id(t)]

    def _cast(self, g: gs.Graph, node: gs.Node, t: gs.Tensor, want: Any) -> gs.Variable:
        import onnx_graphsurgeon as gs

        key = (id(t), str(want))
        if key not in self._cast_cache:
            suffix = "fp32" if want == self.f32 else "fp16"
            out = gs.Variable(f"{t.name}_{suffix}", dtype=want, shape=t.shape)
            g.nodes.append(
                gs.Node(
                    "Cast",
                    name=f"{t.name}_to_{suffix}",
                    attrs={"to": FLOAT if want == self.f32 else FLOAT16},
                    inputs=[t],
                    outputs=[out],
                )
            )
            self._cast_cache[key] = out
            self.casts += 1
        return self._cast_cache[key]

    def _graph_outputs(self, g: gs.Graph) -> None:
        import onnx_graphsurgeon as gs

        for i, t in enumerate(g.outputs):
            if t.dtype != self.f16 or not _was_converted(t):
                continue
            if not self.p.keep_io_types:
                self.fp16_outputs.append(t.name)
                continue
            name = t.name
            t.name = f"{name}_fp16"
            out = gs.Variable(name, dtype=self.f32, shape=t.shape)
            g.nodes.append(gs.Node("Cast", name=f"{name}_to_fp32", attrs={"to": FLOAT}, inputs=[t], outputs=[out]))
            g.outputs[i] = out
            self.casts += 1


def _was_converted(t: gs.Tensor) -> bool:
    return bool(getattr(t, "_surgeon_fp16", False))


_SCHEMAS: dict[tuple[str, int], Any] = {}


def _slot(node: gs.Node, i: int, opset: int) -> tuple[list[str] | None, bool]:
    """(types the schema allows at input ``i`` (output ``-1 - i`` when negative), whether its
    type variable is shared with another input or an output)."""
    import onnx

    key = (node.op, opset)
    if key not in _SCHEMAS:
        try:
            _SCHEMAS[key] = onnx.defs.get_schema(node.op, opset, node.domain or "")
        except Exception:  # custom domains: no schema, anything goes
            _SCHEMAS[key] = None
    schema = _SCHEMAS[key]
    if schema is None:
        return None, True
    params = list(schema.inputs) if i >= 0 else list(schema.outputs)
    idx = i if i >= 0 else -1 - i
    if not params:
        return None, True
    param = params[min(idx, len(params) - 1)]  # variadic: the last one repeats
    type_str = param.type_str
    allowed = None
    for c in schema.type_constraints:
        if c.type_param_str == type_str:
            allowed = list(c.allowed_type_strs)
    if allowed is None:
        allowed = [type_str]
    others = [p.type_str for p in list(schema.inputs) + list(schema.outputs) if p is not param]
    return allowed, type_str in others
