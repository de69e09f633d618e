"""extract: the subgraph between named tensors, verified against the intermediates of the original."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import parser
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import load
from surgeon.pass_api import PassResult
from surgeon.passes.add_outputs import AddOutputs
from surgeon.passes.extract import Extract
from tests.conftest import apply_repo_recipe
from tests.models_surgery import tiny_classifier

TEXT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x, float[N, 4] x2) => (float[N, 4] y, float[N, 4] y2) {
  h = Relu(x)
  w = Constant<value = float[1] {2.0}>()
  z = Mul(h, w)
  y = Sigmoid(z)
  y2 = Add(x2, h)
}"""


def _run(model: object, *passes: object, **verify: object):
    return Pipeline(list(passes), verify={"dims": {"N": 2, "batch": 2}, "device": "cpu", **verify}).run(model)  # type: ignore[arg-type]


def _io(vi: onnx.ValueInfoProto) -> tuple[str, int, list[object]]:
    tt = vi.type.tensor_type
    return vi.name, tt.elem_type, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]


def test_extracts_between_intermediate_tensors() -> None:
    res = _run(parser.parse_model(TEXT), Extract(inputs=["h"], outputs=["z", "y"]))
    assert res.ok and res.steps[0].modified
    g = res.model.proto.graph
    assert [_io(i) for i in g.input] == [("h", 1, ["N", 4])]
    assert [_io(o) for o in g.output] == [("z", 1, ["N", 4]), ("y", 1, ["N", 4])]
    assert [n.op_type for n in g.node] == ["Constant", "Mul", "Sigmoid"]
    checks = {c.name: c for c in res.steps[0].check.outputs}
    assert set(checks) == {"z", "y"} and all(c.verdict == "ok" and c.max_abs == 0.0 for c in checks.values())
    assert "input h (was an intermediate tensor)" in res.steps[0].notes
    assert "removed input x" in res.steps[0].notes and "removed output y2" in res.steps[0].notes
    onnx.checker.check_model(res.model.proto, full_check=True)


def test_keeps_graph_inputs_and_drops_the_rest() -> None:
    res = _run(tiny_classifier(), Extract(inputs=["image"], outputs=["features"]))
    assert res.ok
    g = res.model.proto.graph
    assert [n.op_type for n in g.node] == ["Conv", "Relu", "GlobalAveragePool", "Flatten"]
    assert sorted(t.name for t in g.initializer) == ["conv.bias", "conv.weight"]
    assert [_io(o) for o in g.output] == [("features", 1, ["batch", 8])]


class _Broken(Extract):
    """Extracts, then swaps Sigmoid for Tanh: the verifier must notice."""

    def run(self, model: ModelIR) -> PassResult:
        result = super().run(model)
        next(n for n in model.graph.nodes if n.op == "Sigmoid").op = "Tanh"
        return result


def test_verifier_really_compares_intermediates() -> None:
    res = _run(parser.parse_model(TEXT), _Broken(inputs=["h"], outputs=["y"]))
    assert not res.ok
    (check,) = res.steps[0].check.outputs
    assert check.name == "y" and check.verdict == "FAIL" and check.max_abs > 0.01


def test_a_cut_producer_with_other_used_outputs_stays() -> None:
    model = parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 18]>
        g (float[N, 4] x) => (float[N, 2] out) {
          a, b = Split <axis = 1, num_outputs = 2> (x)
          na = Neg(a)
          out = Add(na, b)
        }"""
    )
    res = _run(model, Extract(inputs=["x", "a"], outputs=["out"]))
    assert res.ok, res.failures()
    g = res.model.proto.graph
    assert [i.name for i in g.input] == ["x", "a"]
    split = g.node[0]
    assert split.op_type == "Split" and list(split.output) == ["a_detached", "b"]


def test_same_interface_on_a_minimal_graph_is_unmodified() -> None:
    model = parser.parse_model(TEXT)
    res = _run(model, Extract(inputs=["x", "x2"], outputs=["y", "y2"]))
    assert res.steps[0].modified is False and res.steps[0].check is None
    res = _run(model, Extract(inputs=["x"], outputs=["y"]), Extract(inputs=["x"], outputs=["y"]))
    assert [s.modified for s in res.steps] == [True, False] and res.ok


def test_after_add_outputs_in_one_pipeline() -> None:
    res = _run(
        tiny_classifier(), AddOutputs(op_types=["Relu"]), Extract(inputs=["relu_out"], outputs=["features", "logits"])
    )
    assert res.ok and all(s.check and s.check.ok for s in res.steps)
    g = res.model.proto.graph
    assert [_io(i) for i in g.input] == [("relu_out", 1, ["batch", 8, 8, 8])]
    assert [c.name for c in res.steps[1].check.outputs] == ["logits", "features"]


def test_missing_dependency_names_what_to_add() -> None:
    ir = ModelIR.from_model(load(parser.parse_model(TEXT)))
    with pytest.raises(
        PassPreconditionError, match=r"output 'y2' depends on x2, which is not among the inputs \(h\); add it to inputs"
    ) as err:
        Extract(inputs=["h"], outputs=["y", "y2"]).requires(ir)
    assert err.value.field == ("outputs", "y2")


def test_unknown_and_constant_tensors() -> None:
    ir = ModelIR.from_model(load(parser.parse_model(TEXT)))
    with pytest.raises(
        PassPreconditionError,
        match=r"no tensor 'hh' in the graph; did you mean 'h'\?; tensors are: h, w, x, x2, y, y2, z",
    ):
        Extract(inputs=["hh"], outputs=["y"]).requires(ir)
    model = parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) <float[4] k = {1.0, 2.0, 3.0, 4.0}> { y = Add(x, k) }"""
    )
    with pytest.raises(PassPreconditionError, match="'k' is a constant"):
        Extract(inputs=["k"], outputs=["y"]).requires(ModelIR.from_model(load(model)))


def test_bad_params() -> None:
    with pytest.raises(ValidationError, match="inputs names h more than once"):
        Extract(inputs=["h", "h"], outputs=["y"])
    with pytest.raises(ValidationError, match="at least 1"):
        Extract(inputs=[], outputs=["y"])
    with pytest.raises(ValidationError):
        Extract(outputs=["y"])


def _external_model(folder: Path) -> Path:
    model = tiny_classifier()
    path = folder / "model.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    return path


def test_external_weights_are_not_read_and_stay_external(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _external_model(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("external data was read")

    ir = ModelIR.from_model(load(path))
    with monkeypatch.context() as m:
        for target in (
            "surgeon.ir.external.tensor_values",
            "surgeon.ir.adapter.tensor_values",
            "surgeon.ir.external.read_external_bytes",
            "onnx.numpy_helper.to_array",
        ):
            m.setattr(target, refuse)
        m.setattr(gs.ir.tensor.LazyValues, "load", refuse)
        step = Extract(inputs=["relu_out"], outputs=["logits"])
        step.requires(ir)
        assert step.run(ir).modified
        proto = ir.to_proto()
    assert sorted(t.name for t in proto.graph.initializer) == ["fc.bias", "fc.weight"]
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    out = tmp_path / "out" / "head.onnx"
    out.parent.mkdir()
    res = Pipeline(
        [Extract(inputs=["relu_out"], outputs=["logits"])], verify={"dims": {"batch": 2}, "device": "cpu"}
    ).apply(path, out)
    assert res.ok
    saved = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in saved.graph.initializer)
    full = onnx.load(str(out))
    src = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    for t in full.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), src[t.name])


def test_debug_outputs_recipe(tmp_path: Path) -> None:
    res, saved = apply_repo_recipe("debug-outputs.yaml", tmp_path)
    assert res.ok and all(s.modified and s.check and s.check.ok for s in res.steps)
    assert [_io(i) for i in saved.graph.input] == [("relu_out", 1, ["batch", 8, 8, 8])]
    assert [_io(o) for o in saved.graph.output] == [("features", 1, ["batch", 8]), ("logits", 1, ["batch", 10])]
