"""prepend-op: input pre-processing; the verifier feeds new-domain data and derives the old feed."""

from __future__ import annotations

from pathlib import Path

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
from surgeon.passes.prepend_op import PrependOp
from surgeon.passes.rename_io import RenameIO
from tests.models_surgery import tiny_classifier

TEXT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 3, 4, 5] image, int64[N] ids) => (float[N, 3, 4, 5] y, int64[N] ids2) {
  y = Mul(image, image)
  ids2 = Neg(ids)
}"""
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
IMAGE_STEPS = [
    PrependOp(input="image", op="Transpose", perm=[0, 3, 1, 2]),
    PrependOp(input="image", op="Normalize", mean=MEAN, std=STD, axis=-1),
    PrependOp(input="image", op="Cast", dtype="uint8"),
]


def _run(model: object, *passes: object, **verify: object):
    cfg = {"dims": {"N": 2, "batch": 2}, "device": "cpu", "ranges": {"image": [0, 256]}, **verify}
    return Pipeline(list(passes), verify=cfg).run(model)  # type: ignore[arg-type]


def _io(vi: onnx.ValueInfoProto) -> tuple[str, int, list[object]]:
    tt = vi.type.tensor_type
    return vi.name, tt.elem_type, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]


def test_uint8_nhwc_image_to_normalised_nchw(tmp_path: Path) -> None:
    import onnxruntime as ort

    res = _run(parser.parse_model(TEXT), *IMAGE_STEPS)
    assert res.ok, res.failures()
    assert all(s.modified and s.check and s.check.ok for s in res.steps)
    g = res.model.proto.graph
    assert [_io(i) for i in g.input] == [
        ("image", onnx.TensorProto.UINT8, ["N", 4, 5, 3]),
        ("ids", onnx.TensorProto.INT64, ["N"]),
    ]
    assert [(n.op_type, list(n.input), list(n.output)) for n in g.node][:4] == [
        ("Cast", ["image"], ["image_float32"]),
        ("Sub", ["image_float32", "image_mean"], ["image_centered"]),
        ("Div", ["image_centered", "image_std"], ["image_normalized"]),
        ("Transpose", ["image_normalized"], ["image_transposed"]),
    ]
    assert [_io(o) for o in g.output] == [("y", 1, ["N", 3, 4, 5]), ("ids2", 7, ["N"])]
    # independent of the verifier: the new model on uint8 NHWC equals the source on the pre-processed input
    out = tmp_path / "pre.onnx"
    onnx.save(res.model.proto, str(out))
    src = tmp_path / "src.onnx"
    onnx.save(parser.parse_model(TEXT), str(src))
    raw = np.random.default_rng(3).integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
    ids = np.arange(2, dtype=np.int64)
    nchw = ((raw.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)).transpose(0, 3, 1, 2)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": raw, "ids": ids})
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"image": nchw, "ids": ids})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_verify_at_the_end_and_with_scale_and_rename() -> None:
    steps = [
        PrependOp(input="image", op="Normalize", scale=1 / 255, mean=[0.5], std=[0.25, 0.5, 1.0]),
        PrependOp(input="image", op="Cast", dtype="uint8", name="pixels"),
    ]
    res = _run(parser.parse_model(TEXT), *steps, mode="end", ranges={"pixels": [0, 256], "image": [0, 1]})
    assert res.ok and res.final_check is not None and [c.verdict for c in res.final_check.outputs] == ["ok", "ok"]
    g = res.model.proto.graph
    assert [i.name for i in g.input] == ["pixels", "ids"]
    assert [n.op_type for n in g.node][:4] == ["Cast", "Mul", "Sub", "Div"]


def test_later_steps_map_forward_from_the_derived_feed() -> None:
    steps = [*IMAGE_STEPS, RenameIO(inputs={"image": "pixels"}), AppendOp(output="y", op="Sigmoid")]
    res = _run(parser.parse_model(TEXT), *steps, ranges={"image": [0, 256], "pixels": [0, 256]})
    assert res.ok, res.failures()
    assert [i.name for i in res.model.proto.graph.input] == ["pixels", "ids"]


class _Broken(PrependOp):
    """Prepends a transpose, then changes its perm behind the contract's back."""

    def run(self, model: ModelIR) -> PassResult:
        result = super().run(model)
        model.graph.nodes[0].attrs["perm"] = [0, 3, 2, 1]
        return result


def test_verifier_really_compares() -> None:
    model = parser.parse_model("""<ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 3, 4, 4] image) => (float[N, 3, 4, 4] y) { y = Mul(image, image) }""")
    res = _run(model, _Broken(input="image", op="Transpose", perm=[0, 3, 1, 2]))
    assert not res.ok and res.steps[0].check.outputs[0].verdict == "FAIL"


DECLARED = [
    ({"op": "Cast", "dtype": "uint8"}, {}, {"image"}, set()),
    ({"op": "Cast", "dtype": "uint8", "name": "pixels"}, {"image": "pixels"}, {"pixels"}, set()),
    ({"op": "Normalize", "mean": MEAN, "std": STD}, {}, set(), set()),
    ({"op": "Transpose", "perm": [0, 3, 1, 2]}, {}, set(), {"image"}),
    ({"op": "Transpose", "perm": [0, 1, 3, 2], "name": "t"}, {"image": "t"}, set(), {"t"}),
]


@pytest.mark.parametrize(
    ("params", "renamed", "types", "dims"), DECLARED, ids=[f"{c[0]['op']}-{i}" for i, c in enumerate(DECLARED)]
)
def test_declares_the_new_domain_of_the_input(params: dict, renamed: dict, types: set, dims: set) -> None:
    step = PrependOp(input="image", **params)
    contract = step.run(ModelIR.from_model(load(parser.parse_model(TEXT)))).contract
    assert (contract.renamed_inputs, contract.changed_types, contract.changed_dims) == (renamed, types, dims)
    res = _run(parser.parse_model(TEXT), step, ranges={"image": [0, 256], "pixels": [0, 256]})
    assert res.ok, res.failures()


class _Loosened(PrependOp):
    """Prepends the op, then also makes the channel dim of the new input symbolic (undeclared)."""

    def run(self, model: ModelIR) -> PassResult:
        result = super().run(model)
        model.graph.inputs[0].shape = ["N", "c", 4, 5]
        return result


@pytest.mark.parametrize(
    ("params", "port"),
    [({"op": "Normalize", "scale": 0.5}, "image"), ({"op": "Cast", "dtype": "uint8", "name": "pixels"}, "pixels")],
)
def test_a_derived_input_may_not_change_dims_it_does_not_declare(params: dict, port: str) -> None:
    res = _run(
        parser.parse_model(TEXT),
        _Loosened(input="image", **params),
        dims={"N": 2, "c": 3},
        ranges={"image": [0, 256], "pixels": [0, 256]},
    )
    assert not res.ok  # before: ok (a derived input was free in dtype and dims; a renamed one was not checked at all)
    what = "axis 1 is 'c', was 3 (static -> symbolic)"
    assert [f for f in res.failures() if f"interface: input '{port}'" in f and what in f], res.failures()


def test_identity_ops_leave_the_model_unmodified() -> None:
    for params in (
        {"op": "Cast", "dtype": "float32"},
        {"op": "Transpose", "perm": [0, 1, 2, 3]},
        {"op": "Normalize", "mean": [0.0], "std": [1, 1, 1]},
    ):
        res = _run(parser.parse_model(TEXT), PrependOp(input="image", **params))
        assert res.steps[0].modified is False and res.steps[0].check is None
    res = _run(
        parser.parse_model(TEXT),
        PrependOp(input="ids", op="Cast", dtype="int32"),
        PrependOp(input="ids", op="Cast", dtype="int32"),
    )
    assert res.ok and [s.modified for s in res.steps] == [True, False]
    assert _io(res.model.proto.graph.input[1]) == ("ids", onnx.TensorProto.INT32, ["N"])


def test_bad_params() -> None:
    with pytest.raises(ValidationError, match="'dtype' does not apply to Transpose; Transpose takes: perm"):
        PrependOp(input="image", op="Transpose", perm=[0, 1], dtype="uint8")
    with pytest.raises(ValidationError, match="Normalize needs mean, std or scale"):
        PrependOp(input="image", op="Normalize")
    with pytest.raises(ValidationError, match="std must not contain 0"):
        PrependOp(input="image", op="Normalize", std=[1, 0, 1])
    with pytest.raises(ValidationError, match="mean has 3 values but std has 2"):
        PrependOp(input="image", op="Normalize", mean=[1, 2, 3], std=[1, 2])
    with pytest.raises(ValidationError, match="Cast needs dtype"):
        PrependOp(input="image", op="Cast")
    with pytest.raises(ValidationError, match="Transpose needs perm"):
        PrependOp(input="image", op="Transpose")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"input": "img", "op": "Cast", "dtype": "uint8"}, "unknown input 'img'.*graph inputs are: image, ids"),
        ({"input": "ids", "op": "Normalize", "mean": [1.0]}, "Normalize needs a floating-point input; 'ids' is int64"),
        (
            {"input": "image", "op": "Normalize", "mean": [1.0, 2.0], "axis": 1},
            r"mean has 2 values but axis 1 of 'image' \(float32 \[N, 3, 4, 5\]\) has 3 channels",
        ),
        (
            {"input": "image", "op": "Normalize", "std": [2.0], "axis": 4},
            "axis 4 is out of range for 'image', which has 4 axes",
        ),
        (
            {"input": "image", "op": "Transpose", "perm": [0, 2, 1]},
            "perm \\[0, 2, 1\\] is not a permutation of the 4 axes",
        ),
        ({"input": "image", "op": "Cast", "dtype": "uint8", "name": "y"}, "a tensor named 'y' already exists"),
    ],
)
def test_preconditions(params: dict, message: str) -> None:
    with pytest.raises(PassPreconditionError, match=message):
        PrependOp(**params).requires(ModelIR.from_model(load(parser.parse_model(TEXT))))


def test_input_that_is_an_output_is_refused() -> None:
    model = parser.parse_model("""<ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] x, float[2] y) { y = Neg(x) }""")
    with pytest.raises(PassPreconditionError, match="'x' is also a graph output"):
        PrependOp(input="x", op="Cast", dtype="uint8").requires(ModelIR.from_model(load(model)))


def test_classifier_takes_uint8_nhwc() -> None:
    steps = [
        PrependOp(input="image", op="Transpose", perm=[0, 3, 1, 2]),
        PrependOp(input="image", op="Normalize", scale=1 / 255, axis=3),
        PrependOp(input="image", op="Cast", dtype="uint8"),
    ]
    res = _run(tiny_classifier(), *steps)
    assert res.ok, res.failures()
    assert _io(res.model.proto.graph.input[0]) == ("image", onnx.TensorProto.UINT8, ["batch", 8, 8, 3])
