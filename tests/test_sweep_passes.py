"""simplify and fold-constants on models nobody here wrote: the onnx package's backend test data.

Wherever onnxruntime runs the original, the optimised model must run and give the original's
outputs within tolerance. A clean refusal (a SurgeonError naming the reason) is counted and
printed, never a wrong result; anything else is a bug.
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

NODE_SAMPLE = int(os.environ.get("SURGEON_SWEEP_PASS_NODE_SAMPLE", "120"))


def _run(path: Path, inputs: list[np.ndarray]) -> list[object]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs)))


def _close(a: object, b: object) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
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
def test_stored_models(make: type[Pass], tmp_path: Path) -> None:
    counts = sweep_pass(make, list(stored_cases()), tmp_path)
    assert counts["covered"] >= 90 and counts["modified"] > 0


@pytest.mark.parametrize("make", [Simplify, FoldConstants], ids=["simplify", "fold-constants"])
def test_node_models_sample(make: type[Pass], tmp_path: Path) -> None:
    counts = sweep_pass(make, node_cases(NODE_SAMPLE, seed=1), tmp_path)
    assert counts["covered"] >= NODE_SAMPLE // 3
