"""promote-resize-scales and the Slices after a Resize that crop back to the traced size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError
from surgeon.passes.promote_resize_scales import PromoteResizeScales
from tests import models_interface as mi

END = 2**63 - 1
FLOAT = TensorProto.FLOAT


def _model(
    nodes: list, inits: list, outputs: list | None = None, inputs: list | None = None, opset: int = 17
) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", FLOAT, [1, 2, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", FLOAT, [1, 2, 16, 16])]
    graph = helper.make_graph(nodes, "main_graph", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _conv_resize() -> tuple[list, list]:
    """x[1,2,8,8] -> Conv 3x3 (same size) -> Resize scales [1, 1, 2, 2] -> up[1,2,16,16]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c", "", "sc"], ["up"], name="resize", mode="nearest"),
    ]
    return nodes, inits


def _const(name: str, values: list[int], dtype: Any = np.int64) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], name=f"{name}_node", value=numpy_helper.from_array(np.array(values, dtype), name)
    )


def crop_model(
    ends: tuple[int, ...] = (END, END, 16, 16),
    starts: tuple[int, ...] = (0, 0, 0, 0),
    axes: tuple[int, ...] | None = None,
    style: str = "initializer",
    dtype: Any = np.int64,
) -> onnx.ModelProto:
    """Conv -> Resize -> Slice 'crop' (up, starts, ends[, axes]) -> y; the Slice's inputs are
    initializers, or Constant nodes as the TorchScript exporter writes them."""
    nodes, inits = _conv_resize()
    named = {"starts": list(starts), "ends": list(ends)} | ({"axes": list(axes)} if axes is not None else {})
    if style == "constant":
        nodes += [_const(k, v, dtype) for k, v in named.items()]
    else:
        inits += [numpy_helper.from_array(np.array(v, dtype), k) for k, v in named.items()]
    nodes.append(helper.make_node("Slice", ["up", *named], ["y"], name="crop"))
    return _model(nodes, inits)


def _run(model: onnx.ModelProto, **params: Any) -> tuple[Any, onnx.ModelProto]:
    res = Pipeline([PromoteResizeScales(input="factor", form="factor", **params)], verify={"device": "cpu"}).run(model)
    onnx.checker.check_model(res.model.proto, full_check=True)
    return res, res.model.proto


def _outputs(proto: onnx.ModelProto, factor: float, **feeds: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 2, 8, 8)).astype(np.float32)
    return sess.run(None, {"x": x, "factor": np.array(factor, np.float32), **feeds})


def _probes(res: Any) -> list[Any]:
    return [o for o in res.steps[0].check.outputs if o.name.startswith("probe")]


def _ends(proto: onnx.ModelProto, node: str) -> list[int]:
    slice_ = next(n for n in proto.graph.node if n.name == node)
    consts = {t.name: t for t in proto.graph.initializer} | {
        n.output[0]: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant"
    }
    return numpy_helper.to_array(consts[slice_.input[2]]).tolist()


@pytest.mark.parametrize("style", ["initializer", "constant"])
def test_traced_size_crop_is_opened_and_the_probe_passes(style: str) -> None:
    res, proto = _run(crop_model(style=style))
    assert res.ok, res.failures()
    assert (
        res.steps[0].notes[0]
        == "Slice 'crop': ends [end, end, 16, 16] -> [end, end, end, end] (the traced size of axis 2, 3, now open)"
    )
    assert _ends(proto, "crop") == [END] * 4
    assert [(p.verdict, p.shape) for p in _probes(res)] == [("ok", (1, 2, 24, 24))]
    assert "ends" not in {n.output[0] for n in proto.graph.node if n.op_type == "Constant"} | {
        t.name for t in proto.graph.initializer
    }  # the old ends are gone
    assert _outputs(proto, 3.0)[0].shape == (1, 2, 24, 24)
    assert _outputs(proto, 2.0)[0].shape == (1, 2, 16, 16)


def test_crop_with_a_dynamic_batch() -> None:
    model = crop_model()
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    res, proto = _run(model)
    assert res.ok, res.failures()
    assert _ends(proto, "crop") == [END] * 4
    assert _outputs(proto, 3.0)[0].shape == (1, 2, 24, 24)


@pytest.mark.parametrize("axes", [(2, 3), (-2, -1)], ids=["axes", "negative-axes"])
def test_crop_with_axes_and_int32_ends(axes: tuple[int, int]) -> None:
    model = crop_model(ends=(16, 16), starts=(0, 0), axes=axes, style="constant", dtype=np.int32)
    res, proto = _run(model)
    assert res.ok, res.failures()
    assert _ends(proto, "crop") == [2**31 - 1] * 2
    assert _outputs(proto, 3.0)[0].shape == (1, 2, 24, 24)


def test_crops_behind_crops_and_on_unscaled_axes() -> None:
    """TorchScript writes one Slice per axis; a second crop of the same axis only shows once the
    first is open; a crop of the channels (which the factor does not scale) stays."""
    nodes, inits = _conv_resize()
    inits += [
        numpy_helper.from_array(np.array([v], np.int64), k)
        for k, v in {"zero": 0, "one": 1, "two": 2, "three": 3, "sixteen": 16}.items()
    ]
    nodes += [
        helper.make_node("Slice", ["up", "zero", "sixteen", "two"], ["h"], name="crop_h"),
        helper.make_node("Slice", ["h", "zero", "sixteen", "three"], ["hw"], name="crop_w"),
        helper.make_node("Slice", ["hw", "zero", "sixteen", "two"], ["again"], name="crop_again"),
        helper.make_node("Slice", ["again", "zero", "one", "one"], ["y"], name="crop_channels"),
    ]
    res, proto = _run(_model(nodes, inits, [helper.make_tensor_value_info("y", FLOAT, [1, 1, 16, 16])]))
    assert res.ok, res.failures()
    assert [n.split(":")[0] for n in res.steps[0].notes[:3]] == [
        "Slice 'crop_h'",
        "Slice 'crop_w'",
        "Slice 'crop_again'",
    ]
    assert next(n for n in proto.graph.node if n.name == "crop_channels").input[2] == "one"
    assert _outputs(proto, 3.0)[0].shape == (1, 1, 24, 24)


def test_shared_ends_constant_is_not_changed_for_its_other_reader() -> None:
    """One ends constant read by the crop after the Resize and by a Slice of another input (a
    real crop, 20 -> 16, the factor does not touch): that one keeps it."""
    nodes, inits = _conv_resize()
    inits += [
        numpy_helper.from_array(np.array(v, np.int64), k)
        for k, v in {"starts": [0, 0], "ends": [16, 16], "axes": [2, 3]}.items()
    ]
    nodes += [
        helper.make_node("Slice", ["up", "starts", "ends", "axes"], ["y"], name="crop"),
        helper.make_node("Slice", ["z", "starts", "ends", "axes"], ["zc"], name="crop_z"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", FLOAT, [1, 2, 8, 8]),
        helper.make_tensor_value_info("z", FLOAT, [1, 2, 20, 20]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", FLOAT, [1, 2, 16, 16]),
        helper.make_tensor_value_info("zc", FLOAT, [1, 2, 16, 16]),
    ]
    res, proto = _run(_model(nodes, inits, outputs, inputs))
    assert res.ok, res.failures()
    assert _ends(proto, "crop") == [END, END] and _ends(proto, "crop_z") == [16, 16]
    assert next(n for n in proto.graph.node if n.name == "crop_z").input[2] == "ends"
    y, zc = _outputs(proto, 3.0, z=np.zeros((1, 2, 20, 20), np.float32))
    assert y.shape == (1, 2, 24, 24) and zc.shape == (1, 2, 16, 16)


@pytest.mark.parametrize(
    ("ends", "starts", "message"),
    [
        (
            (END, END, 15, 15),
            (0, 0, 0, 0),
            r"Slice 'crop' crops axis 2 to 15 \(the traced size is 16; "
            r"starts \[0, 0, 0, 0\], ends \[end, end, 15, 15\]",
        ),
        (
            (END, END, 16, 16),
            (0, 0, 1, 1),
            r"Slice 'crop' crops axis 2 to 15 \(the traced size is 16; starts \[0, 0, 1, 1\]",
        ),
        (
            (END, END, 20, 20),
            (0, 0, 0, 0),
            r"Slice 'crop' keeps axis 2 whole at the traced size 16 but crops it to 20 where the factor makes it 24",
        ),
    ],
    ids=["real-crop", "offset", "past-the-end"],
)
def test_other_crops_of_a_scaled_axis_are_refused(ends: tuple[int, ...], starts: tuple[int, ...], message: str) -> None:
    with pytest.raises(PassPreconditionError, match=message) as err:
        _run(crop_model(ends=ends, starts=starts))
    assert "a crop tied to the traced size cannot follow a new factor" in str(err.value) and "set crops: keep" in str(
        err.value
    )
    assert err.value.field == ("crops",)


def test_refusal_exits_2_naming_the_slice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from surgeon.cli import main

    onnx.save(crop_model(ends=(END, END, 15, 15)), str(tmp_path / "m.onnx"))
    assert (
        main(
            [
                "run",
                "promote-resize-scales",
                str(tmp_path / "m.onnx"),
                "-o",
                str(tmp_path / "out.onnx"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Slice 'crop' crops axis 2 to 15 (the traced size is 16" in err and "Traceback" not in err, err
    assert not (tmp_path / "out.onnx").exists()


def test_crops_keep_leaves_the_slice_and_the_probe_explains() -> None:
    res, proto = _run(crop_model(), crops="keep")
    assert not res.ok
    assert _ends(proto, "crop") == [END, END, 16, 16]
    fail = next(f for f in res.failures() if "probe" in f)
    assert (
        "expected (1, 2, 24, 24)" in fail
        and "Slice 'crop' (ends [9223372036854775807, 9223372036854775807, 16, 16])" in fail
    ), fail


def test_slice_1_attributes_after_upsample_9() -> None:
    """Opset 9: Upsample reads scales, Slice-1 keeps starts/ends/axes in attributes."""
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")]
    nodes = [
        helper.make_node("Upsample", ["x", "sc"], ["up"], name="up", mode="nearest"),
        helper.make_node("Slice", ["up"], ["y"], name="crop", starts=[0, 0], ends=[16, 16], axes=[2, 3]),
    ]
    res, proto = _run(_model(nodes, inits, opset=9))
    assert res.ok, res.failures()
    crop = next(n for n in proto.graph.node if n.name == "crop")
    assert helper.get_node_attr_value(crop, "ends") == [END, END]
    assert _outputs(proto, 3.0)[0].shape == (1, 2, 24, 24)


def test_torchscript_export_of_a_crop_to_the_traced_size() -> None:
    """``F.interpolate(x, scale_factor=2)[:, :, :h * 2, :w * 2]`` with h, w traced ints:
    TorchScript writes one Slice per axis, ends from Constant nodes (dynamo drops the no-op)."""
    import torch.nn.functional as F  # noqa: N812

    class Crop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
            self.scale = 2.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[2], x.shape[3]
            y = F.interpolate(self.conv(x), scale_factor=self.scale, mode="nearest")
            return y[:, :, : int(h * self.scale), : int(w * self.scale)]

    torch.manual_seed(0)
    module = Crop().eval()
    exported = mi.export(module, (1, 2, 8, 8), dynamo=False, input_name="x", output_name="y")
    assert [n.op_type for n in exported.graph.node if n.op_type in ("Resize", "Slice")] == ["Resize", "Slice", "Slice"]
    res, proto = _run(exported)
    assert res.ok, res.failures()
    assert len([n for n in res.steps[0].notes if n.startswith("Slice ")]) == 2
    x = torch.rand(1, 2, 8, 8)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    module.scale = 3.0
    with torch.no_grad():
        want = module(x).numpy()
    (got,) = sess.run(None, {"x": x.numpy(), "factor": np.array(3, np.float32)})
    assert got.shape == (1, 2, 24, 24)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
