"""surgeon doctor: the tutorial's traps in torch exports (both exporters) are found, the emitted
recipe validates, applies with verification on, and leaves none of the fixable findings."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon.doctor import EXIT_FINDINGS, diagnose
from surgeon.doctor.emit import recipe_text
from surgeon.ir.model import load
from surgeon.recipe import load_recipe
from tests.sweep import DATA, node_cases, normalise


def _modules() -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Each trap of the tutorial as a module, with its example inputs (shapes, or a tensor)."""
    import torch
    from torch import nn

    class Upscale(nn.Module):  # SRCNN-like: nn.Upsample with a factor, no skip
        def __init__(self) -> None:
            super().__init__()
            self.a, self.up, self.b = (
                nn.Conv2d(1, 4, 3, padding=1),
                nn.Upsample(scale_factor=2),
                nn.Conv2d(4, 1, 3, padding=1),
            )

        def forward(self, x: Any) -> Any:
            return self.b(self.up(torch.relu(self.a(x))))

    class Flatten(nn.Module):  # x.view(1, -1): the traced batch in a Reshape
        def __init__(self) -> None:
            super().__init__()
            self.c, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 5)

        def forward(self, x: Any) -> Any:
            return self.fc(torch.relu(self.c(x)).view(1, -1))

    class Last(nn.Module):  # x[:, -1]: a negative constant index
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x: Any) -> Any:
            return self.fc(x[:, -1])

    class UNet(nn.Module):  # upsample + skip concat: the factor is tied to the architecture
        def __init__(self) -> None:
            super().__init__()
            self.enc, self.down, self.dec = (
                nn.Conv2d(3, 4, 3, padding=1),
                nn.Conv2d(4, 4, 3, stride=2, padding=1),
                nn.Conv2d(8, 2, 3, padding=1),
            )

        def forward(self, x: Any) -> Any:
            skip = torch.relu(self.enc(x))
            up = nn.functional.interpolate(torch.relu(self.down(skip)), scale_factor=2.0, mode="nearest")
            return self.dec(torch.cat([up, skip], 1))

    class NumpyFlatten(nn.Module):  # numpy on a shape: int(np.prod(...)) is a constant to the tracer
        def __init__(self) -> None:
            super().__init__()
            self.c, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 5)

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.c(x))
            return self.fc(y.reshape(y.shape[0], int(np.prod(y.shape[1:]))))

    class ItemFactor(nn.Module):  # the tutorial's SRCNN: scale_factor=factor.item() freezes the factor
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)

        def forward(self, x: Any, factor: Any) -> Any:
            return self.b(nn.functional.interpolate(torch.relu(self.a(x)), scale_factor=factor.item(), mode="nearest"))

    class InPlace(nn.Module):  # the tutorial's in-place op on a shape value: real += 2 changes s too
        def forward(self, states: Any) -> Any:
            b, s = states.shape[:2]
            real = s
            real += 2
            return states.new_zeros(b, real + s)

    return {
        "upscale": (Upscale, ((1, 1, 8, 8),)),
        "flatten": (Flatten, ((1, 3, 8, 8),)),
        "last": (Last, ((1, 4, 8),)),
        "unet": (UNet, ((1, 3, 8, 8),)),
        "numpy": (NumpyFlatten, ((2, 3, 8, 8),)),
        "item": (ItemFactor, ((1, 1, 8, 8), torch.tensor([3.0]))),
        "inplace": (InPlace, ((2, 5, 3),)),
    }


EXPECTED = {
    "upscale": {"static-batch", "resize-constant-scales"},
    "flatten": {"static-batch"},
    "last": {"static-batch", "negative-indices"},
    "unet": {"static-batch", "resize-factor-tied"},
    "numpy": {"static-batch"},
    "item": {"static-batch", "resize-constant-scales"},  # TorchScript drops 'factor', freezes 3
    "inplace": {"static-batch", "constant-outputs", "unused-inputs"},  # dynamo: right, but constant
}
INPLACE_TORCHSCRIPT = {"constant-outputs"}
"""TorchScript writes the in-place trap as a wrong constant ([2, 14]; torch gives [2, 12]) and
drops the input: doctor says so; no recipe can fix it (surgeon export fails it against torch)."""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path | Exception]:
    import torch

    folder = tmp_path_factory.mktemp("doctor_exports")
    out = {}
    for name, (cls, shapes) in _modules().items():
        for exporter in ("torchscript", "dynamo"):
            torch.manual_seed(0)
            path = folder / f"{name}_{exporter}.onnx"
            args = tuple(torch.randn(*a) if isinstance(a, tuple) else a for a in shapes)
            try:
                with (
                    warnings.catch_warnings(),
                    contextlib.redirect_stdout(io.StringIO()),
                    contextlib.redirect_stderr(io.StringIO()),
                ):
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        cls().eval(),
                        args,
                        str(path),
                        dynamo=exporter == "dynamo",
                        opset_version=17 if exporter == "torchscript" else 18,
                    )
            except Exception as exc:  # a trap the exporter refuses outright
                out[(name, exporter)] = exc
                continue
            m = onnx.load(str(path))
            m.ir_version = min(m.ir_version, 10)  # onnxruntime here reads IR <= 10 reliably
            onnx.save(m, str(path))
            out[(name, exporter)] = path
    return out


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_traps_found_and_fixed(
    exported: dict[tuple[str, str], Path | Exception], name: str, exporter: str, tmp_path: Path
) -> None:
    made = exported[(name, exporter)]
    if name == "item" and exporter == "dynamo":  # torch.export refuses .item() feeding a size
        assert isinstance(made, Exception) and "export" in type(made).__name__.lower(), made
        return
    assert isinstance(made, Path), made
    src = tmp_path / "model.onnx"
    src.write_bytes(made.read_bytes())
    diag = diagnose(load(src))
    codes = {f.code for f in diag.findings}
    expected = INPLACE_TORCHSCRIPT if (name, exporter) == ("inplace", "torchscript") else EXPECTED[name]
    assert expected <= codes, diag.as_dict()
    assert diag.exit_code == EXIT_FINDINGS
    if exporter == "torchscript":  # input.1 / onnx::Gather_0 and numeric output names
        assert "auto-io-names" in codes
    assert not [f for f in diag.findings if f.code == "constant-outputs" and f.fixable]
    recipe_path = tmp_path / "fix.yaml"
    recipe_path.write_text(recipe_text(diag, recipe_path, src))
    text = recipe_path.read_text()
    if (name, exporter) == ("inplace", "torchscript"):  # nothing to make dynamic: no input is left
        assert not any(vi.name for vi in load(src).proto.graph.input) and "static-batch" not in codes
        return
    assert "# fixes static-batch" in text
    if name == "unet":  # tied: said so, and no promotion proposed
        assert "promote-resize-scales" not in text and "resize-constant-scales" not in codes
    recipe = load_recipe(recipe_path)
    assert recipe.pipeline.check_requirements(load(src)) == []
    before = src.read_bytes()
    result = recipe.pipeline.apply(src, recipe.output, recipe_text=text, base_dir=tmp_path)
    assert result.ok and all(s.check is not None for s in result.steps if s.modified)
    assert src.read_bytes() == before
    fixed = load(recipe.output)
    left = {f.code for f in diagnose(fixed).findings}
    fixable = {f.code for f in diag.findings if f.fixable}
    assert not (left & fixable), left
    assert "constant-outputs" not in left  # inplace (dynamo): the output follows the batch now
    proto = fixed.proto
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    if name in ("upscale", "item"):  # the frozen factor is an input again
        assert "factor" in [i.name for i in proto.graph.input]


def _model(
    nodes: list[Any],
    inputs: list[Any],
    outputs: list[Any],
    inits: list[Any] | None = None,
    opset: int = 17,
    ir: int = 10,
    **kw: Any,
) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, inits or [], **kw)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


def _vi(name: str, shape: list[Any], elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _codes(proto: onnx.ModelProto) -> dict[str, Any]:
    return {f.code: f for f in diagnose(load(proto)).findings}


def test_runtime_limits_and_kernels_found_by_sessions() -> None:
    add = _model(
        [helper.make_node("Add", ["a", "b"], ["c"], name="bf16_add")],
        [_vi("a", [2], TensorProto.BFLOAT16), _vi("b", [2], TensorProto.BFLOAT16)],
        [_vi("c", [2], TensorProto.BFLOAT16)],
    )
    f = _codes(add)["no-cpu-kernel"]
    assert f.severity == "error" and f.nodes == ["bf16_add"] and "Add" in f.message
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    io_ = ([_vi("x", ["n"])], [_vi("y", ["n"])])
    assert "ir-version" in _codes(_model(relu, *io_, ir=99))
    too_new = _codes(_model(relu, *io_, opset=99))["opset-too-new"]
    assert too_new.fix == "convert-opset" and 17 < too_new.params["opset"] < 99  # type: ignore[index]
    assert not _codes(_model(relu, *io_))
    custom = _model([helper.make_node("Foo", ["x"], ["y"], domain="my.ops", name="foo")], *io_)
    custom.opset_import.add(domain="my.ops", version=1)
    assert _codes(custom)["unknown-op"].nodes == ["foo"]


def test_leftovers_numeric_and_value_info() -> None:
    w = numpy_helper.from_array(np.array([1e5, 1.0], np.float32), "w")
    idx = numpy_helper.from_array(np.arange(2048, dtype=np.int64), "table")
    nodes = [helper.make_node("Add", ["x", "w"], ["y"]), helper.make_node("Neg", ["x"], ["dead"], name="dead_neg")]
    m = _model(
        nodes, [_vi("x", ["n", 2]), _vi("w", [2])], [_vi("y", ["n", 2])], [w, idx], value_info=[_vi("y_wrong", [3])]
    )
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5  # contradicts the inferred [n, 2]
    found = _codes(m)
    assert found["initializers-as-inputs"].tensors == ["w"]
    assert found["dead-nodes"].nodes == ["dead_neg"] and found["dead-nodes"].fix == "cleanup"
    assert found["unused-initializers"].tensors == ["table"]
    assert found["fp16-range"].tensors == ["w"]
    assert "stale-value-info" in found and found["stale-value-info"].tensors == ["y"]
    assert "int64-weights" not in found  # 'table' is unused: counted once, as unused
    gather = _model(
        [helper.make_node("Gather", ["table", "i"], ["g"])],
        [_vi("i", [3], TensorProto.INT64)],
        [_vi("g", [3], TensorProto.INT64)],
        [idx],
    )
    assert _codes(gather)["int64-weights"].tensors == ["table"]


def test_near_2gb_emits_external_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from surgeon.doctor import io_checks

    monkeypatch.setattr(io_checks, "NEAR_2GB", 100)
    w = numpy_helper.from_array(np.ones((512,), np.float32), "w")
    src = tmp_path / "m.onnx"
    onnx.save(
        _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", ["n", 512])], [_vi("y", ["n", 512])], [w]),
        str(src),
    )
    diag = diagnose(load(src))
    assert diag.findings[0].code == "near-2gb"
    path = tmp_path / "fix.yaml"
    path.write_text(recipe_text(diag, path, src))
    recipe = load_recipe(path)
    assert recipe.pipeline.save.external == "always"
    recipe.pipeline.apply(src, recipe.output, base_dir=tmp_path)
    assert load(recipe.output).data_files


def test_cli_exit_codes_json_and_no_stray_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from surgeon.cli import main

    clean = tmp_path / "clean.onnx"
    onnx.save(
        _model(
            [helper.make_node("Relu", ["image"], ["score"])], [_vi("image", ["batch", 3])], [_vi("score", ["batch", 3])]
        ),
        str(clean),
    )
    dirty = tmp_path / "dirty.onnx"
    onnx.save(
        _model([helper.make_node("Relu", ["input.1"], ["12"])], [_vi("input.1", [1, 3])], [_vi("12", [1, 3])]),
        str(dirty),
    )
    before = sorted(tmp_path.iterdir())
    assert main(["doctor", str(clean)]) == 0
    assert main(["doctor", str(dirty), str(clean)]) == EXIT_FINDINGS
    capsys.readouterr()
    assert main(["doctor", str(dirty), "--json"]) == EXIT_FINDINGS
    data = json.loads(capsys.readouterr().out)
    assert {f["code"] for f in data["findings"]} == {"auto-io-names", "static-batch"}
    assert sorted(tmp_path.iterdir()) == before  # nothing written that was not named
    fix = tmp_path / "fix.yaml"
    assert main(["doctor", str(dirty), "--emit-recipe", str(fix)]) == EXIT_FINDINGS
    first = fix.read_text()
    fix.write_text("mine")
    assert main(["doctor", str(dirty), "--emit-recipe", str(fix)]) == 2 and fix.read_text() == "mine"
    assert (
        main(["doctor", str(dirty), "--emit-recipe", str(fix), "--force"]) == EXIT_FINDINGS and fix.read_text() == first
    )
    assert main(["doctor", str(dirty), str(clean), "--emit-recipe", str(tmp_path / "two.yaml")]) == 2
    assert main(["validate", str(fix)]) == 0
    assert main(["apply", str(fix), "-q"]) == 0
    assert main(["doctor", str(tmp_path / "dirty-fixed.onnx")]) == 0


def _diagnose_all(models: list[tuple[str, onnx.ModelProto]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, proto in models:
        try:
            diag = diagnose(load(normalise(proto)))
        except Exception as exc:  # a crash names the model
            raise AssertionError(f"{name}: {type(exc).__name__}: {exc}") from exc
        for f in diag.findings:
            counts[f.code] = counts.get(f.code, 0) + 1
    return counts


def test_backend_models_do_not_crash() -> None:
    """Every model file the onnx package ships with its backend test data (old exporters, IR 3,
    opsets 1-9 included): diagnosed without an exception, findings counted."""
    paths = sorted(DATA.glob("*/*/model.onnx"))
    counts = _diagnose_all([(str(p.relative_to(DATA)), onnx.load(str(p))) for p in paths])
    print(f"\ndoctor over {len(paths)} stored backend models: {dict(sorted(counts.items()))}")
    assert len(paths) > 100
    assert counts.get("static-batch", 0) > 50 and counts.get("initializers-as-inputs", 0) > 10, counts


NODE_SAMPLE = 300


@pytest.mark.parametrize(
    "sample", [pytest.param(NODE_SAMPLE, id="sample"), pytest.param(None, id="all", marks=pytest.mark.slow)]
)
def test_node_test_models_do_not_crash(sample: int | None) -> None:
    """The onnx package's node tests, regenerated from its case generators (every op, many
    opsets, If/Loop/Scan bodies, sequences, optional types): no crash, findings counted; the
    stored test data does not ship them. The full set runs with -m slow."""
    cases = node_cases(sample, seed=2)
    counts = _diagnose_all([(c.name, c.model) for c in cases])
    print(f"\ndoctor over {len(cases)} node test models: {dict(sorted(counts.items()))}")
    assert len(cases) >= (NODE_SAMPLE * 9) // 10 if sample else len(cases) > 1000
    assert (
        counts.get("static-batch", 0) >= 1 and counts.get("opset-too-new", 0) + counts.get("no-cpu-kernel", 0) >= 1
    ), counts


@pytest.mark.parametrize("ir", [3, 8])
def test_initializers_as_inputs_fixed_by_cleanup(tmp_path: Path, ir: int) -> None:
    """Old exporters list weights as graph inputs (IR 3 must): the emitted cleanup step stops
    listing them (raising IR 3 to 4), verified, and doctor finds nothing left."""
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(2, 2), "w")
    m = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_vi("x", ["n", 2]), _vi("w", [2, 2])],
        [_vi("y", ["n", 2])],
        [w],
        opset=8,
        ir=ir,
    )
    src = tmp_path / "old.onnx"
    onnx.save(m, str(src))
    diag = diagnose(load(src))
    assert [f.code for f in diag.findings] == ["initializers-as-inputs"]
    recipe_path = tmp_path / "fix.yaml"
    recipe_path.write_text(recipe_text(diag, recipe_path, src))
    recipe = load_recipe(recipe_path)
    result = recipe.pipeline.apply(src, recipe.output, base_dir=tmp_path)
    assert result.ok and result.steps[0].check is not None
    fixed = onnx.load(str(recipe.output))
    assert [i.name for i in fixed.graph.input] == ["x"] and fixed.ir_version == max(ir, 4)
    assert not diagnose(load(recipe.output)).findings


def test_resize_sizes_with_the_batch_is_not_sent_to_mark_dynamic(tmp_path: Path) -> None:
    """Constant Resize sizes [1, C, H, W] fix the output batch: mark-dynamic would refuse, so the
    static batch is reported without that fix, and the emitted recipe (the sizes promoted) applies."""
    from tests.models_interface import resize_sizes

    src = tmp_path / "sizes.onnx"
    onnx.save(resize_sizes(), str(src))
    diag = diagnose(load(src))
    batch = next(f for f in diag.findings if f.code == "static-batch")
    assert batch.fix is None and "Resize sizes hard-code it" in batch.message
    path = tmp_path / "fix.yaml"
    path.write_text(recipe_text(diag, path, src))
    recipe = load_recipe(path)
    assert "mark-dynamic" not in path.read_text().split("passes:")[1].replace("# fixes", "")
    assert recipe.pipeline.apply(src, recipe.output, base_dir=tmp_path).ok


def test_shape_inference_copy_leaves_weight_bytes_and_the_model_alone() -> None:
    from surgeon.doctor.graphinfo import _skeleton

    w = numpy_helper.from_array(np.ones((300, 300), np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Reshape", ["y", "shape"], ["z"])]
    m = _model(nodes, [_vi("x", [2, 300])], [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w, shape])
    before = m.SerializeToString()
    light = _skeleton(m)
    assert m.SerializeToString() == before and light.ByteSize() < 1000
    inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    assert [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim] == [1, 600]  # small values kept


def test_a_branch_on_the_batch_is_named_and_the_probe_decides(tmp_path: Path) -> None:
    """A data-dependent If on the batch (as a scripted `if x.shape[0] > 1:` writes it) is named in
    the static-batch finding; applying mark-dynamic then runs another batch, which takes the
    other branch and changes the result: verification fails rather than passing a wrong model,
    and the doctor, trying the recipe first, does not propose it."""
    proto = onnx.parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 3] x) => (float[1, 3] y) {
            s = Shape(x)
            zero = Constant<value = int64[1] {0}>()
            b = Gather(s, zero)
            one = Constant<value = int64[1] {1}>()
            many = Greater(b, one)
            c = Squeeze(many)
            y = If<then_branch = t () => (float[B, 3] yt) { yt = Neg(x) },
                   else_branch = e () => (float[B, 3] ye) { ye = Identity(x) }>(c)
        }"""
    )
    tried = next(f for f in diagnose(load(proto)).findings if f.code == "static-batch")
    assert tried.fix is None and "mark-dynamic fails on this model: probe batch=3: y vs 3 runs" in tried.message
    diag = diagnose(load(proto), trial="off")  # proposed untried, the recipe fails at the probe
    batch = next(f for f in diag.findings if f.code == "static-batch")
    assert (
        "If 'If(y)' branch(es) on a value computed from an input's shape" in batch.message
        and batch.fix == "mark-dynamic"
    )
    src = tmp_path / "m.onnx"
    onnx.save(proto, str(src))
    recipe_path = tmp_path / "fix.yaml"
    recipe_path.write_text(recipe_text(diag, recipe_path, src))
    recipe = load_recipe(recipe_path)
    result = recipe.pipeline.run(src, base_dir=tmp_path)
    assert not result.ok and any("probe" in line for line in result.failures()), result.failures()
