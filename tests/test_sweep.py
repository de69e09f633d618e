"""Round-trip fidelity on the onnx package's backend test models (see tests/sweep.py): outputs,
metadata, and onnx.checker's full check wherever the source passes it."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import surgeon
from surgeon.ir.adapter import ModelIR
from surgeon.ir.check import full_check
from surgeon.ir.save import save
from tests.sweep import Case, node_cases, normalise, stored_cases

NODE_SAMPLE = int(os.environ.get("SURGEON_SWEEP_NODE_SAMPLE", "250"))


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, inputs: list[np.ndarray]) -> list[np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs)))


def _meta(model: onnx.ModelProto) -> tuple:
    return (
        model.ir_version,
        model.producer_name,
        model.producer_version,
        model.model_version,
        model.domain,
        model.doc_string,
        [(p.key, p.value) for p in model.metadata_props],
        sorted((o.domain, o.version) for o in model.opset_import),
        [f.name for f in model.functions],
        [(n.name, n.op_type, n.doc_string, [(p.key, p.value) for p in n.metadata_props]) for n in model.graph.node],
        [i.name for i in model.graph.input],
        [o.name for o in model.graph.output],
        len(model.training_info),
    )


def _same(a: object, b: object) -> bool:
    """Exact equality that also handles sequences, maps, strings and NaN."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            isinstance(a, (list, tuple))
            and isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b))
        )
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
        )
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if x.dtype.kind in "fc":
        return bool(np.array_equal(x, y, equal_nan=True))
    return bool(np.array_equal(x, y))


def sweep(cases: list[Case], tmp: Path) -> Counter:
    counts: Counter = Counter()
    failures = []
    for case in cases:
        src = tmp / "src.onnx"
        onnx.save(normalise(case.model), str(src))
        try:
            ref_sess = _session(src)
            ref_outs = [_run(ref_sess, ins) for ins, _ in case.data_sets]
        except Exception:
            counts["not runnable by onnxruntime"] += 1
            continue
        out = tmp / "out.onnx"
        try:
            save(ModelIR.from_model(surgeon.load(src)).to_model(), out)
        except Exception as exc:
            failures.append(f"{case.name}: load -> IR -> save failed: {type(exc).__name__}: {exc}")
            continue
        try:
            outs = [_run(_session(out), ins) for ins, _ in case.data_sets]
        except Exception as exc:
            failures.append(f"{case.name}: round-tripped model does not run: {str(exc).splitlines()[0][:200]}")
            continue
        problems = []
        if _meta(onnx.load(str(out))) != _meta(onnx.load(str(src))):
            problems.append("metadata differs")
        checked = full_check(out)
        if checked is not None and full_check(src) is None:
            problems.append(f"fails onnx.checker (full_check), the source passes: {checked}")
        for (_, expected), got, ref in zip(case.data_sets, outs, ref_outs):
            for i, (e, g, r) in enumerate(zip(expected, got, ref)):
                if not _same(g, r):
                    problems.append(f"output {i} differs from the original model's")
                    continue
                if isinstance(e, np.ndarray) and e.dtype.kind in "fc" and np.asarray(r).shape == e.shape:
                    if not np.allclose(g, e, rtol=case.rtol, atol=case.atol, equal_nan=True) and np.allclose(
                        np.asarray(r), e, rtol=case.rtol, atol=case.atol, equal_nan=True
                    ):
                        problems.append(f"output {i} off the stored expected value")
        if problems:
            failures.append(f"{case.name}: {'; '.join(problems)}")
        else:
            counts["covered"] += 1
    print(f"\nsweep: {dict(counts)}, failures: {len(failures)}")
    assert not failures, "\n".join(failures)
    return counts


def test_stored_backend_models_round_trip(tmp_path: Path) -> None:
    counts = sweep(list(stored_cases()), tmp_path)
    assert counts["covered"] >= 100


def test_node_models_round_trip_sample(tmp_path: Path) -> None:
    counts = sweep(node_cases(NODE_SAMPLE), tmp_path)
    assert counts["covered"] >= NODE_SAMPLE // 2


@pytest.mark.slow
def test_node_models_round_trip_all(tmp_path: Path) -> None:
    counts = sweep(node_cases(None), tmp_path)
    assert counts["covered"] >= 1000
