"""Every pass over models nobody here wrote, with the params a user would pick for each model.

For each model onnxruntime runs, each pass gets params derived from the model (see
:func:`params_for`), runs through a verified :class:`~surgeon.Pipeline` fed the model's own stored
inputs, and the outcome is one of: ``covered`` (verified), ``n/a`` (nothing for the pass to work
on: no Resize, a single output...), ``refused: <class>`` (a SurgeonError with a clear reason), or a
bug: a crash (any other exception) or a failed verification.
"""

from __future__ import annotations

import re
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from surgeon import Pipeline
from surgeon.errors import SurgeonError
from surgeon.pass_api import get_pass
from tests.sweep import Case, normalise

FLOAT = onnx.TensorProto.FLOAT
CONVERT_TARGET = 17
MAX_OPSET = 21
Params = dict[str, Any]


def _real_inputs(g: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in g.initializer}
    return [v for v in g.input if v.name not in inits]


def _elem(vi: onnx.ValueInfoProto) -> int:
    return vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0


def _dims(vi: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    tt = vi.type.tensor_type
    return list(tt.shape.dim) if vi.type.HasField("tensor_type") and tt.HasField("shape") else []


def _opset(m: onnx.ModelProto) -> int:
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 1)


def _first_intermediate(g: onnx.GraphProto) -> str | None:
    outs = {o.name for o in g.output}
    return next((o for n in g.node for o in n.output if o and o not in outs), None)


def _extract(g: onnx.GraphProto) -> Params | None:
    """One node of the main graph: its computed (non-constant) inputs to its first output."""
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    for n in g.node:
        ins = [i for i in dict.fromkeys(n.input) if i and i not in consts]
        if ins and n.output and n.output[0] and not any(a.type in (5, 10) for a in n.attribute):
            return {"inputs": ins, "outputs": [n.output[0]]}
    return None


def _mark_dynamic(g: onnx.GraphProto) -> Params | None:
    """Axis 0 of every input that has the first input's static batch becomes ``batch`` (not of
    integer vectors: those are shapes or indices, not batched data)."""
    ins = [v for v in _real_inputs(g) if len(_dims(v)) >= 2 or (_dims(v) and _elem(v) == FLOAT)]
    if not ins or not _dims(ins[0])[0].HasField("dim_value"):
        return None
    size = _dims(ins[0])[0].dim_value
    marked = {v.name: {0: "batch"} for v in ins if _dims(v)[0].HasField("dim_value") and _dims(v)[0].dim_value == size}
    return {"inputs": marked}


def _fix_dims(g: onnx.GraphProto, feed: dict[str, np.ndarray] | None = None) -> Params | None:
    """Every symbolic input dim fixed to the size of the stored input (the data the user deploys
    with), 1 where there is none or it is empty."""
    dims: dict[str, int] = {}
    for v in _real_inputs(g):
        for axis, d in enumerate(_dims(v)):
            if not d.HasField("dim_value"):
                data = (feed or {}).get(v.name)
                size = int(data.shape[axis]) if data is not None and axis < data.ndim else 1
                dims[d.dim_param or f"{v.name}:{axis}"] = max(size, 1)
    return {"dims": dims} if dims else None


def params_for(name: str, m: onnx.ModelProto, feed: dict[str, np.ndarray] | None = None) -> Params | None:
    """What a user would set for pass ``name`` on model ``m`` (fed ``feed``); None where the pass
    has nothing to do."""
    g = m.graph
    ins, outs = _real_inputs(g), list(g.output)
    float_in = next((v.name for v in ins if _elem(v) == FLOAT), None)
    float_out = next((v.name for v in outs if _elem(v) == FLOAT), None)
    first_init = g.initializer[0].name if len(g.initializer) else None
    inter = _first_intermediate(g)
    opset = _opset(m)
    plans: dict[str, Callable[[], Params | None]] = {
        "add-outputs": lambda: {"tensors": [inter]} if inter else None,
        "append-op": lambda: {"output": float_out, "op": "Sigmoid"} if float_out else None,
        "cleanup": dict,
        "convert-opset": lambda: {"opset": max(CONVERT_TARGET, opset + 1)} if opset < MAX_OPSET else None,
        "dedupe-initializers": dict,
        "extract": lambda: _extract(g),
        "fix-dims": lambda: _fix_dims(g, feed),
        "fix-negative-indices": dict,
        "fold-constants": dict,
        "mark-dynamic": lambda: _mark_dynamic(g),
        "prepend-op": lambda: {"input": float_in, "op": "Cast", "dtype": "float16"} if float_in else None,
        "promote-initializer": lambda: {"names": [first_init]} if first_init else None,
        "promote-resize-scales": lambda: {} if any(n.op_type in ("Resize", "Upsample") for n in g.node) else None,
        "remove-nodes": dict,
        "remove-outputs": lambda: {"outputs": [outs[-1].name]} if len(outs) >= 2 else None,
        "rename-io": lambda: (
            ({"inputs": {ins[0].name: "sweep_in"}} if ins else {})
            | ({"outputs": {outs[0].name: "sweep_out"}} if outs else {})
        ),
        "set-metadata": lambda: {"producer_name": "sweep", "model_version": 7, "metadata_props": {"swept": "yes"}},
        "simplify": dict,
        "strip-doc": dict,
        "to-fp16": lambda: {"keep_io_types": True},
    }
    return plans[name]()


PASSES = sorted(
    ["add-outputs", "append-op", "cleanup", "convert-opset", "dedupe-initializers", "extract", "fix-dims",
     "fix-negative-indices", "fold-constants", "mark-dynamic", "prepend-op", "promote-initializer",
     "promote-resize-scales", "remove-nodes", "remove-outputs", "rename-io", "set-metadata", "simplify",
     "strip-doc", "to-fp16"]
)  # fmt: skip

REFUSALS = [
    (
        r"onnx\.version_converter|cannot convert|no (adapter|converter)|version conver",
        "the version converter cannot convert an op",
    ),
    (r"shape inference failed", "ONNX shape inference fails on the model"),
    (r"cannot tell the element type|unknown rank|has no shape|shape is unknown", "a tensor's type or shape is unknown"),
    (r"onnxsim failed", "onnxsim fails"),
    (r"has no attribute 'nbytes'", "onnx-graphsurgeon cannot fold a constant sequence"),
    (r"constant folding failed", "onnxruntime cannot run the constant subgraph"),
    (r"needs opset (\d+) or newer", "the model's opset is older than the op needs (append-op: 11)"),
    (r"not a float|float32|floating", "the tensor is not float32"),
    (r"is inside a subgraph|subgraph", "the tensor is inside a subgraph"),
]


def classify(message: str) -> str:
    for pattern, label in REFUSALS:
        if re.search(pattern, message, re.I):
            return label
    return "other: " + message[:120]


@dataclass
class Tally:
    """Outcomes per pass: ``counts[pass][outcome]`` and example messages per outcome."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    bugs: list[str] = field(default_factory=list)

    def add(self, pass_name: str, outcome: str, example: str = "") -> None:
        self.counts.setdefault(pass_name, Counter())[outcome] += 1
        if example:
            self.examples.setdefault((pass_name, outcome), []).append(example)

    def table(self) -> str:
        lines = ["| pass | covered | refused | n/a | refusal classes |", "|---|---:|---:|---:|---|"]
        for name in sorted(self.counts):
            c = self.counts[name]
            refused = {k[len("refused: ") :]: v for k, v in c.items() if k.startswith("refused: ")}
            classes = "; ".join(f"{k} ({v})" for k, v in sorted(refused.items(), key=lambda kv: -kv[1])) or "-"
            lines.append(f"| `{name}` | {c['covered']} | {sum(refused.values())} | {c['n/a']} | {classes} |")
        return "\n".join(lines)


def runnable(case: Case, path: Path) -> bool:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        sess.run(None, dict(zip(names, case.data_sets[0][0])))
    except Exception:
        return False
    return True


def _dims_of(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, int]:
    """verify.dims binding the model's symbolic input dims to the sizes of its stored inputs."""
    dims: dict[str, int] = {}
    for vi in _real_inputs(model.graph):
        for axis, d in enumerate(_dims(vi)):
            if not d.HasField("dim_value") and vi.name in feed and axis < feed[vi.name].ndim:
                dims[d.dim_param or f"{vi.name}:{axis}"] = int(feed[vi.name].shape[axis])
    return dims


def _random_data_invalid(src: Path) -> bool:
    """Whether the source itself fails on the verifier's random data (integer inputs holding
    shapes or indices): then a probe on random data cannot tell anything about the pass."""
    from surgeon.ir.model import load
    from surgeon.verify.config import VerifyConfig
    from surgeon.verify.feeds import make_feed
    from surgeon.verify.specs import graph_inputs

    proto = load(src).proto
    for seed in range(3):
        try:
            feed = make_feed(
                graph_inputs(proto),
                VerifyConfig(seed=seed),
                {s: 3 for s in (_fix_dims(proto.graph) or {"dims": {}})["dims"]},
            )
            so = ort.SessionOptions()
            so.log_severity_level = 4
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"]).run(None, feed)
        except Exception:
            return True
    return False


RANDOM_DATA = "the verifier's random data is invalid for the model (an integer input holds a shape)"
UNPROVED = "no probe proves the axis dynamic (no output follows it), and the sweep accepts none"
UNPROVED_LINE = "this probe proves nothing about it"


def _verify(model: onnx.ModelProto, feed: dict[str, np.ndarray], npz: Path, fixed: Params | None) -> dict[str, Any]:
    dims = {k: v for k, v in _dims_of(model, feed).items() if v > 0}  # an empty axis is data, not a size to choose
    verify: dict[str, Any] = {"mode": "each", "device": "cpu", "rtol": 1e-3, "atol": 1e-5, "dims": dims}
    if fixed is not None and fixed["dims"] != dims:  # fix-dims to sizes the stored data lacks
        verify["dims"] = dict(fixed["dims"])
    elif all(a.dtype.kind in "biufc" for a in feed.values()):  # .npz holds no strings
        verify["inputs"] = str(npz)
    return verify


def sweep_case(case: Case, tmp: Path, tally: Tally, passes: list[str] = PASSES) -> None:
    from surgeon.errors import VerificationError

    src = tmp / "src.onnx"
    model = normalise(case.model)
    onnx.save(model, str(src))
    if not case.data_sets or not runnable(case, src):
        tally.add("(models)", "not runnable by onnxruntime")
        return
    tally.add("(models)", "swept")
    feed = {vi.name: np.asarray(a) for vi, a in zip(_real_inputs(model.graph), case.data_sets[0][0])}
    npz = tmp / "inputs.npz"
    np.savez(npz, **feed)  # type: ignore[arg-type]
    for name in passes:
        params = params_for(name, model, feed)
        if params is None:
            tally.add(name, "n/a")
            continue
        where = f"{case.name} {name} {params}"
        lines: list[str] = []
        try:
            result = Pipeline(
                [get_pass(name)(params)], verify=_verify(model, feed, npz, params if name == "fix-dims" else None)
            ).run(src)
            lines = result.failures()
            failure = "; ".join(lines)
        except VerificationError as exc:  # the result does not load or run: a bug
            failure = str(exc).splitlines()[0]
        except SurgeonError as exc:
            line = str(exc).splitlines()[0][:300]
            if not re.search(r"onnxruntime (failed to run|cannot load) the model", line):
                tally.add(name, "refused: " + classify(line), f"{case.name}: {line}")
                continue
            failure = line  # a check could not run: a bug, unless the source fails on the data too
        except Exception as exc:  # a crash: a bug in the pass
            tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
            tally.bugs.append(f"{where}: crashed: {type(exc).__name__}: {str(exc)[:300]}\n{''.join(tb[-4:])}")
            continue
        if not failure:
            tally.add(name, "covered")
        elif "onnxruntime failed to run the model" in failure and _random_data_invalid(src):
            tally.add(name, "refused: " + RANDOM_DATA, f"{case.name}: {failure[:300]}")
        elif lines and all(UNPROVED_LINE in line for line in lines):
            tally.add(name, "refused: " + UNPROVED, f"{case.name}: {failure[:300]}")
        else:
            tally.bugs.append(f"{where}: verification failed: {failure[:400]}")
