from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError

from surgeon import Pipeline, apply
from surgeon.errors import PassPreconditionError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import load
from surgeon.passes.promote_resize_scales import PromoteResizeScales
from tests import models_interface as mi

ROOT = Path(__file__).resolve().parents[2]


def _run(model: onnx.ModelProto, verify: str = "each", **params: object) -> tuple[Any, onnx.ModelProto]:
    res = Pipeline([PromoteResizeScales(**params)], verify={"device": "cpu", "mode": verify}).run(model)
    onnx.checker.check_model(res.model.proto, full_check=True)
    return res, res.model.proto


def _dims(vi: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _no_stale(proto: onnx.ModelProto, factors: tuple[float, ...] = (2.0, 3.0)) -> None:
    """Declared shapes hold at several factors (no shape from the old constant left anywhere)."""
    name = next(i.name for i in proto.graph.input if i.name != "x")
    full = next(i for i in proto.graph.input if i.name == name).type.tensor_type.shape.dim
    feeds = []
    for f in factors:
        value = np.array(f, np.float32) if not full else np.array([1, 1, f, f], np.float32)
        feeds.append({"x": np.ones((1, 2, 4, 4), np.float32), name: value})
    mi.assert_shapes_hold(proto, feeds)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_constant_nodes_become_scales_input(opset: int) -> None:
    res, proto = _run(mi.resize_constant_nodes(opset))
    assert res.ok and res.steps[0].modified
    names = [i.name for i in proto.graph.input]
    assert names == ["x", "scales"]
    scales = proto.graph.input[1]
    assert scales.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and _dims(scales) == [4]
    resize = next(n for n in proto.graph.node if n.op_type == "Resize")
    assert resize.input[2] == "scales"
    assert [n.op_type for n in proto.graph.node] == ["Constant", "Resize", "Relu"]  # only roi's Constant is left
    # batch/channels/height/width all depend on a full scales vector: symbolic everywhere
    out = _dims(proto.graph.output[0])
    assert len(out) == 4 and all(isinstance(d, str) for d in out)
    assert all(isinstance(d, str) for d in _dims(next(v for v in proto.graph.value_info if v.name == "up")))
    probe = [o for o in res.steps[0].check.outputs if o.name.startswith("probe")]
    assert probe and probe[0].ok and probe[0].shape == (1, 2, 8, 8)
    _no_stale(proto)


def test_factor_form_keeps_batch_and_channels() -> None:
    res, proto = _run(mi.resize_constant_nodes(13), input="factor", form="factor")
    assert res.ok
    factor = next(i for i in proto.graph.input if i.name == "factor")
    assert _dims(factor) == [] and factor.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    out = _dims(proto.graph.output[0])
    assert out[:2] == [1, 2] and all(isinstance(d, str) for d in out[2:])
    sess = _session(proto)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    for f in (1.0, 2.0, 5.0):
        (y,) = sess.run(None, {"x": x, "factor": np.array(f, np.float32)})
        assert y.shape == (1, 2, int(4 * f), int(4 * f))
    assert res.steps[0].notes == ["input 'factor' (factor 3.0) now drives '/up/Resize'"]
    _no_stale(proto)


def test_factor_form_without_value_info_keeps_batch_and_channels_and_declares_only_scaled_axes() -> None:
    """TorchScript writes no value_info for a Conv's output: batch and channels of the Resize's
    output still stay static (they were made symbolic), and the contract frees only the axes
    the factor scales, so a pass that loosens batch or channels fails the interface check."""
    proto = onnx.parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 1, 4, 4] x, float[2, 1, 3, 3] w) => (float[1, 2, 12, 12] y) {
            c = Conv<pads = [1, 1, 1, 1]>(x, w)
            s = Constant<value = float[4] {1, 1, 3, 3}>()
            y = Resize<mode = "nearest">(c, , s)
        }"""
    )
    del proto.graph.input[1]  # w: an initializer, not an input
    proto.graph.initializer.append(
        onnx.numpy_helper.from_array(np.linspace(-1, 1, 18, dtype=np.float32).reshape(2, 1, 3, 3), "w")
    )
    res, out = _run(proto, input="factor", form="factor")
    assert res.ok, res.failures()
    assert _dims(out.graph.output[0])[:2] == [1, 2]
    contract = PromoteResizeScales(input="factor", form="factor")(ModelIR.from_model(load(proto))).contract
    assert contract.changed_axes == {"y": {2, 3}} and not contract.changed_dims

    class Loose(PromoteResizeScales):
        def run(self, ir):  # type: ignore[no-untyped-def]
            result = super().run(ir)
            ir.graph.outputs[0].shape = ["n", 2, "h", "w"]
            return result

    res = Pipeline([Loose(input="factor", form="factor")], verify={"device": "cpu"}).run(proto)
    assert not res.ok and any("output 'y'" in f and "axis 0 is 'n', was 1" in f for f in res.failures()), res.failures()


def test_factor_per_axis() -> None:
    res, proto = _run(mi.resize_constant_nodes(13, scales=(1, 1, 2, 3)), form="factor", per_axis=True)
    assert res.ok
    assert _dims(next(i for i in proto.graph.input if i.name == "factor")) == [2]
    (y,) = _session(proto).run(None, {"x": np.zeros((1, 2, 4, 4), np.float32), "factor": np.array([1, 4], np.float32)})
    assert y.shape == (1, 2, 4, 16)


def test_two_nodes_shared_and_per_node() -> None:
    res, proto = _run(mi.resize_two_nodes(3.0), form="factor")
    assert res.ok and [i.name for i in proto.graph.input] == ["x", "factor"]
    assert not {"s1", "s2"} & {t.name for t in proto.graph.initializer}
    with pytest.raises(PassPreconditionError, match="per_node"):
        _run(mi.resize_two_nodes(2.0), form="factor")
    res, proto = _run(mi.resize_two_nodes(2.0), form="factor", per_node=True)
    assert res.ok and [i.name for i in proto.graph.input] == ["x", "factor_0", "factor_1"]
    res, proto = _run(mi.resize_two_nodes(2.0), nodes="resize_b", input="sb")
    assert res.ok and [i.name for i in proto.graph.input] == ["x", "sb"]
    assert "s1" in {t.name for t in proto.graph.initializer}
    assert _dims(proto.graph.output[0]) == [1, 2, 12, 12]  # the untouched Resize keeps its static shape


def test_sizes_promoted_as_int64() -> None:
    res, proto = _run(mi.resize_sizes())
    assert res.ok
    sizes = next(i for i in proto.graph.input if i.name == "sizes")
    assert sizes.type.tensor_type.elem_type == onnx.TensorProto.INT64 and _dims(sizes) == [4]
    (y,) = _session(proto).run(
        None, {"x": np.zeros((1, 2, 4, 4), np.float32), "sizes": np.array([1, 2, 5, 7], np.int64)}
    )
    assert y.shape == (1, 2, 5, 7)
    with pytest.raises(PassPreconditionError, match="driven by sizes"):
        _run(mi.resize_sizes(), form="factor")


def test_sizes_at_the_probe_factor_are_probed_at_another() -> None:
    """Sizes [8, 8] from a 4x4 input are the probe factor 2 already: the probe takes factor 3
    (12x12) instead of proving nothing."""
    model = mi.resize_sizes()
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.array([1, 2, 8, 8], np.int64), "sizes_c"))
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 8
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 8
    res, _ = _run(model)
    probes = [o for o in res.steps[0].check.outputs if o.name.startswith("probe")]
    assert res.ok and [(p.verdict, p.shape) for p in probes] == [("ok", (1, 2, 12, 12))], [
        (p.name, p.verdict, p.note) for p in probes
    ]


@pytest.mark.parametrize("opset", [7, 9])
def test_legacy_upsample(opset: int) -> None:
    res, proto = _run(mi.upsample(opset), form="factor")
    assert res.ok and res.steps[0].modified
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [9]
    if opset < 9:
        assert any("opset 7 to 9" in n for n in res.steps[0].notes)
    (y,) = _session(proto).run(None, {"x": np.ones((1, 2, 3, 3), np.float32), "factor": np.array(3, np.float32)})
    assert y.shape == (1, 2, 9, 9)


def test_no_resize_is_unmodified_and_idempotent() -> None:
    res, _ = _run(mi.no_resize())
    assert res.ok and not res.steps[0].modified
    _, once = _run(mi.resize_constant_nodes(13))
    res, _ = _run(once, verify="off")  # scales already an input: nothing left to promote
    assert not res.steps[0].modified


def test_bad_params() -> None:
    with pytest.raises(ValidationError):
        PromoteResizeScales(form="vector")
    with pytest.raises(ValidationError):
        PromoteResizeScales(probe_factor=0)
    with pytest.raises(ValidationError):
        PromoteResizeScales(scale=3)


def test_precondition_messages() -> None:
    with pytest.raises(PassPreconditionError, match=r"no Resize/Upsample node named 'resize_c'.*resize_a, resize_b"):
        _run(mi.resize_two_nodes(), nodes=["resize_c"])
    with pytest.raises(PassPreconditionError, match="matches no Resize/Upsample node"):
        _run(mi.resize_two_nodes(), nodes="conv.*")
    with pytest.raises(PassPreconditionError, match="already exists"):
        _run(mi.resize_two_nodes(), input="x")
    with pytest.raises(PassPreconditionError, match="non-spatial axis"):
        _run(mi.resize_constant_nodes(13, scales=(1, 2, 2, 2)), form="factor")
    _, once = _run(mi.resize_constant_nodes(13))
    with pytest.raises(PassPreconditionError, match="a graph input, not a constant"):
        _run(once, verify="off", nodes=["/up/Resize"])


# -- SRCNN end to end ---------------------------------------------------------------------------


def _matches_torch(proto: onnx.ModelProto, module: Any, x: Any, factors: tuple[int, ...]) -> None:
    """The promoted model, fed ``factor``, gives torch's output at that factor (size and values)."""
    sess = _session(proto)
    for f in factors:
        module.up.scale_factor = float(f)
        with torch.no_grad():
            want = module(x).numpy()
        (got,) = sess.run(None, {"image": x.numpy(), "factor": np.array(f, np.float32)})
        assert got.shape == (*x.shape[:2], x.shape[2] * f, x.shape[3] * f)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_srcnn_recipe_matches_torch_at_other_factors(dynamo: bool, tmp_path: Path) -> None:
    module = mi.srcnn_torch(channels=3)
    src = tmp_path / "srcnn.onnx"
    onnx.save(mi.export(module, (1, 3, 8, 8), dynamo=dynamo), str(src))
    out = tmp_path / "srcnn-dynamic.onnx"
    res = apply(ROOT / "recipes" / "srcnn-dynamic-scale.yaml", model=src, output=out)
    assert res.ok and res.steps[0].modified
    checks = {o.name: o for o in res.steps[0].check.outputs}
    assert any(name.startswith("probe factor=2.0") and c.ok and c.shape == (1, 3, 16, 16) for name, c in checks.items())
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["image", "factor"]
    assert _dims(proto.graph.output[0])[:2] == [1, 3]
    _matches_torch(proto, module, torch.rand(1, 3, 8, 8), (2, 3, 4))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_rename_mark_dynamic_promote_recipe_needs_no_verify_dims(
    dynamo: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The SRCNN recipe a user writes after a plain export: rename-io, mark-dynamic of batch,
    height and width, promote-resize-scales; no verify block at all. Every step verifies at the
    traced sizes (said so), and the result matches torch at other sizes and factors."""
    import contextlib
    import io
    import warnings

    from surgeon.cli import main

    module = mi.srcnn_torch(channels=1)
    src = tmp_path / "srcnn.onnx"
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.rand(1, 1, 12, 12),), str(src), dynamo=dynamo, opset_version=18 if dynamo else 17
        )
    proto = onnx.load(str(src))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(src))
    old_in, old_out = proto.graph.input[0].name, proto.graph.output[0].name
    recipe = tmp_path / "fix.yaml"
    recipe.write_text(
        f"""version: 1
model: srcnn.onnx
output: srcnn-fixed.onnx
passes:
  - rename-io: {{inputs: {{'{old_in}': image}}, outputs: {{'{old_out}': out}}}}
  - mark-dynamic: {{inputs: {{image: {{0: batch, 2: height, 3: width}}}}, outputs: {{out: {{0: batch}}}}}}
  - promote-resize-scales: {{form: factor, input: factor}}
"""
    )
    assert "dims" not in recipe.read_text()
    assert main(["apply", str(recipe)]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "batch=1 (traced), height=12 (traced), width=12 (traced)" in text
    fixed = onnx.load(str(tmp_path / "srcnn-fixed.onnx"))
    assert [i.name for i in fixed.graph.input] == ["image", "factor"] and _dims(fixed.graph.output[0])[:2] == [
        "batch",
        1,
    ]
    _matches_torch(fixed, module, torch.rand(2, 1, 10, 7), (2, 4))
