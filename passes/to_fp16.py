"""Convert float32 tensors and weights to float16."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from surgeon.errors import PassPreconditionError, SurgeonError
from surgeon.ir.walk import gs_subgraphs, iter_graphs, iter_proto_graphs
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import require_names
from surgeon.verify.compare import Tolerance
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR
    from surgeon.passkit.infer import TypeMap

FP16_MAX = 65504.0
FLOAT, FLOAT16, BFLOAT16 = 1, 10, 16
HALF = {
    "float16": (FLOAT16, "tensor(float16)", FP16_MAX),
    "bfloat16": (BFLOAT16, "tensor(bfloat16)", 3.3895313892515355e38),
}
"""Per half type: its ONNX type number, its schema type string, its largest finite value."""
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


_CONTROL_FLOW = {"Loop", "Scan", "If"}
MARK = "surgeon.to_fp16"
"""Model metadata key to-fp16 leaves: a second application of the same half type changes nothing."""


class OutputBudget(PassParams):
    """One output's own budget (a field left out takes the budget's)."""

    rtol: float | None = Field(None, ge=0, description="relative tolerance, as the verifier applies it")
    atol: float | None = Field(None, ge=0, description="absolute tolerance")
    cosine: float | None = Field(None, ge=-1, le=1, description="minimum cosine similarity over the samples")


class Budget(PassParams):
    """The accuracy the converted model keeps against the float32 one."""

    rtol: float = Field(1e-2, ge=0, description="relative tolerance: |a-b| <= atol + rtol*|b|")
    atol: float = Field(1e-2, ge=0, description="absolute tolerance")
    cosine: float | None = Field(None, ge=-1, le=1, description="minimum cosine similarity over the samples")
    outputs: dict[str, OutputBudget] = Field(default_factory=dict, description="per output name: its own budget")


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
    they meet converted tensors: onnxruntime's CPU kernels have no float16 for them. Tensors of
    other types (float64, bfloat16, ints) are left alone, and so are
    sequences: sequence ops run in float32, with Casts where they meet converted tensors.

    Weights: one tensor at a time (ModelIR.values); converted weights are held in memory as
    float16 (half their float32 size), untouched ones stay on disk.

    With ``budget`` (and ``calibration``) the pass chooses the nodes that stay float32 so every
    output keeps its budget on calibration and held-out samples (see ``_fp16_budget``); Loop/Scan/If
    and their bodies stay float32, and nodes the runtime has no half kernel for stay float32 (found by
    running the converted model), with or without a budget. ``dtype: bfloat16`` converts to bfloat16.

    Contract: approximate, the budget's tolerance, else the pass's ``tolerance`` (rtol 1e-2, atol 1e-2;
    bfloat16 5e-2) unless the recipe overrides it.
    Without ``keep_io_types`` the verifier feeds float16 inputs (the float32 feed, rounded) and
    compares float16 outputs; those inputs and outputs are declared as changing dtype (and nothing
    else: their dims must stay). With it, the interface stays as it was.
    """

    class Params(PassParams):
        keep_io_types: bool = Field(True, description="keep float32 graph inputs and outputs (Casts at the boundary)")
        block_ops: list[str] = Field(default_factory=list, description="op types that stay float32")
        block_nodes: list[str] = Field(default_factory=list, description="node names that stay float32")
        dtype: Literal["float16", "bfloat16"] = Field("float16", description="the half type: float16 or bfloat16")
        budget: Budget | None = Field(
            None,
            description="accuracy the converted model keeps against the float32 one (rtol, atol, cosine, outputs); "
            "with it the pass chooses the nodes that stay float32, and it is the step's tolerance",
        )
        calibration: str | None = Field(
            None, description=".npz of input samples stacked on a first axis (the last third held out)"
        )
        max_rounds: int = Field(8, ge=1, description="rounds of error attribution at most (with a budget)")

    params: Params
    tolerance = Tolerance(rtol=1e-2, atol=1e-2)

    def requires(self, model: ModelIR) -> None:
        # read from the protobuf while the graph is not built: run() copies the model as it came
        # before it imports the graph, and a copy of the protobuf costs no export
        if model.built:
            nodes = sorted({n.name for g in iter_graphs(model.graph) for n in g.nodes if n.name})
            outs = [t.name for t in model.graph.outputs]
        else:
            assert model.proto_graph is not None
            nodes = sorted({n.name for g in iter_proto_graphs(model.proto_graph) for n in g.node if n.name})
            outs = [o.name for o in model.proto_graph.output]
        require_names(self.params.block_nodes, nodes, "node", "block_nodes")
        if self.params.budget is not None:
            require_names(list(self.params.budget.outputs), outs, "output", "budget.outputs")
        if self.params.dtype == "bfloat16" and not self.params.keep_io_types:
            raise PassPreconditionError(
                "dtype bfloat16 needs keep_io_types: true (the verifier feeds and compares float16 inputs and "
                "outputs only)"
            )
        if self.params.calibration is not None and self.params.budget is None:
            raise PassPreconditionError("calibration is read only with a budget: add budget: {rtol: ..., atol: ...}")

    def default_tolerance(self, model: ModelIR) -> Tolerance | None:
        """The budget, where there is one (the loosest of the outputs' own: the pass held each
        output to its own); else rtol/atol 1e-2 (float16) or 5e-2 (bfloat16)."""
        from surgeon.passes._fp16_budget import step_tolerance

        if self.params.budget is not None:
            return step_tolerance(self.params.budget, [t.name for t in model.graph.outputs])
        return self.tolerance if self.params.dtype == "float16" else Tolerance(rtol=5e-2, atol=5e-2)

    def run(self, model: ModelIR) -> PassResult:
        import numpy as np

        from surgeon.ir.adapter import ModelIR as _IR
        from surgeon.ir.model import Model
        from surgeon.passes._fp16_budget import Search, calibration_feeds
        from surgeon.passkit.infer import tensor_types
        from surgeon.verify.runtime import Runtime

        done = {p.key: p.value for p in model.shell.metadata_props}.get(MARK)
        if done is not None and done.split(" ")[0] == self.params.dtype:
            return PassResult(False, IOContract(), [f"already converted by to-fp16 ({MARK}: {done}): nothing to do"])
        source = model.to_model()
        # the last conversion: its kept set, its model and converter. The first converts ``model``
        # itself (often the result: no import), later ones a fresh import of ``source``
        done_by: dict[str, Any] = {}
        # every candidate is the same graph before conversion: inferred once, from the protobuf
        types = tensor_types(_IR.from_model(source, lazy=True))

        def convert(kept: Mapping[int, str], name_nodes: bool) -> Model | None:
            ir = _IR.from_model(Model(source.proto, base_dir=source.base_dir)) if done_by else model
            _prepare(ir, types)
            conv = _Converter(ir, self.params, set(kept), name_nodes, graph.constant)
            conv.run()
            made = ir.to_model() if conv.changed else None  # None: the source, nothing to run
            done_by.update(kept=None if name_nodes else frozenset(kept), conv=conv, made=made)
            return made

        runtime = Runtime("auto", spin=False)  # many short runs, each judged between: no spinning workers
        log: list[str] = []
        floats = {t for t, (dtype, _) in types.items() if dtype is not None and np.dtype(dtype).kind == "f"}
        search = Search(source, convert, self.params, runtime, log.append, floats)
        graph = search.graph
        fixed = {
            i: "blocked by the recipe (block_ops/block_nodes)"
            for i, n in enumerate(graph.nodes)
            if n.op_type in self.params.block_ops or (n.name and n.name in self.params.block_nodes)
        }
        details: dict[str, Any] = {"dtype": self.params.dtype}
        if self.params.budget is not None:
            try:
                outcome = search.run(fixed)
            except SurgeonError:
                if done_by:  # the model as it came: a failed pass leaves it unedited
                    model.replace_graph(source.proto)
                raise
            kept = outcome.kept
        else:  # no budget: everything converts but what the runtime cannot run (asked on one feed)
            outcome = search.out
            kept = dict(fixed)
            for i, n in enumerate(graph.nodes):
                if n.op_type in _CONTROL_FLOW:
                    kept[i] = "control flow: its subgraphs stay float32, Casts at the boundary"
            search.merge_islands(kept)
            try:
                search.candidate(kept, calibration_feeds(source, None)[0][:1])
            except SurgeonError as exc:  # the step's verification says what fails, at its own sizes
                log.append(f"kernel check skipped: {exc}")
            outcome.provider = runtime.used
        if done_by.get("kept") == frozenset(kept):  # the model last run is the result: no second conversion
            conv = done_by["conv"]  # nor a second export: its message becomes the model's
            if done_by["made"] is not None:
                model.take(done_by["made"].proto)
        else:
            if done_by or len(model.graph.nodes) != len(graph.nodes):  # converted as a candidate: afresh
                model.replace_graph(source.proto)
            _prepare(model)
            conv = _Converter(model, self.params, set(kept), False, graph.constant)
            conv.run()
        details |= _summary(graph, search, outcome, kept, conv, self.params)
        idle = details["compute_nodes"] and not details["half_compute_nodes"]
        if not conv.changed or idle:  # every compute node stays float32: the model as it came, and why
            if idle and conv.changed:  # what did convert is data movement and weights between Casts
                log.append(
                    f"no compute node runs in {self.params.dtype} on {details['provider']}: the model is left as "
                    f"it came (converting only data movement between float32 nodes adds {conv.cast_nodes} Cast(s))"
                )
            model.take(source.proto)
            return PassResult(False, IOContract(), _summary_lines(details, log), details)
        model.shell.metadata_props.add(key=MARK, value=f"{self.params.dtype} ({len(kept)} node(s) kept float32)")
        contract = IOContract()
        if not self.params.keep_io_types:  # only these ports change, and only their dtype
            for name in conv.fp16_inputs:
                contract.feed_transforms[name] = _half_feed(name)
            for name in conv.fp16_outputs:
                contract.expectations[name] = _half_output(name)
            contract.changed_types = {*conv.fp16_inputs, *conv.fp16_outputs}
        notes = conv.notes() + _summary_lines(details, log)
        return PassResult(True, contract, notes, details)


def _prepare(model: ModelIR, types: TypeMap | None = None) -> None:
    """Types on every tensor shape inference knows (the converter reads dtypes): ``types``, when
    inference already ran on the same graph."""
    from surgeon.passkit.infer import tensor_types

    types = tensor_types(model) if types is None else types
    for t in model.graph.tensors().values():
        if t.dtype is None and t.name in types:
            t.dtype = types[t.name][0]


def _summary(
    graph: Any, search: Any, outcome: Any, kept: Mapping[int, str], conv: _Converter, p: Any
) -> dict[str, Any]:
    """The report's figures: nodes kept float32 and why, half-precision fraction of compute nodes
    and of estimated FLOPs, Casts, rounds, runs, the provider that judged."""
    from surgeon.passes._fp16_budget import MOVEMENT, flops

    compute = [i for i, n in enumerate(graph.nodes) if n.op_type not in MOVEMENT and i not in conv.non_float]
    half = [i for i in compute if i in conv.half_nodes]
    total = sum(flops(graph.nodes[i], search.stats) for i in compute)
    half_flops = sum(flops(graph.nodes[i], search.stats) for i in half)
    provider = outcome.provider or "CPU"
    out: dict[str, Any] = {
        "kept_float32": [
            {"node": graph.nodes[i].name or graph.nodes[i].output[0], "op": graph.nodes[i].op_type, "why": why}
            for i, why in sorted((dict.fromkeys(conv.followers, FOLLOWER) | dict(kept)).items())
            if i < len(graph.nodes)
        ],
        "compute_nodes": len(compute),
        "half_compute_nodes": len(half),
        "half_fraction": round(len(half) / len(compute), 4) if compute else 0.0,
        "half_flops_fraction": round(half_flops / total, 4) if total and search.stats else None,
        "casts": conv.cast_nodes,
        "rounds": len(outcome.rounds),
        "round_log": list(outcome.rounds),
        "onnxruntime_runs": outcome.runs,
        "provider": f"{provider}ExecutionProvider",
    }
    if p.budget is not None:
        out["budget"] = p.budget.model_dump(exclude_none=True)
        out["calibration"] = outcome.calibration
        out["held_out"] = [v.line() for v in outcome.verdicts]
    if provider == "CPU":
        out["provider_note"] = (
            "judged on CPUExecutionProvider: its float16 kernels compute in float32 inside many ops, so GPU error "
            "can be larger"
            if p.dtype == "float16"
            else "judged on CPUExecutionProvider, which has bfloat16 kernels for few ops: those without one stay "
            "float32 here (a CUDA run converts more)"
        )
    return out


FOLLOWER = "computes from constants read only as float32: not rounded, no Cast"


def _summary_lines(d: Mapping[str, Any], log: list[str]) -> list[str]:
    flops_text = (
        f", {d['half_flops_fraction']:.0%} of estimated FLOPs" if d.get("half_flops_fraction") is not None else ""
    )
    lines = [
        f"{d['half_compute_nodes']}/{d['compute_nodes']} compute nodes in {d['dtype']} ({d['half_fraction']:.0%}"
        f"{flops_text}), {d['casts']} Cast node(s); {d['onnxruntime_runs']} onnxruntime run(s) on {d['provider']}"
    ]
    if "provider_note" in d:
        lines.append(d["provider_note"])
    if "calibration" in d:
        lines.append(f"calibration: {d['calibration']}")
    lines += log
    lines += [f"float32: {k['node']} ({k['op']}): {k['why']}" for k in d["kept_float32"]]
    if d.get("held_out"):
        lines.append("held-out: " + "; ".join(d["held_out"]))
    return lines


def _half_feed(name: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    import numpy as np

    return lambda feed: np.asarray(feed[name]).astype(np.float16)


def _half_output(name: str) -> Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], np.ndarray]:
    import numpy as np

    return lambda outs, feed: np.asarray(outs[name]).astype(np.float16)


class _Converter:
    def __init__(
        self,
        model: ModelIR,
        params: ToFP16.Params,
        kept: set[int] | None = None,
        name_nodes: bool = False,
        constant: set[int] | None = None,
    ) -> None:
        import numpy as np
        from onnx import helper

        self.model, self.p = model, params
        self.to_half, self.half_str, self.half_max = HALF[params.dtype]
        self.f32, self.f16 = np.dtype(np.float32), np.dtype(helper.tensor_dtype_to_np_dtype(self.to_half))
        self.kept = kept or set()
        self.constant = constant or set()
        """Indices of the top-level nodes that compute from constants alone (:func:`constant_nodes`)."""
        self.name_nodes = name_nodes
        self.converted = 0
        self.clamped = 0
        self.casts = 0
        self.cast_nodes = 0
        self.half_nodes: set[int] = set()
        self.non_float: set[int] = set()
        self.fp16_inputs: list[str] = []
        self.fp16_outputs: list[str] = []
        self._blocked: set[int] = set()
        self.followers: set[int] = set()
        """Top-level nodes that stay float32 because they compute from constants that every reader
        takes as float32 (:meth:`_follow_constants`)."""
        self._cast_cache: dict[tuple[int, int, str], gs.Variable] = {}
        self._fp16_consts: dict[int, gs.Constant] = {}
        self._const_sources: dict[int, gs.Constant] = {}

    @property
    def changed(self) -> bool:
        return bool(self.converted or self.casts or self.fp16_inputs)

    def notes(self) -> list[str]:
        out = [f"converted {self.converted} tensor(s) to {self.p.dtype}, inserted {self.casts} Cast(s)"]
        if self.clamped:
            out.append(
                f"clamped {self.clamped} weight value(s) outside the {self.p.dtype} range to +-{self.half_max:g}"
            )
        return out

    def blocked(self, node: gs.Node) -> bool:
        return (
            id(node) in self._blocked
            or node.op in self.p.block_ops
            or node.op in SEQUENCE_OPS
            or bool(node.name)
            and node.name in self.p.block_nodes
        )

    def run(self) -> None:
        from surgeon.passes._fp16_budget import NODE_PREFIX

        top = self.model.graph
        for i, node in enumerate(top.nodes):
            if i in self.kept or node.op in _CONTROL_FLOW:
                self._blocked.add(id(node))
            if not any(o.dtype == self.f32 for o in node.outputs):
                self.non_float.add(i)
        for node in top.nodes:  # everything inside a float32 subgraph stays float32
            if id(node) in self._blocked:
                for sub in gs_subgraphs(node):
                    self._blocked.update(id(n) for g in iter_graphs(sub) for n in g.nodes)
        self._follow_constants(top)
        index = {id(n): i for i, n in enumerate(top.nodes)}
        if self.name_nodes:
            for i, node in enumerate(top.nodes):
                node.name = f"{NODE_PREFIX}{i}"
        for g in list(iter_graphs(self.model.graph)):
            self._graph(g, top=g is self.model.graph)
        for node in top.nodes:
            if id(node) in index and any(_was_converted(o) for o in node.outputs):
                self.half_nodes.add(index[id(node)])
        for original, half in self._originals():
            if not original.outputs:  # every consumer converted: the half weight keeps the name
                half.name = original.name
        _drop_cast_pairs(top)
        results = {id(t) for g in iter_graphs(top) for t in g.outputs}
        for g in iter_graphs(top):
            _drop_identity_casts(g, results)
        self.cast_nodes = sum(n.op == "Cast" for g in iter_graphs(top) for n in g.nodes)

    def _follow_constants(self, top: gs.Graph) -> None:
        """A node that computes from constants alone (:attr:`constant`: a Constant, an Identity or
        a Reshape of a weight; TorchScript shares equal weights through Identity nodes) whose every
        reader takes it as float32 (a node that stays float32, a Resize's scales) stays float32 too.
        Converted, its value would be rounded to the half type and cast back for them: a node kept
        float32 for its accuracy would read a rounded weight, a Resize rounded scales (the dynamo
        exporter writes them as Constant nodes), through a Cast that cancels nothing."""
        results = {id(t) for t in top.outputs}
        changed = True
        while changed:
            changed = False
            for i in range(len(top.nodes) - 1, -1, -1):
                node = top.nodes[i]
                if i not in self.constant or self.blocked(node):
                    continue
                outs = [o for o in node.outputs if o.dtype == self.f32]
                if not outs or any(id(o) in results or not o.outputs for o in outs):
                    continue
                if all(
                    self._wanted(c, k, self.blocked(c), o) == self.f32
                    for o in outs
                    for c in o.outputs
                    for k, t in enumerate(c.inputs)
                    if t is o
                ):
                    self._blocked.add(id(node))
                    self.followers.add(i)
                    changed = True

    def _originals(self) -> list[tuple[gs.Constant, gs.Constant]]:
        return [(orig, self._fp16_consts[i]) for i, orig in self._const_sources.items()]

    def _graph(self, g: gs.Graph, top: bool) -> None:
        import onnx_graphsurgeon as gs

        if top and not self.p.keep_io_types:
            for t in g.inputs:
                if t.dtype == self.f32:
                    self._mark(t)
                    self.fp16_inputs.append(t.name)
        if not _is_sorted(g):  # each node's types are settled from its inputs': producers first
            g.toposort()
        before = len(g.nodes)  # the Casts made below are appended after these
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
        _in_order(g, before)

    def _wanted(self, node: gs.Node, i: int, blocked: bool, t: gs.Tensor) -> Any:
        if blocked or (node.op, i) in HAZARD_SLOTS or node.op in DTYPE_ATTR_OPS:  # *Like follow their input
            return self.f32
        allowed, follows = _slot(node, i, self.model.opset)
        if allowed is not None and self.half_str not in allowed:
            return self.f32
        if node.op == "Cast" or not follows:
            return None  # any float type is fine here: keep what it is
        return self.f16

    def _outputs(self, node: gs.Node) -> None:
        import onnx_graphsurgeon as gs

        if node.op == "Cast" and int(node.attrs.get("to", 0)) == FLOAT:
            node.attrs["to"] = self.to_half
        elif node.op in ("Constant", "ConstantOfShape") and isinstance(node.attrs.get("value"), gs.Constant):
            value = node.attrs["value"]
            if value.dtype == self.f32:
                node.attrs["value"] = self._fp16_const(value)
        elif node.op == "ConstantOfShape" and node.attrs.get("value") is None:  # the default: float32 zero
            import numpy as np

            node.attrs["value"] = gs.Constant(f"{node.outputs[0].name}_value", np.zeros(1, self.f16))
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
            if o.dtype == self.f32 and (allowed is None or self.half_str in allowed):
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
            over = finite & (np.abs(values) > self.half_max)
            self.clamped += int(over.sum())
            half = np.where(over, np.sign(values) * self.half_max, values).astype(self.f16)
            self._fp16_consts[id(t)] = gs.Constant(f"{t.name}_fp16" if t.name else "", half)
            self._const_sources[id(t)] = t
            self.converted += 1
        return self._fp16_consts[id(t)]

    def _cast(self, g: gs.Graph, node: gs.Node, t: gs.Tensor, want: Any) -> gs.Variable:
        import onnx_graphsurgeon as gs

        key = (id(g), id(t), str(want))  # per graph: a subgraph cannot read a Cast made in a sibling
        if key not in self._cast_cache:
            suffix = "fp32" if want == self.f32 else "fp16"
            name = f"{t.name}_{suffix}"
            if g is not self.model.graph:  # a Cast inside a subgraph: a name no other scope uses
                from surgeon.passkit.ops import unique_name

                name = unique_name(self.model.graph, f"{name}_{g.name or 'body'}")
            out = gs.Variable(name, dtype=want, shape=t.shape)
            g.nodes.append(
                gs.Node(
                    "Cast",
                    name=f"{name}_cast" if g is not self.model.graph else f"{t.name}_to_{suffix}",
                    attrs={"to": FLOAT if want == self.f32 else self.to_half},
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
            made = self._cast_cache.get((id(g), id(t), str(self.f32)))
            if made is not None:  # a float32 reader's Cast makes it already: its output is the graph's
                made.name = name
                g.outputs[i] = made
                continue
            out = gs.Variable(name, dtype=self.f32, shape=t.shape)
            g.nodes.append(gs.Node("Cast", name=f"{name}_to_fp32", attrs={"to": FLOAT}, inputs=[t], outputs=[out]))
            g.outputs[i] = out
            self.casts += 1


def _is_sorted(g: gs.Graph) -> bool:
    """Whether every input made by a node of ``g`` is made by a node before its reader."""
    mine = {id(n) for n in g.nodes}
    done: set[int] = set()
    for n in g.nodes:
        if any(t.inputs and id(t.inputs[0]) in mine and id(t.inputs[0]) not in done for t in n.inputs):
            return False
        done.add(id(n))
    return True


def _in_order(g: gs.Graph, before: int) -> None:
    """Put the Casts appended after the first ``before`` nodes of ``g`` (in order) right after the
    node that makes their input, or first where that is a graph input, a weight or an outer value:
    one linear pass (onnx-graphsurgeon's sort costs more than the conversion on a small graph)."""
    old, new = g.nodes[:before], g.nodes[before:]
    if not new:
        return
    mine = {id(n) for n in old}
    after: dict[int, list[gs.Node]] = {}
    first: list[gs.Node] = []
    made = mine | {id(c) for c in new}
    for c in new:
        maker = c.inputs[0].inputs[0] if c.inputs and c.inputs[0].inputs else None
        if maker is None or id(maker) not in made:
            first.append(c)
        else:
            after.setdefault(id(maker), []).append(c)
    order: list[gs.Node] = []

    def put(n: gs.Node) -> None:
        order.append(n)
        for c in after.get(id(n), ()):
            put(c)

    for n in [*first, *old]:
        put(n)
    g.nodes = order


def _drop_cast_pairs(g: gs.Graph) -> None:
    """A Cast whose input is a Cast from the type it casts back to (float32 -> half -> float32, or
    half -> float32 -> half) reads the first Cast's input instead; the first goes when nothing
    else reads it."""
    for node in list(g.nodes):
        if node.op != "Cast" or not node.inputs or len(node.inputs[0].inputs) != 1:
            continue
        first = node.inputs[0].inputs[0]
        if first.op != "Cast" or not first.inputs:
            continue
        origin = first.inputs[0]
        if origin.dtype is None or origin.dtype != node.outputs[0].dtype or node.outputs[0] in g.outputs:
            continue
        _bypass(g, node, origin)
        mid = first.outputs[0]
        if not mid.outputs and mid not in g.outputs:
            first.outputs.clear()
            first.inputs.clear()
            g.nodes.remove(first)


def _drop_identity_casts(g: gs.Graph, results: set[int]) -> None:
    """A Cast to the type its input already has (an exporter's bool -> bool after a Trilu, say)
    computes nothing: its readers read its input, and it goes (unless its output is an output of
    some graph: ``results``, by tensor identity)."""
    import numpy as np
    from onnx import helper

    for node in list(g.nodes):
        if node.op != "Cast" or len(node.inputs) != 1 or len(node.outputs) != 1 or id(node.outputs[0]) in results:
            continue
        src = node.inputs[0]
        try:
            same = src.dtype is not None and np.dtype(src.dtype) == helper.tensor_dtype_to_np_dtype(node.attrs["to"])
        except (KeyError, TypeError, ValueError):
            continue
        if same:
            _bypass(g, node, src)


def _bypass(g: gs.Graph, node: gs.Node, value: gs.Tensor) -> None:
    """Remove ``node`` (a Cast of ``g``), its readers reading ``value`` instead."""
    out = node.outputs[0]
    for consumer in list(out.outputs):
        for k, t in enumerate(consumer.inputs):
            if t is out:
                consumer.inputs[k] = value
    node.outputs.clear()
    node.inputs.clear()
    g.nodes.remove(node)


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
