"""Fidelity sweep over models nobody here wrote: the ``onnx`` package's backend test data.

Each model onnxruntime can run goes through load -> IR -> (identity pipeline) -> save -> load, and
must give the stored expected outputs (within the case's tolerance) and exactly the original
model's outputs, with its metadata intact.
"""

from __future__ import annotations

import functools
import os
import pickle
import random
import sys
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


CACHE_DIR: Path | None = None
"""Where the generated node tests are kept between runs (set by tests/conftest.py to a folder of
pytest's cache, ``.pytest_cache``; ``pytest --cache-clear`` regenerates them). None: kept in memory only."""

_Generated = tuple[str, bytes | None, list[tuple[list[Any], list[Any]]], float, float]
"""One generated node test: name, serialized model (None when the generator made none), data sets,
rtol, atol."""


def _generate_node_tests() -> list[_Generated]:
    import warnings

    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    return [
        (
            c.name,
            None if c.model is None else c.model.SerializeToString(),
            [(list(i), list(o)) for i, o in c.data_sets],
            c.rtol,
            c.atol,
        )
        for c in cases
    ]


@functools.cache
def _node_tests_pickle() -> bytes:
    """The node tests, generated once per process (about 12 s for 1,884 of them) and, under
    CACHE_DIR, once per onnx and numpy version, kept as a pickle: every caller unpickles its own
    copy, so no test sees another's changes to a model or an array."""
    key = f"node-tests-{onnx.__version__}-np{np.__version__}-py{sys.version_info[0]}{sys.version_info[1]}.pkl"
    path = CACHE_DIR / key if CACHE_DIR is not None else None
    if path is not None and path.is_file():
        return path.read_bytes()
    data = pickle.dumps(_generate_node_tests(), protocol=pickle.HIGHEST_PROTOCOL)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # xdist workers may write at once
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return data


def node_cases(sample: int | None, seed: int = 0) -> list[Case]:
    """The node tests, regenerated offline from the package's own case generators (cached: see
    ``_node_tests_pickle``); ``sample`` of them drawn with ``seed``, fresh protos each call."""
    cases: list[_Generated] = pickle.loads(_node_tests_pickle())
    if sample is not None and sample < len(cases):
        cases = random.Random(seed).sample(cases, sample)
    out = []
    for name, model, sets, rtol, atol in cases:
        if model is None:
            continue
        out.append(Case(f"node/{name}", onnx.load_from_string(model), sets, rtol=max(rtol, 1e-3), atol=max(atol, 1e-7)))
    return out


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime here reads IR versions up to 10 reliably; newer generator output is relabelled
    (on the reference and the copy alike) so the sweep measures surgeon, not the IR number."""
    if model.ir_version > ORT_MAX_IR:
        model.ir_version = ORT_MAX_IR
    return model
