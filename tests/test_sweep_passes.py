"""Every pass on models nobody here wrote: the onnx package's backend test data.

Wherever onnxruntime runs the original, each pass runs with the params a user would pick for the
model (tests/sweep_passes.py) and is verified on the model's own stored inputs. A clean refusal (a
SurgeonError naming the reason) is counted and classified, never a wrong result; a crash or a
failed verification is a bug. The default suite sweeps a fixed sample; ``-m slow`` sweeps every
stored model and prints the per-pass table the README records.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from surgeon import Pipeline
from surgeon.errors import SurgeonError
from surgeon.ir.save import save
from surgeon.pass_api import Pass
from surgeon.passes.fold_constants import FoldConstants
from surgeon.passes.simplify import Simplify
from tests.sweep import Case, node_cases, normalise, stored_cases
from tests.sweep_passes import PASSES, Tally, sweep_case

NODE_SAMPLE = int(os.environ.get("SURGEON_SWEEP_PASS_NODE_SAMPLE", "120"))
SAMPLE = (
    "pytorch-converted/test_Linear_no_bias",  # IR 3: weights listed as inputs
    "pytorch-converted/test_MaxPool2d_stride_padding_dilation",  # opset 12
    "pytorch-operator/test_operator_symbolic_override_nested",  # several outputs
    "pytorch-operator/test_operator_non_float_params",
    "simple/test_sequence_model1",  # sequences
    "simple/test_sequence_model8",  # a symbolic input dim
    "simple/test_expand_shape_model1",  # an input holding a shape
    "simple/test_strnorm_model_monday_casesensintive_nochangecase",  # strings
)
"""A fixed sample for the default suite, chosen so that each pass the stored models can exercise
runs on at least one of them."""
COVERABLE = sorted(set(PASSES) - {"promote-resize-scales", "fix-dims"})
"""No stored model has a Resize; the only one with a symbolic input dim fails on random data."""


def _stored(names: tuple[str, ...] | None = None) -> list[Case]:
    return [c for c in stored_cases() if names is None or c.name in names]


def _sweep(cases: list[Case], tmp: Path) -> Tally:
    tally = Tally()
    for case in cases:
        sweep_case(case, tmp, tally)
    print(f"\nmodels: {dict(tally.counts.pop('(models)', Counter()))}\n{tally.table()}")
    for (name, outcome), examples in sorted(tally.examples.items()):
        print(f"{name} / {outcome}: {examples[0]}")
    return tally


def test_every_pass_on_a_sample_of_stored_models(tmp_path: Path) -> None:
    tally = _sweep(_stored(SAMPLE), tmp_path)
    assert not tally.bugs, "\n".join(tally.bugs)
    assert sorted(tally.counts) == PASSES
    for name in COVERABLE:  # every pass really ran (verified) on some model of the sample
        assert tally.counts[name]["covered"] >= 1, (name, dict(tally.counts[name]))


@pytest.mark.slow
def test_every_pass_on_every_stored_model(tmp_path: Path) -> None:
    tally = _sweep(_stored(), tmp_path)
    assert not tally.bugs, "\n".join(tally.bugs)
    assert all(tally.counts[name]["covered"] >= 1 for name in COVERABLE)


# --- simplify and fold-constants over the node tests (outputs compared with the original's) -----


def _run(path: Path, inputs: list[np.ndarray]) -> list[object]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs)))


def _close(a: object, b: object) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            isinstance(a, (list, tuple))
            and isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(_close(x, y) for x, y in zip(a, b))
        )
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if x.dtype.kind in "fc":
        return bool(np.allclose(x, y, rtol=1e-3, atol=1e-5, equal_nan=True))
    return bool(np.array_equal(x, y))


def sweep_pass(make: type[Pass], cases: list[Case], tmp: Path) -> Counter:
    counts: Counter = Counter()
    failures, refusals = [], []
    for case in cases:
        src = tmp / "src.onnx"
        onnx.save(normalise(case.model), str(src))
        try:
            refs = [_run(src, ins) for ins, _ in case.data_sets]
        except Exception:
            counts["not runnable by onnxruntime"] += 1
            continue
        try:
            result = Pipeline([make()], verify={"mode": "off"}).run(src)
            out = tmp / "out.onnx"
            save(result.model, out)
        except SurgeonError as exc:
            refusals.append(f"{case.name}: {str(exc).splitlines()[0][:160]}")
            counts["refused with a reason"] += 1
            continue
        try:
            got = [_run(out, ins) for ins, _ in case.data_sets]
        except Exception as exc:
            failures.append(f"{case.name}: result does not run: {str(exc).splitlines()[0][:200]}")
            continue
        if all(_close(g, r) for gs_, rs in zip(got, refs) for g, r in zip(gs_, rs)):
            counts["covered"] += 1
            counts["modified"] += int(result.steps[0].modified)
        else:
            failures.append(f"{case.name}: outputs differ from the original's")
    print(f"\n{make.name} sweep: {dict(counts)}; refusals: {refusals[:5]}{' ...' if len(refusals) > 5 else ''}")
    assert not failures, "\n".join(failures)
    return counts


@pytest.mark.parametrize("make", [Simplify, FoldConstants], ids=["simplify", "fold-constants"])
def test_node_models_sample(make: type[Pass], tmp_path: Path) -> None:
    counts = sweep_pass(make, node_cases(NODE_SAMPLE, seed=1), tmp_path)
    assert counts["covered"] >= NODE_SAMPLE // 3


FP16_NODE_SAMPLE = NODE_SAMPLE // 4
ORT_FP16_LIMITS = {"RMSNormalization"}
"""Ops whose onnxruntime kernel binds two type parameters the schema keeps apart (X and scale of
RMSNormalization-23 must be one type there): a float32 X with a float16 scale does not load."""


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_to_fp16_on_node_models_never_makes_a_model_onnxruntime_refuses(keep_io_types: bool) -> None:
    """to-fp16 over a sample of the node tests (function-expanded models included: CastLike,
    Constant value_float(s), ConstantOfShape without a value): where the source loads, the
    converted model loads too and verifies, or the step is refused with a reason."""
    from surgeon.passes.to_fp16 import ToFP16

    counts: Counter[str] = Counter()
    broken = []
    cases = node_cases(FP16_NODE_SAMPLE, seed=3)
    for case in cases:
        if {n.op_type for n in case.model.graph.node} & ORT_FP16_LIMITS:
            continue
        try:
            res = Pipeline([ToFP16(keep_io_types=keep_io_types)], verify={"device": "cpu"}).run(normalise(case.model))
        except SurgeonError as exc:
            if "cannot load the edited model" in str(exc):
                broken.append(f"{case.name}: {str(exc)[:240]}")
            counts["refused"] += 1
            continue
        counts["ok" if res.ok else "failed"] += 1
    print(f"\nto-fp16 (keep_io_types={keep_io_types}) over {len(cases)} node models: {dict(counts)}")
    assert not broken, "\n".join(broken)
    assert counts["ok"] >= len(cases) // 3, counts
