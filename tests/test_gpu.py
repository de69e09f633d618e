"""Tests that need CUDAExecutionProvider. They skip where CUDA does not load; run them on a GPU
machine with scripts/gpu-tests.sh."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from surgeon import Pipeline
from surgeon.passes.rename_io import RenameIO
from surgeon.verify.runtime import Runtime
from tests.conftest import exported_like_model


def _cuda_loads(tmp_path: Path) -> bool:
    path = tmp_path / "probe.onnx"
    onnx.save(exported_like_model(), str(path))
    rt = Runtime("auto")
    rt.session(path)
    return rt.used == "CUDA"


@pytest.fixture
def cuda(tmp_path: Path) -> None:
    if not _cuda_loads(tmp_path):
        pytest.skip("CUDAExecutionProvider does not load on this machine")


@pytest.mark.gpu
def test_auto_uses_cuda_and_says_so(cuda: None) -> None:
    res = Pipeline([RenameIO(inputs={"onnx::MatMul_0": "x"})], verify={"dims": {"batch": 2}, "device": "auto"}).run(
        exported_like_model()
    )
    assert res.ok and res.device.startswith("CUDA")


@pytest.mark.gpu
def test_device_cuda_verifies(cuda: None) -> None:
    res = Pipeline([RenameIO(inputs={"onnx::MatMul_0": "x"})], verify={"dims": {"batch": 2}, "device": "cuda"}).run(
        exported_like_model()
    )
    assert res.ok and res.device.startswith("CUDA")
    assert res.steps[0].check is not None and res.steps[0].check.outputs[0].ok
