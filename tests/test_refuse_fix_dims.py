"""fix-dims on an output that does not follow the symbol it is declared with: a sliding-window
cache declared ``[1, past, 4]`` returns 7 positions whatever ``past`` is. The output's dim is left
as inferred, and the notes say so, instead of a declaration the checker rejects."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from surgeon import Pipeline
from surgeon.ir.save import save
from surgeon.passes.fix_dims import FixDims

WINDOW = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1, 1, 4] x, float[1, past, 4] cache) => (float[1, 1, 4] y, float[1, past, 4] new_cache) {
  cat = Concat<axis = 1>(cache, x)
  starts = Constant<value = int64[1] {-7}>()
  ends = Constant<value = int64[1] {9223372036854775807}>()
  axes = Constant<value = int64[1] {1}>()
  new_cache = Slice(cat, starts, ends, axes)
  s = ReduceSum<keepdims = 1>(new_cache, axes)
  y = Add(x, s)
}"""


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def test_output_that_does_not_follow_its_symbol_is_left_as_inferred(tmp_path):
    src = onnx.parser.parse_model(WINDOW)
    onnx.checker.check_model(src, full_check=True)
    res = Pipeline([FixDims(dims={"past": 10})], verify={"dims": {"past": 10}}).run(src)
    out = res.model.proto
    onnx.checker.check_model(out, full_check=True)  # today: "Inferred shape and existing shape differ"
    outputs = {vi.name: _dims(vi) for vi in out.graph.output}
    assert outputs == {"y": [1, 1, 4], "new_cache": [1, 7, 4]}
    assert _dims(out.graph.input[1]) == [1, 10, 4]
    assert any(
        "'new_cache' axis 1 is declared 'past' (10 now), but the model produces 7" in n for n in res.steps[0].notes
    )
    # the written file passes the full checker and runs at the fixed size
    path = tmp_path / "fixed.onnx"
    save(res.model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": np.ones((1, 1, 4), np.float32), "cache": np.ones((1, 10, 4), np.float32)})
    assert got[1].shape == (1, 7, 4)


def test_outputs_that_follow_the_symbol_still_get_its_size():
    text = WINDOW.replace("{-7}", "{1}")  # drops the oldest position: exactly 'past' positions
    res = Pipeline([FixDims(dims={"past": 10})], verify={"dims": {"past": 10}}).run(onnx.parser.parse_model(text))
    assert {vi.name: _dims(vi) for vi in res.model.proto.graph.output}["new_cache"] == [1, 10, 4]
    assert not any("left as inferred" in n for n in res.steps[0].notes)
