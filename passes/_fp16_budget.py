"""to-fp16 to an accuracy budget: which nodes stay float32 so the converted model keeps its answers.

The search works on copies of the model as the pass received it (nodes are named by their index
in its top graph when the runtime refuses one). One pass of the float32 model over the calibration
and held-out samples gives the reference outputs and, on the calibration samples only, every
tensor's range (all tensors exposed in one session where the localizer's byte budget allows).
Hazards found before any conversion (constants and calibration values outside the half type's
range, integer-valued float arithmetic, reductions whose sum overflows, shape arithmetic, control
flow) stay float32 first; then each round converts the rest and runs it in one session: the first
calibration sample, the others only if that one is within rtol/atol (a miss on one sample is a
miss), the held-out ones only if the calibration samples meet the budget. A candidate in which
nothing converts is the source: its outputs are the scan's, nothing runs. Where the budget
misses, the converted model's tensors are
compared with the float32 ones the scan measured (:func:`surgeon.verify.localize.paired_tensors`;
the float32 model does not run again) on the samples the round judged (the first alone where it
missed already), the nodes whose output adds the most error to what their
inputs already carried stay float32, and the budget is checked again, until it holds on the
calibration samples and on the held-out ones. Kernels the runtime lacks for the half type are
found by asking it: a candidate that fails to load or run names the node, which stays float32
(and every node of the same op and attributes, remembered per provider).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.errors import UsageError, VerificationError
from surgeon.verify.compare import Tolerance, compare, error_stats

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from surgeon.ir.model import Model
    from surgeon.verify.runtime import Runtime

HALF_LIMITS = {"float16": (65504.0, 2048), "bfloat16": (3.3895313892515355e38, 256)}
"""Largest finite value and largest run of exactly representable integers of each half type."""
MOVEMENT = {
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Identity", "Shape", "Size", "Expand", "Tile", "Cast", "CastLike",
    "Constant", "ConstantOfShape", "DepthToSpace", "SpaceToDepth", "Pad", "ScatterND", "Dropout",
}  # fmt: skip
"""Ops that move or select values without arithmetic: not counted as compute nodes."""
EXACT = (MOVEMENT - {"Cast", "CastLike"}) | {
    "Relu", "Abs", "Neg", "Sign", "Max", "Min", "MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "Where",
    "Floor", "Ceil", "Round",
}  # fmt: skip
"""Ops whose output is one of their input values (moved, selected, negated, rounded to an integer):
they add no error of their own to what their inputs carry, unless one of those is a weight (whose
rounding is its consumer's). Not a Cast: one to float32 in the source casts to the half type in a
candidate, and rounds."""
CONTROL_FLOW = {"Loop", "Scan", "If"}
RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
"""Ops whose output is not a function of their inputs: never computed from constants alone."""
REDUCTIONS = {"ReduceSum": 1, "ReduceMean": 1, "ReduceL1": 1, "ReduceSumSquare": 2, "ReduceL2": 2}
"""Reductions whose running sum can overflow, with the power their terms are raised to."""
INT_TYPES = {2, 3, 4, 5, 6, 7, 9, 12, 13}
_FAILED_NODE = re.compile(r"(?:node with name '|node\. Name:')([^']*)'")
_UNNAMED_KERNEL = re.compile(r"implementation for (\w+)\(\d+\) node with name ''")
"""A kernel missing for a node of a function body onnxruntime expanded (its nodes have no names)."""
EXPOSED = 256
"""Tensors exposed per run at most, in the scan (the float32 model) and in attribution (the
candidate); the localizer's byte budget bounds each run too: a small model's every tensor in one
session. On CPU, exposing a half tensor rounds what onnxruntime would otherwise keep in float32
between the Casts it inserts, so the exposed candidate is not the one judged: every exposed tensor
is rounded, as a GPU's float16 kernels round them. Exposed all at once, every tensor's error is
measured in that one model (in batches, a node's output and its inputs' could come from two
differently rounded models) and a round costs one session instead of one per 32 tensors (the
benchmark's encoder at rtol 1e-3: 157 -> 117 ms, the same result); the budget is always
judged on the candidate as it is."""
KEEP_BYTES = 256 << 20
"""The float32 model's tensors on the calibration samples are kept for attribution up to this size."""
KERNEL_GAPS: dict[tuple[str, str, tuple[Any, ...]], str] = {}
"""(provider, half type, op, attributes) -> the runtime's words, for signatures that failed once."""


@dataclass
class Stat:
    amax: float
    integral: bool
    shape: tuple[int, ...]
    is_float: bool = True


@dataclass
class OutputVerdict:
    name: str
    ok: bool
    max_abs: float
    max_rel: float
    cosine: float
    budget: str
    within: bool = True
    """rtol/atol alone held (a miss on some samples is a miss on all; cosine is not: it is over the samples)."""

    def line(self) -> str:
        return (
            f"'{self.name}' max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}, cosine {self.cosine:.6f} "
            f"({'within' if self.ok else 'misses'} {self.budget})"
        )


@dataclass
class Outcome:
    """What the search chose, and what it cost."""

    kept: dict[int, str] = field(default_factory=dict)
    rounds: list[str] = field(default_factory=list)
    runs: int = 0
    provider: str = ""
    calibration: str = ""
    verdicts: list[OutputVerdict] = field(default_factory=list)


# the budget ------------------------------------------------------------------------------------


def output_budget(budget: Any, name: str) -> tuple[float, float, float | None]:
    """(rtol, atol, minimum cosine) of one output: its own entry's fields, else the budget's."""
    own = budget.outputs.get(name)
    pick = [getattr(own, k) if own is not None and getattr(own, k) is not None else getattr(budget, k) for k in
            ("rtol", "atol", "cosine")]  # fmt: skip
    return float(pick[0]), float(pick[1]), pick[2]


def step_tolerance(budget: Any, outputs: Sequence[str]) -> Tolerance:
    """The step's verification tolerance: the budget's (the loosest over outputs with their own;
    the search itself holds each output to its own budget)."""
    tols = [output_budget(budget, n)[:2] for n in outputs] or [(budget.rtol, budget.atol)]
    return Tolerance(max(t[0] for t in tols), max(t[1] for t in tols))


def judge(budget: Any, refs: Sequence[Mapping[str, Any]], gots: Sequence[Mapping[str, Any]]) -> list[OutputVerdict]:
    """Each output of ``gots`` against ``refs`` (float32) over every sample: rtol/atol as the
    verifier applies them (the reference rounded to a half output's type), cosine over the samples.
    The samples are compared a chunk at a time (:func:`~surgeon.verify.compare.error_stats`):
    memory stays bounded whatever the outputs' size (a language model's logits)."""
    import numpy as np

    out = []
    for name in refs[0]:
        rtol, atol, cos_min = output_budget(budget, name)
        tol = Tolerance(rtol, atol)
        shaped = [(ref[name], got[name]) for ref, got in zip(refs, gots)]
        if not all(isinstance(v, np.ndarray) for pair in shaped for v in pair) or any(
            a.shape != b.shape for a, b in shaped
        ):  # a sequence or a map (compared element-wise, no cosine), or a shape that differs
            checks = [compare(name, a, b, tol) for a, b in shaped]
            within = all(c.ok for c in checks)
            max_abs, max_rel = max(c.max_abs for c in checks), max(c.max_rel for c in checks)
            cosine = 1.0 if within else 0.0
        else:  # one sample's rounded copy at a time
            rounded = ((a.astype(b.dtype) if b.dtype != a.dtype and b.dtype.kind == "f" else a, b) for a, b in shaped)
            stats = error_stats(rounded, tol, total=sum(int(a.size) for a, _ in shaped))
            within, max_abs, max_rel, cosine = stats.ok, stats.max_abs, stats.max_rel, stats.cosine
        text = f"rtol {rtol:g}, atol {atol:g}" + (f", cosine >= {cos_min:g}" if cos_min is not None else "")
        ok = within and (cos_min is None or cosine >= cos_min)
        out.append(OutputVerdict(name, ok, max_abs, max_rel, cosine, text, within))
    return out


# the feeds -------------------------------------------------------------------------------------


def calibration_feeds(source: Model, path: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """(calibration samples, held-out samples, where they came from). An ``.npz`` holds, per input,
    its samples stacked on a new first axis; its last third (at least one) is held out. Without
    one, two seeded draws of the verifier's feed calibrate and a third is held out."""

    from surgeon.verify.config import VerifyConfig
    from surgeon.verify.feeds import conform, make_feed, read_npz
    from surgeon.verify.specs import graph_inputs

    specs = graph_inputs(source.proto)
    if path is None:
        cfg = VerifyConfig()
        dims = {str(d): cfg.default_dim for s in specs for d in s.dims if isinstance(d, str)}
        draws = [make_feed(specs, cfg, dims, seed_offset=k) for k in range(3)]
        note = "the verifier's random feed (2 samples, 1 held out): give calibration: data.npz of real inputs"
        return draws[:2], draws[2:], note
    arrays = read_npz(Path(path), specs, "calibration")
    counts = set()
    for s in specs:
        a = arrays[s.name]
        if a.ndim != len(s.dims) + 1:
            raise UsageError(
                f"{path}: '{s.name}' has shape {list(a.shape)}; calibration holds samples stacked on a first "
                f"axis ({len(s.dims) + 1} dims for this input of rank {len(s.dims)})"
            )
        arrays[s.name] = conform(path, s, a, stacked=True)
        counts.add(a.shape[0])
    if len(counts) != 1 or min(counts) < 2:
        raise UsageError(f"{path}: every input needs the same number of samples, at least 2 (found {sorted(counts)})")
    n = counts.pop()
    held = max(1, n // 3)
    samples = [{s.name: arrays[s.name][k] for s in specs} for k in range(n)]
    return samples[: n - held], samples[n - held :], f"{path}: {n - held} samples, {held} held out"


def cast_feeds(model: Model, feeds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The feeds as ``model`` declares its inputs (a float16 input gets the float32 feed rounded)."""
    import numpy as np
    from onnx import helper

    types = {
        vi.name: helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        for vi in model.proto.graph.input
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
    }
    return [
        {
            k: (np.asarray(v).astype(types[k]) if k in types and np.asarray(v).dtype != types[k] else v)
            for k, v in f.items()
        }
        for f in feeds
    ]


# graph facts -----------------------------------------------------------------------------------


@dataclass
class Graph:
    """The source's top graph, by node index: what each node reads and writes."""

    nodes: list[onnx.NodeProto]
    producer: dict[str, int]
    consumers: dict[str, list[int]]
    consts: dict[str, Any]
    outputs: list[str]
    inputs: list[str]
    constant: set[int] = field(default_factory=set)
    """Nodes that compute from constants alone (a Constant, an Identity or Reshape of a weight):
    their half rounding is a weight's, so like an initializer's it is their consumers' error."""
    weights: set[str] = field(default_factory=set)
    """Initializers (but those a graph input overrides)."""

    def is_constant(self, tensor: str) -> bool:
        """A weight, or what a node computes from constants alone."""
        return tensor in self.weights or self.producer.get(tensor, -1) in self.constant

    @classmethod
    def of(cls, model: Model) -> Graph:
        from onnx import numpy_helper

        g = model.proto.graph
        producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
        consumers: dict[str, list[int]] = {}
        for i, n in enumerate(g.node):
            for t in set(n.input):
                consumers.setdefault(t, []).append(i)
            for sub in _outer_reads(n):
                consumers.setdefault(sub, []).append(i)
        consts: dict[str, Any] = {}
        for t in g.initializer:
            if t.data_type == 1 and not t.external_data:
                consts[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value" and a.t.data_type == 1:
                        consts[n.output[0]] = numpy_helper.to_array(a.t)
        graph_inputs = [i.name for i in g.input]
        weights = {t.name for t in g.initializer} - set(graph_inputs)
        outputs = [o.name for o in g.output]
        return cls(list(g.node), producer, consumers, consts, outputs, graph_inputs, constant_nodes(g), weights)

    def label(self, i: int) -> str:
        n = self.nodes[i]
        return f"{n.name or n.output[0]} ({n.op_type})"


def constant_nodes(g: onnx.GraphProto) -> set[int]:
    """Indices of the nodes of ``g`` that compute from constants alone: initializers (not ones a
    graph input overrides), or the outputs of such nodes (a Constant, an Identity or a Reshape of a
    weight). A node with a subgraph is never one (its body may read anything), nor a random
    generator, nor an op of another domain than ONNX's."""
    from onnx import AttributeProto

    weights = {t.name for t in g.initializer} - {i.name for i in g.input}
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    constant: set[int] = set()
    changed = True
    while changed:  # to a fixpoint: a source may list its nodes out of order
        changed = False
        for i, n in enumerate(g.node):
            if (
                i in constant
                or n.domain not in ("", "ai.onnx")
                or n.op_type in RANDOM
                or any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in n.attribute)
            ):
                continue
            if all(not t or t in weights or producer.get(t) in constant for t in n.input):
                constant.add(i)
                changed = True
    return constant


def _outer_reads(node: onnx.NodeProto) -> set[str]:
    from surgeon.ir.walk import iter_proto_graphs, node_subgraphs

    names: set[str] = set()
    for sub in node_subgraphs(node):
        for g in iter_proto_graphs(sub):
            names.update(i for n in g.node for i in n.input)
    return names


def static_hazards(graph: Graph, dtype: str, fixed: Mapping[int, str]) -> dict[int, str]:
    """Nodes that stay float32 whatever the data: control flow, shape/index arithmetic, consumers of
    constants outside the half type's range."""
    import numpy as np

    top = HALF_LIMITS[dtype][0]
    kept: dict[int, str] = dict(fixed)
    for i, n in enumerate(graph.nodes):
        if n.op_type in CONTROL_FLOW:
            kept.setdefault(i, "control flow: its subgraphs stay float32, Casts at the boundary")
        for t in n.input:
            v = graph.consts.get(t)
            if v is not None and v.size and n.op_type not in ("Cast", "CastLike"):
                finite = v[np.isfinite(v)]
                if finite.size and float(np.abs(finite).max()) > top:
                    kept.setdefault(
                        i, f"constant '{t}' holds {float(finite[np.abs(finite).argmax()]):.3g}, outside {dtype}'s range"
                    )
    # shape arithmetic: float nodes whose every result ends as a size, an index or a Resize scale
    shape_like: set[str] = set()
    for n in graph.nodes:
        if n.op_type == "Cast" and _attr(n, "to") in INT_TYPES:
            shape_like.add(n.input[0])
        if n.op_type in ("Resize", "Upsample"):
            shape_like.update(n.input[1:3])
    for i in range(len(graph.nodes) - 1, -1, -1):
        n = graph.nodes[i]
        outs = [o for o in n.output if o]
        if outs and all(o in shape_like for o in outs) and n.op_type not in CONTROL_FLOW:
            if n.op_type != "Cast" or _attr(n, "to") == 1:
                kept.setdefault(i, "shape/index arithmetic: its values become sizes, indices or Resize scales")
            shape_like.update(t for t in n.input if t and t not in graph.consts)
    return kept


def data_hazards(graph: Graph, stats: Mapping[str, Stat], dtype: str) -> dict[int, str]:
    """Nodes that stay float32 for what the calibration feed shows: values beyond the half type's
    range, integer-valued values beyond its exact integers, reductions whose sum overflows."""
    top, exact = HALF_LIMITS[dtype]
    kept: dict[int, str] = {}

    def keep_around(t: str, why: str) -> None:
        if t in graph.producer:
            kept.setdefault(graph.producer[t], why)
        for c in graph.consumers.get(t, []):
            if graph.nodes[c].op_type not in ("Shape", "Size"):
                kept.setdefault(c, why)

    for t, s in stats.items():
        if s.amax > top:
            keep_around(t, f"'{t}' reaches {s.amax:.3g} on calibration, beyond {dtype}'s range ({top:g})")
        elif s.integral and exact < s.amax <= 2**24:
            keep_around(
                t,
                f"integer-valued float arithmetic: '{t}' holds integers up to {s.amax:.0f} "
                f"({dtype} is exact only to {exact})",
            )
    for i, n in enumerate(graph.nodes):
        power = REDUCTIONS.get(n.op_type)
        if power is None or not n.input or n.input[0] not in stats or n.output[0] not in stats:
            continue
        src, dst = stats[n.input[0]], stats[n.output[0]]
        terms = max(1, math.prod(src.shape) // max(1, math.prod(dst.shape)))
        bound = terms * src.amax**power
        if bound > top:
            kept.setdefault(
                i, f"reduction over {terms} terms: its running sum reaches up to {bound:.3g}, beyond {dtype}'s range"
            )
    return kept


def _attr(node: onnx.NodeProto, name: str) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def function_ops(node: onnx.NodeProto, opset: int, half: str, is_float: Callable[[str], bool]) -> set[str]:
    """The ops of the ONNX function an ONNX-domain node expands into (its schema's function, or the
    one built for its attributes and input types: float inputs in ``half``, others int64); empty
    where it has none, or where that function cannot be built."""
    import onnx
    from onnx import helper

    if node.domain not in ("", "ai.onnx") or not opset:
        return set()
    try:
        schema: Any = onnx.defs.get_schema(node.op_type, opset, "")
        if schema.has_function:
            body = schema.get_function_with_opset_version(opset) or schema.function_body
        elif schema.has_context_dependent_function:
            elem = onnx.TensorProto.BFLOAT16 if half == "bfloat16" else onnx.TensorProto.FLOAT16
            types = [
                helper.make_tensor_type_proto(elem if is_float(t) else onnx.TensorProto.INT64, None).SerializeToString()
                for t in node.input
            ]
            body = schema.get_context_dependent_function(node.SerializeToString(), types)
        else:
            return set()
        if isinstance(body, bytes):  # the schema API hands functions over serialized
            body = onnx.FunctionProto.FromString(body)
        return {n.op_type for n in body.node}
    except Exception:  # no schema at this opset, a function its builder refuses: nothing known
        return set()


def signature(node: onnx.NodeProto) -> tuple[Any, ...]:
    """An op and its scalar attributes: nodes a missing kernel applies to alike."""
    from onnx import helper

    attrs = []
    for a in sorted(node.attribute, key=lambda a: a.name):
        v = helper.get_attribute_value(a)
        if isinstance(v, (int, float, bytes, str)):
            attrs.append((a.name, v))
    return (node.domain, node.op_type, tuple(attrs))


def flops(node: onnx.NodeProto, stats: Mapping[str, Stat]) -> float:
    """A rough count of a node's multiply-adds (its output size for elementwise work)."""
    out = stats.get(node.output[0]) if node.output else None
    if out is None:
        return 0.0
    size = float(math.prod(out.shape)) if out.shape else 1.0
    first = stats.get(node.input[0]) if node.input else None
    if node.op_type in ("MatMul", "Gemm") and first is not None and first.shape:
        k = first.shape[0] if node.op_type == "Gemm" and _attr(node, "transA") else first.shape[-1]
        return 2.0 * size * k
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in stats:
        w = stats[node.input[1]].shape
        return (
            2.0 * size * float(math.prod(w[1:]))
            if node.op_type == "Conv"
            else 2.0 * float(math.prod(w)) * (math.prod(first.shape[2:]) if first is not None else 1)
        )
    return size


# the search -------------------------------------------------------------------------------------

Runs = Callable[[Sequence[Mapping[str, Any]]], list[dict[str, Any]]]
"""Outputs of one model on each of a batch of samples."""

More = Callable[[list[dict[str, Any]]], Sequence[Mapping[str, Any]]]
"""Given a candidate's outputs so far (on the samples run so far, in order), the further samples to
run it on; none: done."""

Convert = Callable[[Mapping[int, str], bool], "Model | None"]
"""Converts a copy of the source with these node indices kept float32 (names given to unnamed
nodes when the flag is set, so the runtime's errors name them); None where nothing would change:
the candidate is the source itself."""


class Search:
    def __init__(
        self,
        source: Model,
        convert: Convert,
        params: Any,
        runtime: Runtime,
        log: Callable[[str], None],
        floats: Set[str] = frozenset(),
    ):
        self.source, self.convert, self.p, self.runtime, self.log = source, convert, params, runtime, log
        self.floats = floats
        """Float tensors of the source as inference types them: what :meth:`merge_islands` reads
        where the scan has not run (no budget)."""
        self.graph = Graph.of(source)
        self.out = Outcome()
        self.stats: dict[str, Stat] = {}
        """Per tensor of the float32 model: its range on the calibration samples, and its shape."""
        self.named = False
        self._spreads: dict[tuple[str, int], float] = {}
        self.known: dict[int, tuple[Mapping[str, Any], dict[str, Any]]] = {}
        """id(sample) -> (the sample, the float32 model's outputs on it), for the samples the scan ran."""
        self.values: dict[str, list[Any]] | None = {}
        """Every tensor of the float32 model on the calibration samples, from the scan, while they
        fit in :data:`KEEP_BYTES` (attribution then runs only the candidate); else None."""
        """Candidates name their nodes by index from the first one the runtime refused on."""

    # runs
    @staticmethod
    def _follow(run: Runs, feeds: Sequence[Mapping[str, Any]], more: More | None) -> list[dict[str, Any]]:
        """``run`` on ``feeds``, then on the feeds ``more`` asks for given the outputs so far (the
        other calibration samples, the held-out ones), until it asks for none."""
        got = run(feeds)
        if more is None:
            return got
        extra = more(got)
        while extra:
            got += run(extra)
            extra = more(got)
        return got

    def _run(self, model: Model, feeds: Sequence[Mapping[str, Any]], more: More | None = None) -> list[dict[str, Any]]:
        """``model``'s outputs on ``feeds``, then on those ``more`` asks for: one session."""
        from surgeon.verify.runtime import model_session

        with model_session(self.runtime, model) as session:

            def run(batch: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
                self.out.runs += len(batch)
                return session(cast_feeds(model, batch))

            return self._follow(run, feeds, more)

    def _source_outputs(self, feeds: Sequence[Mapping[str, Any]], more: More | None) -> list[dict[str, Any]]:
        """The source's outputs on ``feeds`` (then on those ``more`` asks for): the float32 ones the
        scan computed for those samples, without a run; a sample it did not see runs the source."""
        from surgeon.verify.runtime import run_model

        def run(batch: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
            known = [self.known.get(id(f)) for f in batch]
            if all(k is not None and k[0] is f for k, f in zip(known, batch)):
                return [dict(k[1]) for k in known if k is not None]
            self.out.runs += len(batch)
            return run_model(self.runtime, self.source, batch)

        return self._follow(run, feeds, more)

    def candidate(
        self, kept: dict[int, str], feeds: Sequence[Mapping[str, Any]], more: More | None = None
    ) -> tuple[Model | None, list[dict[str, Any]]]:
        """The model converted with ``kept`` in float32, and its outputs on ``feeds`` (then on those
        ``more`` asks for, given them). A node the runtime has no half kernel for (it fails to load or
        run, naming it) joins ``kept``, with every node of its signature, and the candidate is made
        again. Where nothing converts the candidate is the source (None): its outputs are the
        float32 ones, known from the scan (no session, no run)."""
        from surgeon.verify.runtime import SessionLoadError

        half = self.p.dtype
        while True:
            for i, n in enumerate(self.graph.nodes):
                gap = KERNEL_GAPS.get(_gap_key(self.runtime.used, half, n))
                if gap is not None and i not in kept:
                    kept[i] = gap
            model = self.convert(kept, self.named)
            if model is None:
                return None, self._source_outputs(feeds, more)
            try:
                return model, self._run(model, feeds, more)
            except (SessionLoadError, VerificationError) as exc:
                if not self.named:  # again with every node named by its index, so the error names one
                    self.named = True
                    continue
                text = getattr(exc, "reason", None) or str(exc)
                m = _FAILED_NODE.search(text)
                idx = _named_index(m.group(1)) if m else None
                where = f"{self.runtime.used}ExecutionProvider" if self.runtime.used else "the runtime"
                if idx is not None and idx not in kept and idx < len(self.graph.nodes):
                    failed = {idx: f"no {half} kernel on {where}: {_short(text)}"}
                else:  # a node of a function body onnxruntime expanded a node into: those nodes
                    failed = self._expanded_into(text, kept, where)
                if not failed:
                    raise VerificationError(f"the model after to-fp16 fails in onnxruntime: {_short(text)}") from None
                for i, why in failed.items():
                    KERNEL_GAPS[_gap_key(self.runtime.used, half, self.graph.nodes[i])] = why
                    kept[i] = why
                    self.log(f"kernel: {self.graph.label(i)} stays float32 ({why})")
                self.merge_islands(kept)  # no Cast pair around the data movement between them

    def _expanded_into(self, text: str, kept: Mapping[int, str], where: str) -> dict[int, str]:
        """The nodes a load failure on an unnamed node comes from: onnxruntime expands a node it
        has no kernel for in the half type into its ONNX function (Softmax, LayerNormalization,
        Gelu...), whose nodes have no names, and fails on one of them (bfloat16 on CPU: Softmax
        into a ReduceMax that has no kernel either). Every node not yet kept whose function holds
        the op the runtime named, with why; none where the error names no op."""
        m = _UNNAMED_KERNEL.search(text)
        if m is None:
            return {}
        op, half = m.group(1), self.p.dtype
        opset = next((o.version for o in self.source.proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        why = f"no {half} kernel on {where}: onnxruntime expands it into its ONNX function, whose {op} has none"
        return {
            i: why
            for i, n in enumerate(self.graph.nodes)
            if i not in kept and op in function_ops(n, opset, half, self._is_float)
        }

    def reference_stats(self, feeds: Sequence[Mapping[str, Any]], measured: int) -> list[dict[str, Any]]:
        """One pass of the float32 model over ``feeds``: the range of every tensor on the first
        ``measured`` of them (the calibration samples; the held-out ones judge the result, nothing
        else), and the graph outputs on all of them. Every tensor is exposed at once where the
        localizer's byte budget allows (one session), else a batch at a time."""
        import numpy as np

        from surgeon.verify.localize import paired_tensors
        from surgeon.verify.runtime import run_model

        outputs = set(self.graph.outputs)
        refs: list[dict[str, Any]] = [{} for _ in feeds]
        sessions = self.runtime.sessions
        inputs = [(name, None, [f[name] for f in feeds], None) for name in (feeds[0] if feeds else {})]
        tensors = paired_tensors(self.runtime, self.source, feeds, batch=EXPOSED)
        held = 0
        for name, node, values, _ in itertools.chain(inputs, tensors):  # graph inputs too: FLOPs read their shapes
            if name in outputs:
                for ref, v in zip(refs, values):
                    ref[name] = v
            if node is not None and self.values is not None:  # kept for attribution, up to a bound
                self.values[name] = values[:measured]
                held += sum(int(getattr(v, "nbytes", 0)) for v in values[:measured])
                if held > KEEP_BYTES:
                    self.values = None
            arrays = [np.asarray(v) for v in values[:measured] if isinstance(v, np.ndarray)]
            if not arrays or arrays[0].dtype.kind != "f":
                if arrays:
                    self.stats[name] = Stat(0.0, False, tuple(arrays[0].shape), False)
                continue
            self.stats[name] = Stat(*_value_range(arrays), tuple(arrays[0].shape))
        for t, v in self.graph.consts.items():
            finite = v[np.isfinite(v)]
            amax = float(np.abs(finite).max()) if finite.size else 0.0
            integral = bool(finite.size > 1 and np.all(finite == np.round(finite)))  # a table, not one number
            self.stats.setdefault(t, Stat(amax, integral, tuple(v.shape)))
        self.out.runs += len(feeds) * (self.runtime.sessions - sessions)  # one run per feed and batch
        if any(set(r) != outputs for r in refs):  # an output no node produces (an input, a weight)
            refs = run_model(self.runtime, self.source, feeds)
            self.out.runs += len(feeds)
        return refs

    def contributions(
        self, model: Model, kept: Mapping[int, str], feeds: Sequence[Mapping[str, Any]]
    ) -> dict[int, float]:
        """Per converted node: how much its output's error (max abs over the samples, relative to
        the tensor's spread) exceeds the largest of its inputs'."""
        import numpy as np

        from surgeon.verify.localize import paired_tensors

        err: dict[str, float] = {}
        # tensors numpy cannot hold (bfloat16) are seen through the float32 Cast the converter put after them
        unseen = {vi.name for vi in model.proto.graph.value_info if vi.type.tensor_type.elem_type == 16}
        seen_as = {f"{t}_fp32": t for t in unseen}
        # what constant nodes make is not measured: their rounding is their consumers' error
        made_of_constants = {o for i in self.graph.constant for o in self.graph.nodes[i].output}
        sessions = self.runtime.sessions
        pairs = paired_tensors(
            self.runtime,
            self.source,
            feeds,
            model,
            cast_feeds(model, feeds),
            same_as=seen_as,
            skip=unseen | made_of_constants,
            batch=EXPOSED,
            measured=self.values,
        )
        for name, _node, ref, got in pairs:
            worst = 0.0
            for k, (a, b) in enumerate(zip(ref, got)):
                if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray) or a.dtype.kind != "f":
                    break
                if not a.size:
                    continue
                # the common case in two passes: every value finite on both sides (a non-finite
                # value on either makes the difference's largest magnitude non-finite: inf - inf is
                # NaN, and a difference past float32's range inf, measured below, not warned about)
                with np.errstate(invalid="ignore", over="ignore"):
                    diff = float(np.abs(np.subtract(a, b, dtype=np.result_type(a.dtype, np.float32))).max())
                if math.isfinite(diff):
                    worst = max(worst, diff / self._spread(name, k, a))
                    continue
                a64, b64 = a.astype(np.float64), b.astype(np.float64)
                bad = np.isfinite(a64) != np.isfinite(b64)
                if bad.any():
                    worst = math.inf
                    break
                fin = np.isfinite(a64)
                if fin.any():  # relative to the tensor's spread: an offset carries no signal
                    want = a64[fin]
                    scale = max(float(want.std()), 1e-3 * float(np.abs(want).max()), 1e-12)
                    worst = max(worst, float(np.abs(want - b64[fin]).max()) / scale)
            else:
                err[name] = worst
        self.out.runs += len(feeds) * (self.runtime.sessions - sessions)  # one run per feed and session
        out: dict[int, float] = {}
        for i, n in enumerate(self.graph.nodes):
            if i in kept or not n.output or n.output[0] not in err:
                continue
            if n.op_type in EXACT and not any(self.graph.is_constant(t) for t in n.input if t):
                continue  # its error is its inputs' (measured against its own spread it may look larger)
            ins = [err[t] for t in n.input if t in err]
            base = max(ins, default=0.0)
            mine = max(err.get(o, 0.0) for o in n.output if o)
            out[i] = math.inf if mine == math.inf and base != math.inf else mine - base
        return out

    def _spread(self, name: str, k: int, a: np.ndarray) -> float:
        """The scale a float32 tensor's error is measured against on sample ``k``: its standard
        deviation, at least a thousandth of its largest magnitude (``a`` is finite). The float32
        values are the same every round: measured once."""
        import numpy as np

        key = (name, k)
        scale = self._spreads.get(key)
        if scale is None:
            scale = max(float(a.std(dtype=np.float64)), 1e-3 * float(np.abs(a).max()), 1e-12)
            self._spreads[key] = scale
        return scale

    def merge_islands(self, kept: dict[int, str]) -> None:
        """Nodes between float32 nodes stay float32 too (no Cast pair around them); data movement
        fed only by float32 nodes follows them."""
        g = self.graph
        changed = True
        while changed:
            changed = False
            for i, n in enumerate(g.nodes):
                if i in kept or n.op_type in ("Shape", "Size"):
                    continue
                floats = [t for t in n.input if t and self._is_float(t)]
                srcs = [g.producer[t] for t in floats if t in g.producer]
                if not floats or not all(s in kept for s in srcs):
                    continue
                if not srcs and (n.op_type not in MOVEMENT or i in g.constant):
                    continue  # a compute node on weights and inputs is the search's; a constant, the converter's
                uses = [c for o in n.output for c in g.consumers.get(o, [])]
                to_out = any(o in g.outputs for o in n.output)
                # data movement fed by float32 nodes; any node whose every reader is float32 and whose
                # float inputs come from float32 nodes or are weights and graph inputs (a Gather of
                # an embedding table read only by float32 nodes: converted, a rounding for nothing)
                if (srcs and n.op_type in MOVEMENT) or (uses and all(c in kept for c in uses) and not to_out):
                    kept[i] = "between float32 nodes: kept with them (fewer Casts)"
                    changed = True

    def _is_float(self, tensor: str) -> bool:
        stat = self.stats.get(tensor)
        return stat.is_float if stat is not None else tensor in self.floats

    def run(self, fixed: Mapping[int, str]) -> Outcome:
        from surgeon.verify.runtime import SessionLoadError

        calib, held, note = calibration_feeds(self.source, self.p.calibration)
        self.out.calibration = note
        try:  # the reference outputs and the value ranges from one pass (one session where it fits)
            both = self.reference_stats([*calib, *held], len(calib))
            refs, held_refs = both[: len(calib)], both[len(calib) :]
            self.known = {id(f): (f, r) for f, r in zip([*calib, *held], both)}
        except SessionLoadError as exc:
            raise VerificationError(f"the model before to-fp16 fails in onnxruntime: {exc.reason}") from None
        self.out.provider = self.runtime.used
        kept = static_hazards(self.graph, self.p.dtype, fixed)
        for i, why in data_hazards(self.graph, self.stats, self.p.dtype).items():
            kept.setdefault(i, why)
        self.merge_islands(kept)
        self.log(f"hazards: {len(kept)} node(s) stay float32 before any error is measured")
        feeds, references = list(calib), list(refs)
        judged: list[list[OutputVerdict]] = []

        def follow(gots: list[dict[str, Any]]) -> Sequence[Mapping[str, Any]]:
            """After the first calibration sample, the others, unless it misses rtol/atol already
            (a miss on one sample is a miss: a failing round runs one sample); after them all, the
            held-out samples where the calibration ones meet the budget."""
            if len(gots) > len(feeds):
                return ()
            verdicts = judge(self.p.budget, references[: len(gots)], gots)
            if len(gots) < len(feeds) and all(v.within for v in verdicts):
                return feeds[len(gots) :]
            judged.append(verdicts)
            return held if len(gots) == len(feeds) and all(v.ok for v in verdicts) else ()

        for r in range(1, self.p.max_rounds + 1):
            # one conversion and one session for the calibration and the held-out samples
            model, both = self.candidate(kept, feeds[:1], follow)
            gots, held_gots = both[: len(feeds)], both[len(feeds) :]
            verdicts = judged[-1]
            where = (
                "on calibration"
                if len(gots) == len(feeds)
                else f"on calibration sample 1 of {len(feeds)} (the others not run: it misses already)"
            )
            line = f"round {r}: {len(kept)} node(s) float32; {where}: " + "; ".join(v.line() for v in verdicts)
            if all(v.ok for v in verdicts):
                held_verdicts = judge(self.p.budget, held_refs, held_gots)
                if all(v.ok for v in held_verdicts):
                    self.log(line + "; held-out: met")
                    self.out.rounds.append(line + "; held-out: met")
                    self.out.kept, self.out.verdicts = kept, held_verdicts
                    return self.out
                # the held-out samples stay held out: attribution keeps to the calibration feed (its
                # errors rank the nodes even where they are within the budget), so "met on held-out"
                # is always judged on samples no round chose nodes from
                line += "; held-out misses it: " + "; ".join(v.line() for v in held_verdicts if not v.ok)
            self.log(line)
            self.out.rounds.append(line)
            if model is None:  # the source itself misses (a cosine of 1 asked for): nothing to attribute
                break
            # on the samples this round judged: the first where it missed already (the others, not
            # run for the verdict, are not run for the ranking either; a cosine miss ran them all)
            scores = self.contributions(model, kept, feeds[: len(gots)])
            # the nodes that add error; only where none does (the error is the half I/O's, say), any
            candidates = sorted(((s, i) for i, s in scores.items()), reverse=True)
            candidates = [c for c in candidates if c[0] > 0] or candidates
            if not candidates:
                break
            # the worst tenth first, a larger share each round: at most a few rounds to all-float32
            room = max(1, math.ceil(len(candidates) * min(1.0, 0.1 * 2 ** (r - 1))))
            chosen = candidates[:room]
            for s, i in chosen:
                kept[i] = f"error contribution {s:.3g} (round {r})"
            self.merge_islands(kept)
        everything = {i: "all float32" for i in range(len(self.graph.nodes))}
        _, gots = self.candidate(dict(everything), feeds)
        floor = judge(self.p.budget, references, gots)
        if not all(v.ok for v in floor):
            raise VerificationError(
                "the budget cannot be met: even with every compute node in float32 the model misses it ("
                + "; ".join(v.line() for v in floor if not v.ok)
                + (
                    "): the half-precision inputs/outputs alone exceed it (keep_io_types: true keeps them float32)"
                    if not self.p.keep_io_types
                    else ")"
                )
            )
        raise VerificationError(
            f"the budget is not met after {self.p.max_rounds} round(s) with {len(kept)} node(s) in "
            f"float32 (last: {self.out.rounds[-1] if self.out.rounds else 'none'}); "
            "raise max_rounds or loosen the budget"
        )


def _value_range(arrays: Sequence[np.ndarray]) -> tuple[float, bool]:
    """(largest finite magnitude, whether every finite value is an integer (and there is one)) over
    ``arrays``, non-finite values left out. Without NaN or infinity, no filtered copies are made,
    and a first value that is not an integer settles the second answer."""
    import numpy as np

    amax, integral, seen = 0.0, True, False
    for a in arrays:
        if not a.size:
            continue
        top = float(np.abs(a).max())
        if not math.isfinite(top):  # NaN or infinity in it: measure the finite values only
            a = a[np.isfinite(a)]
            if not a.size:
                continue
            top = float(np.abs(a).max())
        seen = True
        amax = max(amax, top)
        if integral:
            first = float(a.flat[0])
            integral = first == round(first) and bool(np.all(a == np.round(a)))
    return amax, integral and seen


def _gap_key(provider: str, half: str, node: onnx.NodeProto) -> tuple[str, str, tuple[Any, ...]]:
    return (provider or "?", half, signature(node))


NODE_PREFIX = "surgeon_fp16_node_"
"""Candidates name every top-level node by its index, so the runtime's errors name it."""


def _named_index(name: str) -> int | None:
    prefix = NODE_PREFIX
    return int(name[len(prefix) :]) if name.startswith(prefix) and name[len(prefix) :].isdigit() else None


def _short(text: str) -> str:
    """The runtime's words, without the candidate's private node names."""
    text = text.split("Status Message:")[-1].strip()
    text = re.sub(r" (?:node )?with name '" + NODE_PREFIX + r"\d+'", "", text)
    return text[:160]
