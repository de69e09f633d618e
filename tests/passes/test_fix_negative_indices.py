"""fix-negative-indices: constant negative indices made non-negative where the axis size is known."""

from __future__ import annotations

import onnx
import pytest
from onnx import numpy_helper
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.passes.fix_negative_indices import FixNegativeIndices

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'
MODEL = (
    HEADER
    + """
g (float[batch, 5] x) => (float[batch, 2] y, float[batch, 2] z, float[batch, 2] w, float[2] v)
<int64[2] idx = {-1, 0}, int64[1] st = {-3}, int64[1] en = {-1}, int64[1] ax = {-1}, int64[2] rows = {-1, 0}>
{
  [g] y = Gather<axis=1>(x, idx)
  [s] z = Slice(x, st, en, ax)
  [g2] w = Gather<axis=-1>(x, idx)
  [rows] r = Gather<axis=0>(x, rows)
  v = ReduceSum<keepdims=0>(r, ax)
}"""
)


def _run(text, **params):
    return Pipeline([FixNegativeIndices(**params)], verify={"dims": {"batch": 3}}).run(
        onnx.parser.parse_model(text) if isinstance(text, str) else text
    )


def _inits(res):
    return {t.name: numpy_helper.to_array(t).tolist() for t in res.model.proto.graph.initializer}


def test_rewrites_known_axes_and_copies_shared_constants():
    res = _run(MODEL)
    assert res.ok and res.steps[0].modified, res.failures()
    inits = _inits(res)
    by_name = {n.name: list(n.input) for n in res.model.proto.graph.node}
    assert inits["st"] == [2] and inits["en"] == [4]
    assert inits[by_name["g"][1]] == [4, 0] and inits[by_name["g2"][1]] == [4, 0]
    assert (by_name["g"][1], by_name["g2"][1]) == ("idx_nonneg", "idx")  # shared: copied first, then changed
    assert inits["rows"] == [-1, 0]  # batch axis: size unknown, left alone
    assert inits["ax"] == [-1]  # axes are not indices
    assert any(n.startswith("Slice 's': st [-3] -> [2]") for n in res.steps[0].notes)


def test_ops_filter_and_untouched_models():
    res = _run(MODEL, ops=["Slice"])
    assert res.ok
    inits = _inits(res)
    assert inits["idx"] == [-1, 0] and inits["st"] == [2]
    plain = HEADER + "g (float[batch, 5] x) => (float[batch, 5] y) { y = Relu(x) }"
    assert not _run(plain).steps[0].modified
    assert not _run(_run(MODEL).model.proto).steps[0].modified


def test_out_of_range_slice_bounds_stay():
    text = (
        HEADER + """
g (float[4] x) => (float[4] y) <int64[1] st = {-1}, int64[1] en = {-9223372036854775807}, """
        """int64[1] ax = {0}, int64[1] step = {-1}>
{ y = Slice(x, st, en, ax, step) }"""
    )
    res = _run(text)
    assert res.ok, res.failures()
    assert _inits(res)["st"] == [3] and _inits(res)["en"] == [-9223372036854775807]


def test_bad_params():
    with pytest.raises(ValidationError):
        FixNegativeIndices(ops=["Scatter"])
    with pytest.raises(ValidationError):
        FixNegativeIndices(axis=1)
