"""Sizes and values that make the source run: unsized symbols searched when the source fails at
the sizes chosen, and integer inputs drawn from the constants the graph compares them with."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import parser

from surgeon import Pipeline
from surgeon.errors import ModelError
from surgeon.passes.rename_io import RenameIO

CPU = {"device": "cpu"}


def _export(module: Any, args: tuple[Any, ...], path: Path, exporter: str, dynamic: dict[str, dict[int, str]]) -> Path:
    """``module`` exported with ``exporter``, the axes of ``dynamic`` symbolic (named as given)."""
    import torch

    names = list(dynamic)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            shapes = tuple({a: torch.export.Dim.DYNAMIC for a in axes} for axes in dynamic.values())
            torch.onnx.export(module.eval(), args, str(path), dynamo=True, input_names=names, dynamic_shapes=shapes)
        else:
            torch.onnx.export(
                module.eval(), args, str(path), dynamo=False, input_names=names, dynamic_axes=dynamic, opset_version=17
            )
    m = onnx.load(str(path))
    m.ir_version = min(m.ir_version, 10)
    for vi in m.graph.input:  # the symbols as the test names them (dynamo names its own)
        for axis, sym in dynamic.get(vi.name, {}).items():
            vi.type.tensor_type.shape.dim[axis].dim_param = sym
    onnx.save(m, str(path))
    return path


def _frames(kernel: int) -> Any:
    """An STFT-like frame: Conv1d with a ``kernel``-sample window and hop 256 over [batch, 1, samples]."""
    from torch import nn

    torch_module = nn.Sequential(nn.Conv1d(1, 4, kernel, stride=256), nn.ReLU())
    return torch_module


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_model_that_needs_512_samples_is_verified_at_sizes_found_by_search(tmp_path: Path, exporter: str) -> None:
    """Every symbol defaults to 1; a 512-sample window cannot run there. The unsized symbols are
    doubled until the source runs, then each brought back as far as it allows: samples=512, batch=1."""
    import torch

    torch.manual_seed(0)
    src = _export(
        _frames(512), (torch.randn(1, 1, 1024),), tmp_path / "m.onnx", exporter, {"x": {0: "batch", 2: "samples"}}
    )
    ran = {**CPU, "prove": False}  # a structural proof of the rename would run nothing
    res = Pipeline([RenameIO(inputs={"x": "audio"})], verify=ran).run(src)
    assert res.ok, res.failures()
    assert "samples=512 (searched)" in res.sizes and "batch=1 (default)" in res.sizes, res.sizes
    with pytest.raises(ModelError):  # as before the search: the sizes the user gives are used as given
        Pipeline([RenameIO(inputs={"x": "audio"})], verify={**ran, "dims": {"samples": 100}}).run(src)


def test_a_reshape_to_rows_of_512_is_searched_with_symbols_that_must_agree_kept_equal() -> None:
    """Reshape(-1, 512) of the sum of two inputs sharing 'samples': both rise together."""
    proto = parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[samples] a, float[samples] b) => (float[n, 512] y) {
            s = Add(a, b)
            shape = Constant<value = int64[2] {-1, 512}>()
            y = Reshape(s, shape)
        }"""
    )
    res = Pipeline([RenameIO(inputs={"a": "left"})], verify=CPU).run(proto)
    assert res.ok and res.sizes == ["samples=512 (searched)"], (res.sizes, res.failures())


def test_when_no_size_runs_the_message_points_at_verify_dims_not_ranges() -> None:
    """A window longer than the search goes: the message says how far it looked and names verify.dims."""
    import torch

    torch.manual_seed(0)
    proto = parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[batch, 1, samples] x, float[1, 1, 5000] w) => (float[batch, 1, n] y) {
            y = Conv(x, w)
        }"""
    )
    w = onnx.numpy_helper.from_array(np.ones((1, 1, 5000), np.float32), "w")
    proto.graph.initializer.append(w)
    with pytest.raises(ModelError) as err:
        Pipeline([RenameIO(inputs={"x": "audio"})], verify=CPU).run(proto)
    text = str(err.value)
    assert "the source model fails on the generated inputs" in text and "\n" not in text
    assert "no size up to" in text and "the sizes are the likely cause: set verify.dims: {batch: N, samples: N}" in text
    assert "verify.ranges" not in text
    res = Pipeline([RenameIO(inputs={"x": "audio"})], verify={**CPU, "dims": {"samples": 5000}}).run(proto)
    assert res.ok and "samples=5000 (verify.dims)" in res.sizes


VAD = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1, 4] x, int64 sr) => (float[1, 4] y) {
    rate = Constant<value = int64 {16000}>()
    is16k = Equal(sr, rate)
    y = If<then_branch = t () => (float[1, 4] yt) { yt = Neg(x) },
           else_branch = e () => (float[1, 4] ye) {
               bad = Constant<value = int64[2] {7, 3}>()
               ye = Reshape(x, bad)
           }>(is16k)
}"""


def test_an_input_compared_with_a_constant_is_drawn_from_that_constant() -> None:
    """``Equal(sr, 16000)`` before an If whose other branch fails (as a voice-activity model's
    unsupported rate does): sr was drawn from [0, 4) and the source failed; now it is 16000."""
    from surgeon.verify.domains import Choice, integer_domains
    from surgeon.verify.specs import graph_inputs

    proto = parser.parse_model(VAD)
    domains = integer_domains(proto, graph_inputs(proto))
    assert domains["sr"][0] == Choice((16000.0,)) and "Equal" in domains["sr"][1]
    res = Pipeline([RenameIO(inputs={"x": "audio"})], verify=CPU).run(proto)
    assert res.ok, res.failures()
    assert any(v.startswith("sr in {16000} (compared with 16000") for v in res.values), res.values


def test_constants_compared_inside_a_branch_and_through_a_cast_are_drawn_too() -> None:
    """The comparison may sit in an If body reading the outer input, after a Cast: 8000 or 16000."""
    proto = parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 4] x, int64[1] sr) => (float[1, 4] y) {
            f = Cast<to = 1>(sr)
            k16 = Constant<value = float[1] {16000}>()
            c16 = Equal(f, k16)
            c = Squeeze(c16)
            y = If<then_branch = t () => (float[1, 4] yt) { yt = Neg(x) },
                   else_branch = e () => (float[1, 4] ye) {
                       k8 = Constant<value = float[1] {8000}>()
                       c8 = Equal(f, k8)
                       d = Squeeze(c8)
                       ye = If<then_branch = t2 () => (float[1, 4] z) { z = Abs(x) },
                               else_branch = e2 () => (float[1, 4] w) {
                                   bad = Constant<value = int64[2] {7, 3}>()
                                   w = Reshape(x, bad)
                               }>(d)
                   }>(c)
        }"""
    )
    from surgeon.verify.domains import integer_domains
    from surgeon.verify.specs import graph_inputs

    domain = integer_domains(proto, graph_inputs(proto))["sr"][0]
    assert sorted(domain) == [8000.0, 16000.0]
    for seed in range(4):  # whichever value is drawn, the source runs
        res = Pipeline([RenameIO(inputs={"x": "audio"})], verify={**CPU, "seed": seed}).run(proto)
        assert res.ok, res.failures()
