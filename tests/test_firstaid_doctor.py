"""The doctor proposes only what its passes do: each emitted step tried on the model first (what
fails is a finding naming the node and the way out), factors tied only by branches that do not
descend from the Resize, dynamic height and width for fully convolutional models, symbols sized
so that the source runs, and mark-dynamic's refusal naming the node that hard-codes the size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from surgeon.doctor import diagnose
from surgeon.doctor.emit import recipe_text
from surgeon.ir.model import load
from surgeon.recipe import load_recipe
from tests.test_firstaid_feeds import _export

EXPORTERS = ["torchscript", "dynamo"]


def _modules() -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Attention(nn.Module):  # tokens flattened for the projection: [B*T, D] then back to [B, T, 3, h, d]
        def __init__(self, d: int = 32, h: int = 4) -> None:
            super().__init__()
            self.h, self.emb, self.qkv, self.o = h, nn.Embedding(50, d), nn.Linear(d, 3 * d), nn.Linear(d, d)

        def forward(self, ids: Any) -> Any:
            x = self.emb(ids)
            b, t, d = x.shape
            qkv = self.qkv(x.reshape(b * t, d)).reshape(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
            a = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / 8, -1) @ qkv[2]
            return self.o(a.transpose(1, 2).reshape(b, t, d))

    class FlattenHead(nn.Module):  # Resize, then Flatten + Linear: the Linear's inner size ties the factor
        def __init__(self) -> None:
            super().__init__()
            self.c, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 16 * 16, 5)

        def forward(self, x: Any) -> Any:
            return self.fc(torch.flatten(F.interpolate(torch.relu(self.c(x)), scale_factor=2.0, mode="nearest"), 1))

    class Residual(nn.Module):  # Resize, then a residual block (pooled branch): both paths from one map
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.o = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 1, 1)

        def forward(self, x: Any) -> Any:
            up = F.interpolate(torch.relu(self.a(x)), scale_factor=2.0, mode="nearest")
            return self.o(torch.relu(up + self.b(F.max_pool2d(up, 3, 1, 1))))

    class SRCNN(nn.Module):  # the tutorial's super-resolution net: fully convolutional
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.c1, self.c2, self.c3 = nn.Conv2d(1, 8, 9, padding=4), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 1, 5, padding=2)

        def forward(self, x: Any) -> Any:
            return self.c3(torch.relu(self.c2(torch.relu(self.c1(self.up(x))))))

    return {"attention": Attention, "flatten": FlattenHead, "residual": Residual, "srcnn": SRCNN}


INPUTS = {"attention": ("ids", (1, 8)), "flatten": ("x", (1, 3, 8, 8)), "residual": ("x", (1, 3, 8, 8))}
INPUTS["srcnn"] = ("x", (1, 1, 32, 32))


def _made(name: str, exporter: str, folder: Path) -> tuple[Path, Any]:
    import torch

    torch.manual_seed(0)
    module = _modules()[name]().eval()
    arg_name, shape = INPUTS[name]
    arg = torch.randint(0, 50, shape) if name == "attention" else torch.randn(*shape)
    return _export(module, (arg,), folder / f"{name}.onnx", exporter, {arg_name: {}}), module


def _emit(diag: Any, src: Path, folder: Path) -> tuple[str, Any]:
    path = folder / "fix.yaml"
    path.write_text(recipe_text(diag, path, src))
    return path.read_text(), load_recipe(path)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_batch_mark_dynamic_refuses_is_a_finding_naming_the_reshape(tmp_path: Path, exporter: str) -> None:
    """The transformer's Reshape [B*T, 3D] -> [B, T, 3, h, d] has no dynamic form: the doctor tries
    mark-dynamic first, so the static batch is reported unfixable, naming the Reshape and the way
    out, and the recipe it emits (rename-io only) applies."""
    src, _ = _made("attention", exporter, tmp_path)
    before = src.read_bytes()
    untried = diagnose(load(src), trial="off")
    assert next(f for f in untried.findings if f.code == "static-batch").fix == "mark-dynamic"  # as on main
    diag = diagnose(load(src))
    batch = next(f for f in diag.findings if f.code == "static-batch")
    assert batch.fix is None and batch.params is None
    assert "mark-dynamic fails on this model: Reshape '" in batch.message
    assert "reshapes [8, 96] to constant [1, 8, 3, 4, 8]" in batch.message and "passes[" not in batch.message
    assert any("Reshape" in n or "view" in n for n in batch.nodes) and "re-export with a dynamic batch" in batch.advice
    planned = diagnose(load(src), trial="plan")  # the pass's plan alone already refuses
    assert next(f for f in planned.findings if f.code == "static-batch").fix is None
    text, recipe = _emit(diag, src, tmp_path)
    assert "- mark-dynamic" not in text and "#   static-batch:" in text
    assert recipe.pipeline.apply(src, recipe.output, base_dir=tmp_path).ok
    assert diag.facts["tried"].startswith("applied and verified: rename-io")
    assert src.read_bytes() == before


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_flatten_and_linear_after_a_resize_tie_the_factor(tmp_path: Path, exporter: str) -> None:
    """Promoting the factor would feed the Linear another inner size (Gemm dimension mismatch at
    the probe): the factor is reported tied to that Gemm, and no promotion is emitted."""
    src, _ = _made("flatten", exporter, tmp_path)
    diag = diagnose(load(src), trial="off")  # the structural check alone
    codes = {f.code: f for f in diag.findings}
    assert "resize-constant-scales" not in codes and "static-spatial" not in codes
    tied = codes["resize-factor-tied"]
    assert "Gemm '" in tied.message and "fixed inner size 1024" in tied.message
    text, recipe = _emit(diagnose(load(src)), src, tmp_path)
    assert "promote-resize-scales" not in text
    assert recipe.pipeline.apply(src, recipe.output, base_dir=tmp_path).ok


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_residual_block_after_a_resize_leaves_the_factor_free(tmp_path: Path, exporter: str) -> None:
    """The Add joins two paths from the same upsampled map (one through a MaxPool): the factor is
    free, promoted, and the recipe applies with the factor an input."""
    src, module = _made("residual", exporter, tmp_path)
    diag = diagnose(load(src))
    codes = {f.code: f for f in diag.findings}
    assert "resize-factor-tied" not in codes and codes["resize-constant-scales"].fix == "promote-resize-scales"
    _, recipe = _emit(diag, src, tmp_path)
    assert recipe.pipeline.apply(src, recipe.output, base_dir=tmp_path).ok
    assert "factor" in [i.name for i in onnx.load(str(recipe.output)).graph.input]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_fully_convolutional_model_gets_dynamic_height_and_width(tmp_path: Path, exporter: str) -> None:
    """SRCNN traced at 32x32: shape inference runs at 64x64, so height and width are proposed
    dynamic beside the batch; the fixed model takes a 40x24 image and agrees with torch."""
    import onnxruntime as ort
    import torch

    src, module = _made("srcnn", exporter, tmp_path)
    diag = diagnose(load(src))
    spatial = next(f for f in diag.findings if f.code == "static-spatial")
    assert spatial.fix == "mark-dynamic" and "32x32" in spatial.message
    text, recipe = _emit(diag, src, tmp_path)
    assert "height: 32, width: 32" in text
    assert recipe.pipeline.apply(src, recipe.output, base_dir=tmp_path).ok
    fixed = onnx.load(str(recipe.output))
    dims = [d.dim_param or d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
    x = np.random.default_rng(0).standard_normal((2, 1, 40, 24)).astype(np.float32)
    sess = ort.InferenceSession(str(recipe.output), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x} | (
        {"factor": np.array(2.0, np.float32)} if len(sess.get_inputs()) > 1 else {}
    )
    got = sess.run(None, feed)[0]
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_emitted_recipe_sizes_its_symbols_so_that_the_source_runs(tmp_path: Path) -> None:
    """A model that needs 512 samples, with an auto-named output: the recipe's verify.dims carry
    the sizes the search found (samples: 512), so it applies as written."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv1d(1, 4, 512, stride=256), nn.ReLU())
    src = _export(
        module, (torch.randn(1, 1, 1024),), tmp_path / "vad.onnx", "torchscript", {"x": {0: "batch", 2: "samples"}}
    )
    diag = diagnose(load(src))
    assert diag.facts["symbols"] == {"batch": 1, "samples": 512} and "samples=512 (searched)" in diag.facts["sizes"]
    text, recipe = _emit(diag, src, tmp_path)
    assert "verify: {dims: {batch: 1, samples: 512}}" in text and "- rename-io" in text
    result = recipe.pipeline.apply(src, recipe.output, base_dir=tmp_path)
    assert result.ok and result.default_session.startswith("skipped (every step was proved")  # no session ran
    unproved = tmp_path / "unproved.yaml"  # run as a step no proof covers would run it: at those sizes
    unproved.write_text(text.replace("verify: {dims:", "verify: {prove: false, dims:"))
    ran = load_recipe(unproved).pipeline.apply(src, tmp_path / "ran.onnx", base_dir=tmp_path)
    assert ran.ok and "samples=512 (verify.dims)" in ran.sizes and ran.default_session == "ran", ran.sizes


def test_a_mark_dynamic_refusal_names_the_resize_whose_sizes_hard_code_the_batch() -> None:
    """Resize with constant sizes [1, 2, 6, 10], then a Conv and a Relu: the refusal names the
    Resize and its sizes, not the Relu that meets the static size."""
    from surgeon import Pipeline
    from surgeon.errors import PassError
    from surgeon.passes.mark_dynamic import MarkDynamic

    sizes = numpy_helper.from_array(np.array([1, 2, 6, 10], np.int64), "sizes_c")
    w = numpy_helper.from_array(np.ones((3, 2, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Resize", ["x", "", "", "sizes_c"], ["r"], name="resize", mode="nearest"),
        helper.make_node("Conv", ["r", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 6, 10])],
        [sizes, w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    with pytest.raises(PassError) as err:
        Pipeline([MarkDynamic(batch="batch")], verify={"device": "cpu"}).run(model)
    text = str(err.value)
    assert "Resize 'resize' hard-codes the size: its constant sizes [1, 2, 6, 10] fix axis 0 at 1" in text
    assert "re-export with scale_factor instead of size" in text and "Conv 'conv'" not in text
