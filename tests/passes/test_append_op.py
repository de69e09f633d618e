"""append-op: post-processing at a graph output, checked against numpy references."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pytest
from onnx import parser
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import load
from surgeon.pass_api import PassResult
from surgeon.passes.append_op import AppendOp
from tests.conftest import apply_repo_recipe
from tests.models_surgery import tiny_mlp

if TYPE_CHECKING:
    from tests.conftest import TorchExports

TEXT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 5] x) => (float[N, 5] y, int64[N, 5] ids) {
  y = Mul(x, x)
  ids = Cast<to = 7>(y)
}"""


def _run(model: object, *passes: object, **verify: object):
    cfg = {"dims": {"N": 3, "batch": 2}, "device": "cpu", "ranges": {"x": [-8.0, 8.0]}, **verify}
    return Pipeline(list(passes), verify=cfg).run(model)  # type: ignore[arg-type]


def _io(vi: onnx.ValueInfoProto) -> tuple[str, int, list[object]]:
    tt = vi.type.tensor_type
    return vi.name, tt.elem_type, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]


F, I64, I32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.FLOAT16
CASES = [
    ({"op": "Clip", "min": 1.0, "max": 20.0}, [("y", F, ["N", 5])]),
    ({"op": "Clip", "max": 4.0}, [("y", F, ["N", 5])]),
    ({"op": "Softmax"}, [("y", F, ["N", 5])]),
    ({"op": "Softmax", "axis": 0}, [("y", F, ["N", 5])]),
    ({"op": "Sigmoid"}, [("y", F, ["N", 5])]),
    ({"op": "ArgMax", "axis": 1, "keepdims": False}, [("y", I64, ["N"])]),
    ({"op": "ArgMax", "axis": -1, "select_last_index": True}, [("y", I64, ["N", 1])]),
    ({"op": "TopK", "k": 3}, [("y", F, ["N", 3]), ("y_indices", I64, ["N", 3])]),
    (
        {"op": "TopK", "k": 2, "largest": False, "axis": 0, "indices_name": "rows"},
        [("y", F, [2, 5]), ("rows", I64, [2, 5])],
    ),
    ({"op": "Cast", "to": "float16"}, [("y", F16, ["N", 5])]),
    ({"op": "Cast", "to": "int32"}, [("y", I32, ["N", 5])]),
    ({"op": "Transpose"}, [("y", F, [5, "N"])]),
]


@pytest.mark.parametrize(("params", "outputs"), CASES, ids=[f"{c[0]['op']}-{i}" for i, c in enumerate(CASES)])
def test_appends_the_op_and_keeps_the_output_name(params: dict, outputs: list) -> None:
    res = _run(parser.parse_model(TEXT), AppendOp(output="y", **params))
    assert res.ok, res.failures()
    assert res.steps[0].modified
    g = res.model.proto.graph
    assert [_io(o) for o in g.output] == [*outputs, ("ids", I64, ["N", 5])]
    last = g.node[-1]
    assert last.op_type == params["op"] and list(last.input)[0] == f"y_pre_{params['op'].lower()}"
    assert [_io(v) for v in g.value_info if v.name == last.input[0]] == [(last.input[0], F, ["N", 5])]
    checks = {c.name: c for c in res.steps[0].check.outputs}
    assert set(checks) == {name for name, _, _ in outputs} | {"ids"}
    assert all(c.verdict == "ok" for c in checks.values())
    onnx.checker.check_model(res.model.proto, full_check=True)


def test_integer_output_and_a_new_name() -> None:
    res = _run(parser.parse_model(TEXT), AppendOp(output="ids", op="Clip", min=0, max=10, name="ids_clipped"))
    assert res.ok
    assert [o.name for o in res.model.proto.graph.output] == ["y", "ids_clipped"]
    assert [c.name for c in res.steps[0].check.outputs] == ["y", "ids_clipped"]
    assert "'ids' is no longer an output" in res.steps[0].notes[0]


def test_chained_ops_keep_the_name() -> None:
    res = _run(
        parser.parse_model(TEXT),
        AppendOp(output="y", op="Softmax"),
        AppendOp(output="y", op="TopK", k=2),
        AppendOp(output="y_indices", op="Cast", to="int32"),
    )
    assert res.ok, res.failures()
    g = res.model.proto.graph
    assert [n.op_type for n in g.node] == ["Mul", "Cast", "Softmax", "TopK", "Cast"]
    assert [_io(o) for o in g.output] == [("y", F, ["N", 2]), ("y_indices", I32, ["N", 2]), ("ids", I64, ["N", 5])]


def test_old_softmax_semantics_below_opset_13() -> None:
    model = parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 11]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y) { y = Mul(x, x) }"""
    )
    res = _run(model, AppendOp(output="y", op="Softmax"))
    assert res.ok, res.failures()
    assert res.model.proto.graph.node[-1].attribute[0].i == 1


def test_identity_ops_leave_the_model_unmodified() -> None:
    for params in ({"op": "Cast", "to": "float32"}, {"op": "Transpose", "perm": [0, 1]}):
        res = _run(parser.parse_model(TEXT), AppendOp(output="y", **params))
        assert res.steps[0].modified is False and res.steps[0].check is None
        assert [n.op_type for n in res.model.proto.graph.node] == ["Mul", "Cast"]
    res = _run(
        parser.parse_model(TEXT),
        AppendOp(output="ids", op="Cast", to="int32"),
        AppendOp(output="ids", op="Cast", to="int32"),
    )
    assert [s.modified for s in res.steps] == [True, False]


class _Broken(AppendOp):
    """Appends Softmax, then changes its axis behind the contract's back."""

    def run(self, model: ModelIR) -> PassResult:
        result = super().run(model)
        model.graph.nodes[-1].attrs["axis"] = 0
        return result


def test_verifier_really_compares() -> None:
    res = _run(parser.parse_model(TEXT), _Broken(output="y", op="Softmax"))
    assert not res.ok
    assert [c.verdict for c in res.steps[0].check.outputs if c.name == "y"] == ["FAIL"]


STATIC = TEXT.replace("N", "4")
DECLARED = [
    ({"op": "Clip", "min": 0.0}, set(), set()),
    ({"op": "Softmax"}, set(), set()),
    ({"op": "Sigmoid"}, set(), set()),
    ({"op": "ArgMax", "axis": 1, "keepdims": False}, {"y"}, {"y"}),
    ({"op": "ArgMax", "axis": 1}, {"y"}, {"y"}),
    ({"op": "TopK", "k": 5}, set(), set()),  # values: same dtype, same dims; the indices are a new output
    ({"op": "TopK", "k": 2}, set(), {"y"}),
    ({"op": "Cast", "to": "float16"}, {"y"}, set()),
    ({"op": "Transpose"}, set(), {"y"}),
    ({"op": "Transpose", "perm": [1, 0], "name": "t"}, set(), set()),  # a new output: nothing to declare
]


@pytest.mark.parametrize(
    ("params", "types", "dims"), DECLARED, ids=[f"{c[0]['op']}-{i}" for i, c in enumerate(DECLARED)]
)
def test_declares_what_the_op_changes_and_only_that(params: dict, types: set, dims: set) -> None:
    step = AppendOp(output="y", **params)
    contract = step.run(ModelIR.from_model(load(parser.parse_model(STATIC)))).contract
    assert (contract.changed_types, contract.changed_dims) == (types, dims)
    res = _run(parser.parse_model(STATIC), step)
    assert res.ok, res.failures()


class _Loosened(AppendOp):
    """Appends the op, then also makes a static dim of the result symbolic (undeclared)."""

    def run(self, model: ModelIR) -> PassResult:
        result = super().run(model)
        model.graph.outputs[0].shape = ["n", 5]
        return result


@pytest.mark.parametrize("params", [{"op": "Softmax"}, {"op": "Cast", "to": "float16"}])
def test_an_expected_output_may_not_change_dims_it_does_not_declare(params: dict) -> None:
    res = _run(parser.parse_model(STATIC), _Loosened(output="y", **params))
    assert not res.ok  # before: ok (an output with an expectation was free in dtype and dims)
    assert [
        f for f in res.failures() if "interface: output 'y'" in f and "axis 0 is 'n', was 4 (static -> symbolic)" in f
    ], res.failures()


def test_bad_params() -> None:
    with pytest.raises(ValidationError, match="'k' does not apply to Softmax; Softmax takes: axis"):
        AppendOp(output="y", op="Softmax", k=3)
    with pytest.raises(ValidationError, match="Clip needs min, max or both"):
        AppendOp(output="y", op="Clip")
    with pytest.raises(ValidationError, match="min 2.0 is greater than max 1.0"):
        AppendOp(output="y", op="Clip", min=2, max=1)
    with pytest.raises(ValidationError, match="TopK needs k"):
        AppendOp(output="y", op="TopK")
    with pytest.raises(ValidationError, match="Cast needs to"):
        AppendOp(output="y", op="Cast")
    with pytest.raises(ValidationError, match="Input should be 'Clip'"):
        AppendOp(output="y", op="Relu")
    with pytest.raises(ValidationError, match="Input should be 'float32'"):
        AppendOp(output="y", op="Cast", to="float")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"output": "yy", "op": "Sigmoid"}, r"unknown output 'yy'; did you mean 'y'\?; graph outputs are: y, ids"),
        ({"output": "ids", "op": "Softmax"}, "Softmax needs a floating-point output; 'ids' is int64"),
        ({"output": "ids", "op": "Clip", "max": 2.5}, "'ids' is int64: Clip max must be a whole number, got 2.5"),
        ({"output": "y", "op": "Softmax", "axis": 2}, "axis 2 is out of range for 'y', which has 2 axes"),
        (
            {"output": "y", "op": "TopK", "k": 6, "axis": 1},
            r"TopK k=6 but axis 1 of 'y' \(float32 \[N, 5\]\) has size 5",
        ),
        ({"output": "y", "op": "Transpose", "perm": [0, 2]}, "perm \\[0, 2\\] is not a permutation of the 2 axes"),
        ({"output": "y", "op": "Sigmoid", "name": "ids"}, "a tensor named 'ids' already exists"),
    ],
)
def test_preconditions(params: dict, message: str) -> None:
    with pytest.raises(PassPreconditionError, match=message):
        AppendOp(**params).requires(ModelIR.from_model(load(parser.parse_model(TEXT))))


def test_output_that_is_an_input_needs_a_name() -> None:
    model = parser.parse_model("""<ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] x, float[2] y) { y = Neg(x) }""")
    with pytest.raises(PassPreconditionError, match="'x' is also a graph input; give name"):
        AppendOp(output="x", op="Sigmoid").requires(ModelIR.from_model(load(model)))
    res = _run(model, AppendOp(output="x", op="Sigmoid", name="sx"))
    assert res.ok and [i.name for i in res.model.proto.graph.input] == ["x"]
    assert [o.name for o in res.model.proto.graph.output] == ["sx", "y"]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_export_clip_and_softmax_match_torch(tmp_path: Path, dynamo: bool, torch_exports: TorchExports) -> None:
    import onnxruntime as ort
    import torch

    path = torch_exports.mlp(tmp_path, dynamo)
    steps = [
        AppendOp(output="y", op="Clip", min=-0.25, max=0.25),
        AppendOp(output="y", op="Softmax", name="probs"),
        AppendOp(output="probs", op="ArgMax", axis=1, keepdims=False, name="label"),
    ]
    out = tmp_path / "out" / "post.onnx"
    out.parent.mkdir()
    res = Pipeline(steps, verify={"dims": {"batch": 2}, "device": "cpu"}).apply(path, out)
    assert res.ok and all(s.modified and s.check and s.check.ok for s in res.steps)
    assert [_io(o) for o in res.model.proto.graph.output] == [("label", I64, ["batch"])]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32) * 3
    (label,) = sess.run(None, {"x": x})
    with torch.no_grad():
        want = torch.softmax(torch.clamp(tiny_mlp()(torch.from_numpy(x)), -0.25, 0.25), dim=-1).argmax(dim=1).numpy()
    np.testing.assert_array_equal(label, want)


def test_postprocess_recipe(tmp_path: Path) -> None:
    res, saved = apply_repo_recipe("postprocess.yaml", tmp_path)
    assert res.ok and all(s.modified and s.check and s.check.ok for s in res.steps)
    assert [_io(i) for i in saved.graph.input] == [("image", onnx.TensorProto.UINT8, ["batch", 8, 8, 3])]
    assert [_io(o) for o in saved.graph.output] == [("top_probs", F, ["batch", 3]), ("top_classes", I64, ["batch", 3])]
