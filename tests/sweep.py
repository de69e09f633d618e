"""Fidelity sweep over models nobody here wrote: the ``onnx`` package's backend test data.

Each model onnxruntime can run goes through load -> IR -> (identity pipeline) -> save -> load, and
must give the stored expected outputs (within the case's tolerance) and exactly the original
model's outputs, with its metadata intact.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.backend.test as backend_test
from onnx import numpy_helper

DATA = Path(os.path.dirname(backend_test.__file__)) / "data"
STORED_SUITES = ("light", "simple", "pytorch-converted", "pytorch-operator")
ORT_MAX_IR = 10


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    data_sets: list[tuple[list[np.ndarray], list[np.ndarray]]]
    rtol: float = 1e-3
    atol: float = 1e-7


def _read_pb(path: Path) -> Any:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def stored_cases() -> Iterator[Case]:
    for suite in STORED_SUITES:
        for case_dir in sorted((DATA / suite).iterdir()):
            model_path = case_dir / "model.onnx"
            if not model_path.is_file():
                continue
            data_sets = []
            for ds in sorted(case_dir.glob("test_data_set_*")):
                ins = [_read_pb(p) for p in sorted(ds.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]
                outs = [_read_pb(p) for p in sorted(ds.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]
                data_sets.append((ins, outs))
            yield Case(f"{suite}/{case_dir.name}", onnx.load(str(model_path)), data_sets)


def node_cases(sample: int | None, seed: int = 0) -> list[Case]:
    """The node tests, regenerated offline from the package's own case generators."""
    import warnings

    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    if sample is not None and sample < len(cases):
        cases = random.Random(seed).sample(cases, sample)
    out = []
    for c in cases:
        if c.model is None:
            continue
        sets = [(list(i), list(o)) for i, o in c.data_sets]
        out.append(Case(f"node/{c.name}", c.model, sets, rtol=max(c.rtol, 1e-3), atol=max(c.atol, 1e-7)))
    return out


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime here reads IR versions up to 10 reliably; newer generator output is relabelled
    (on the reference and the copy alike) so the sweep measures surgeon, not the IR number."""
    if model.ir_version > ORT_MAX_IR:
        model.ir_version = ORT_MAX_IR
    return model
