from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from surgeon import Pipeline, apply
from surgeon.errors import PassError, PassPreconditionError
from surgeon.passes.mark_dynamic import MarkDynamic
from tests import models_interface as mi

if TYPE_CHECKING:
    from tests.conftest import TorchExports

ROOT = Path(__file__).resolve().parents[2]


def _dims(vi: onnx.ValueInfoProto) -> list[Any]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def _run(model: onnx.ModelProto, verify: dict[str, Any] | None = None, **params: Any) -> tuple[Any, onnx.ModelProto]:
    res = Pipeline([MarkDynamic(**params)], verify={"device": "cpu", **(verify or {})}).run(model)
    onnx.checker.check_model(res.model.proto, full_check=True)
    return res, res.model.proto


def _probes(res: Any) -> list[Any]:
    return [o for o in res.steps[0].check.outputs if o.name.startswith("probe")]


def test_batch_reshape_rewritten_and_probed() -> None:
    res, proto = _run(mi.classifier_example(spatial=(4, 4)), batch="batch")
    assert res.ok and res.steps[0].modified
    g = proto.graph
    assert _dims(g.input[0]) == ["batch", 3, 4, 4] and _dims(g.output[0]) == ["batch", 5]
    assert {v.name: _dims(v) for v in g.value_info} == {
        "conv": ["batch", 8, 4, 4],
        "relu": ["batch", 8, 4, 4],
        "pool": ["batch", 8, 1, 1],
        "flat": ["batch", 8],
    }
    reshape = next(n for n in g.node if n.op_type == "Reshape")
    shape = next(t for t in g.initializer if t.name == reshape.input[1])
    assert onnx.numpy_helper.to_array(shape).tolist() == [0, 8]
    assert "Reshape '/Reshape': shape [1, 8] -> [0, 8]" in res.steps[0].notes
    probes = _probes(res)
    assert len(probes) == 1 and probes[0].ok and probes[0].shape == (3, 5)
    feeds = [{"image": np.ones((n, 3, 4, 4), np.float32)} for n in (1, 5)]
    mi.assert_shapes_hold(proto, feeds)


def test_spatial_axes_and_output_symbols() -> None:
    from surgeon.pipeline import Step
    from surgeon.verify.config import StepVerify

    params = {"inputs": {"image": {0: "N", 2: "h", -1: "w"}}, "outputs": {"logits": {0: "N"}}, "batch_symbols": ["N"]}
    model = mi.classifier_example(spatial=(4, 4))
    # a global pool: no output follows h or w, so their probes prove nothing, which fails the step
    assert not _run(model, **params)[0].ok
    res = Pipeline(
        [Step(MarkDynamic(**params), verify=StepVerify(accept_unproved=["h", "w"]))], verify={"device": "cpu"}
    ).run(model)
    proto = res.model.proto
    assert res.ok
    assert sum(p.verdict == "proved nothing" for p in _probes(res)) == 2
    assert _dims(proto.graph.input[0]) == ["N", 3, "h", "w"] and _dims(proto.graph.output[0]) == ["N", 5]
    names = sorted(p.name for p in _probes(res))
    assert (
        names[0].startswith("probe N=3")
        and any(n.startswith("probe h=8") for n in names)
        and any(n.startswith("probe w=8") for n in names)
    )
    assert all(p.ok for p in _probes(res))
    mi.assert_shapes_hold(proto, [{"image": np.ones((2, 3, 5, 7), np.float32)}])


def test_slice_and_expand_rewritten() -> None:
    res, proto = _run(mi.slice_expand(2), batch="b", batch_symbols=["b"])
    assert res.ok, res.failures()
    notes = res.steps[0].notes
    assert "Slice 'slice': ends [2] -> ['end']" in notes and "Expand 'expand': shape [2, 4] -> [1, 4]" in notes
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], 2 * x)


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def _batch_ok(res: Any, proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> None:
    """The step verified (equal at the traced size, batch probe ok) and the shapes hold at other batches."""
    assert res.ok, res.failures()
    probes = _probes(res)
    assert probes and all(p.ok for p in probes) and all("batch" in p.name for p in probes)
    mi.assert_shapes_hold(proto, feeds)


@pytest.mark.parametrize(
    ("build", "note", "ops"),
    [
        (
            lambda: mi.cls_token(2),
            "Expand 'expand': shape [2, 1, 4] -> ['batch', 1, 4] ('batch' from Shape(x)[0])",
            ["Shape", "Concat", "Expand", "Concat"],
        ),
        (
            lambda: mi.cls_token(2, opset=13),
            "Expand 'expand': shape [2, 1, 4] -> ['batch', 1, 4] ('batch' from Shape(x)[0])",
            ["Shape", "Gather", "Concat", "Expand", "Concat"],
        ),
        (
            lambda: mi.filled_add(2),
            "ConstantOfShape 'fill': shape [2, 4] -> ['batch', 4] ('batch' from Shape(x)[0])",
            ["Shape", "Concat", "ConstantOfShape", "Add"],
        ),
        (
            lambda: mi.tile_mul(2),
            "Tile 'tile': repeats [2, 1] -> ['batch', 1] ('batch' from Shape(x)[0])",
            ["Shape", "Concat", "Tile", "Mul"],
        ),
        (
            lambda: mi.tile_mul(4, rows=2),
            "Tile 'tile': repeats [2, 1] -> ['batch/2', 1] ('batch' from Shape(x)[0])",
            ["Shape", "Div", "Concat", "Tile", "Mul"],
        ),
        (
            mi.concat_constant,
            "Concat 'concat': constant 'c' [1, 4] -> Expand of its first slice to ['batch', 4]",
            ["Shape", "Concat", "Expand", "Concat"],
        ),
        (
            mi.expand_constant_rows,
            "Expand 'expand': shape [2, 4] -> ['batch', 4] ('batch' from Shape(x)[0])",
            ["Shape", "Concat", "Expand", "Concat"],
        ),
    ],
    ids=[
        "expand",
        "expand-opset13",
        "constant-of-shape",
        "tile",
        "tile-of-2-rows",
        "concat-constant",
        "expand-constant-rows",
    ],
)
def test_shape_derived_sizes(build: Any, note: str, ops: list[str]) -> None:
    model = build()
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    res, proto = _run(model, batch="batch")
    assert res.steps[0].modified and note in res.steps[0].notes
    assert _ops(proto) == ops
    assert not [t.name for t in proto.graph.initializer if t.name in ("cls_shape", "repeats")]  # replaced, not kept
    rest = list(_dims(proto.graph.input[0])[1:])
    _batch_ok(res, proto, [{"x": np.ones([batch * k, *rest], np.float32)} for k in (1, 3)])
    again, _ = _run(proto, verify={"dims": {"batch": batch}}, batch="batch")
    assert again.ok and not again.steps[0].modified


@pytest.mark.parametrize(
    ("opset", "ops"),
    [
        (17, ["Shape", "ReduceProd", "Shape", "Concat", "Reshape"]),
        (13, ["Shape", "Gather", "ReduceProd", "Gather", "Concat", "Reshape"]),
    ],
)
def test_reshape_sizes_from_shape(opset: int, ops: list[str]) -> None:
    res, proto = _run(mi.merge_axes(opset), batch="batch", inputs={"x": {1: "s", 3: "t"}})
    assert "Reshape 'merge': shape [2, 6, 5] -> [0, 'x[1]*x[2]', 'x[3]'] (sizes read with Shape)" in res.steps[0].notes
    assert _ops(proto) == ops
    assert res.ok and all(p.ok for p in _probes(res))
    # s and t are on no output, but the output's axes follow them: their probes say so
    assert sorted(p.verdict for p in _probes(res)) == ["ok", "ok (ran)", "ok (ran)"]
    assert any("axis 1 follows 's'" in p.note for p in _probes(res))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(5 * 4 * 2 * 3, dtype=np.float32).reshape(5, 4, 2, 3)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x.reshape(5, 8, 3))
    again, _ = _run(proto, verify={"dims": {"batch": 2, "s": 3, "t": 5}}, batch="batch", inputs={"x": {1: "s", 3: "t"}})
    assert again.ok and not again.steps[0].modified


def test_declared_output_follows_the_batch() -> None:
    res, proto = _run(mi.constant_of_shape_output(2), batch="batch")
    assert "ConstantOfShape 'mask': shape [2, 3] -> ['batch', 3] ('batch' from Shape(x)[0])" in res.steps[0].notes
    assert _dims(proto.graph.output[1]) == ["batch", 3]
    _batch_ok(res, proto, [{"x": np.ones((5, 4), np.float32)}])
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(["mask"], {"x": np.ones((5, 4), np.float32)})[0].shape == (5, 3)


@pytest.mark.parametrize(
    ("build", "params", "message"),
    [
        (
            mi.concat_data,
            {"batch": "batch"},
            r"Concat 'concat' input 1: constant 'c' \[2, 4\] has the traced size 2 of 'batch' along axis 0, "
            r"but its slices along that axis differ",
        ),
        (
            mi.transposed_add,
            {"batch": "batch"},
            r"Add 'add' input 0 \('ct'\) stays 2 along axis 0 where 'batch' is dynamic; "
            r"it comes from Transpose 'transpose'",
        ),
        (
            mi.flat_add,
            {"inputs": {"x": {0: "batch"}}},
            r"Add 'add' input 1 \('c'\) has the static size 6 where another input's size changes \(6 -> 12\)",
        ),
    ],
    ids=["constant-rows-differ", "unsupported-source", "no-symbol-explains"],
)
def test_refuses_what_cannot_be_dynamic(build: Any, params: dict[str, Any], message: str) -> None:
    with pytest.raises(PassError, match=message):
        _run(build(), **params)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize(
    ("module", "shape", "notes"),
    [
        (
            mi.torch_cls_token,
            (2, 3, 4),
            {
                False: r"Expand '/Expand': shape \[2, 1, 1\] -> \['batch', 1, 1\]",
                True: r"Concat '\w+': constant '\w+' \[2, 1, 4\] -> Expand of its first slice to \['batch', 1, 4\]",
            },
        ),
        (
            mi.torch_zeros_add,
            (2, 4),
            {
                False: (
                    r"Add '/Add\w*': constant '[\w/]+' \[2, 4\] -> its first slice \[1, 4\], broadcast along 'batch'"
                ),
                True: r"Add '\w+': constant '\w+' \[2, 4\] -> its first slice \[1, 4\], broadcast along 'batch'",
            },
        ),
        (
            mi.torch_repeat,
            (2, 4),
            {
                False: r"Tile '/Tile': repeats \[2, 1\] -> \['batch', 1\]",
                True: r"Mul '\w+': constant '\w+' \[2, 4\] -> its first slice \[1, 4\], broadcast along 'batch'",
            },
        ),
    ],
    ids=["cls-token", "zeros", "repeat"],
)
def test_torch_batch_constants(module: Any, shape: tuple[int, ...], notes: dict[bool, str], dynamo: bool) -> None:
    proto = mi.export(module(), shape, dynamo=dynamo, input_name="x", output_name="y")
    res, out = _run(proto, batch="batch")
    assert res.steps[0].modified and _dims(out.graph.output[0])[0] == "batch"
    assert any(re.fullmatch(notes[dynamo] + ".*", n) for n in res.steps[0].notes), res.steps[0].notes
    _batch_ok(res, out, [{"x": np.ones((k, *shape[1:]), np.float32)} for k in (1, 5)])


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_view_1_minus_1(dynamo: bool, torch_exports: TorchExports) -> None:
    proto = torch_exports.classifier(dynamo, output_name="logits")
    res, out = _run(proto, batch="batch")
    assert res.ok and res.steps[0].modified
    assert any(n.startswith("Reshape") and "[1, -1] -> [0, -1]" in n for n in res.steps[0].notes)
    assert _dims(out.graph.output[0]) == ["batch", 5]
    assert _probes(res) and all(p.ok for p in _probes(res))


def test_dynamic_batch_recipe(tmp_path: Path) -> None:
    src = tmp_path / "classifier.onnx"
    onnx.save(mi.classifier_example(), str(src))
    res = apply(ROOT / "recipes" / "dynamic-batch.yaml", model=src, output=tmp_path / "out.onnx")
    assert res.ok and all(s.modified for s in res.steps)
    proto = onnx.load(str(tmp_path / "out.onnx"))
    assert _dims(proto.graph.input[0]) == ["batch", 3, 16, 16] and _dims(proto.graph.output[0]) == ["batch", 5]


def test_unmodified_when_already_dynamic() -> None:
    res, once = _run(mi.classifier_example(spatial=(4, 4)), batch="batch")
    res, _ = _run(once, verify={"dims": {"batch": 2}}, batch="batch")
    assert res.ok and not res.steps[0].modified


def test_bad_params_and_preconditions() -> None:
    with pytest.raises(ValidationError):
        MarkDynamic(inputs={"image": {"zero": "batch"}})
    with pytest.raises(ValidationError):
        MarkDynamic(batch="")
    model = mi.classifier_example(spatial=(4, 4))
    with pytest.raises(PassPreconditionError, match="nothing to mark"):
        _run(model)
    with pytest.raises(PassPreconditionError, match=r"unknown input 'img'.*image"):
        _run(model, inputs={"img": {0: "batch"}})
    with pytest.raises(PassPreconditionError, match=r"rank 4 .*axis 4 does not exist"):
        _run(model, inputs={"image": {4: "x"}})
    with pytest.raises(PassPreconditionError, match="must be a name, not a number"):
        _run(model, inputs={"image": {0: "2"}})
    with pytest.raises(PassPreconditionError, match="means equal sizes"):
        _run(model, inputs={"image": {1: "s", 2: "s"}})
