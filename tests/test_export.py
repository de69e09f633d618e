"""surgeon export: a factory's module exported and verified against torch; factory errors are one
line, exit 2; outputs that differ from torch's are exit 1 and nothing is written."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

from surgeon.cli import main
from surgeon.export import parse_dynamic, parse_input

FACTORIES = """
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.drop = torch.nn.Dropout(0.5)  # eval mode: the identity

    def forward(self, x):
        if x.shape[0] > 0:  # Python control flow: a TracerWarning with TorchScript
            x = x * 2
        return self.drop(torch.relu(self.fc(x)))

class Noisy(torch.nn.Module):
    def forward(self, x):
        return x + torch.rand_like(x)  # onnxruntime draws other numbers than torch

class Branch(torch.nn.Module):
    def forward(self, x):  # a data-dependent branch: TorchScript freezes the one taken
        return x * 2 if x.sum() > 0 else x - 1

class ItemFactor(torch.nn.Module):  # the tutorial's SRCNN: scale_factor=factor.item()
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x, factor):
        return torch.nn.functional.interpolate(self.conv(x), scale_factor=factor.item() + 2, mode="nearest")

class ShapeOnly(torch.nn.Module):
    def forward(self, x, like):  # only like's shape matters: its values are not needed
        return x + like.shape[1]

class InPlaceShape(torch.nn.Module):  # the tutorial's in-place op on a shape value
    def forward(self, states):
        b, s = states.shape[:2]
        real = s
        real += 2
        return states.new_zeros(b, real + s)

def build():
    torch.manual_seed(0)
    return Net()

def branch():
    return Branch()

def item_factor():
    torch.manual_seed(0)
    return ItemFactor()

def shape_only():
    return ShapeOnly()

def in_place():
    return InPlaceShape()

def noisy():
    return Noisy()

def needs_arg(width):
    return Net()

def not_a_module():
    return 42

def broken():
    raise RuntimeError("weights file missing")
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_factories.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_factories", None)


def test_export_torchscript_verified_then_doctor_clean(factories: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = factories / "net.onnx"
    argv = [
        "export",
        "my_factories:build",
        "-o",
        str(out),
        "--input",
        "x:2x4:float32",
        "--exporter",
        "torchscript",
        "--opset",
        "17",
        "--output-name",
        "scores",
        "--dynamic",
        "x:0:batch",
        "--dynamic",
        "scores:0:batch",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "scores: shape [2, 3]" in text and "ok" in text
    assert text.count("TracerWarning") == 1  # collected, shown once
    m = onnx.load(str(out))
    assert [i.name for i in m.graph.input] == ["x"] and [o.name for o in m.graph.output] == ["scores"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert sorted(p.name for p in factories.iterdir() if not p.name.startswith(("my_factories", "__pycache__"))) == [
        "net.onnx"
    ]
    assert main(["doctor", str(out), "-q"]) == 0  # named I/O, a dynamic batch: nothing to fix
    assert main(argv) == 2  # an existing output is not overwritten without --overwrite


def test_export_mismatch_writes_nothing(factories: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = factories / "noisy.onnx"
    assert main(["export", "my_factories:noisy", "-o", str(out), "--input", "x:8x8"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert not out.exists() and not [p for p in factories.iterdir() if p.name.startswith(".surgeon")]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope_module:build", "cannot import nope_module: ModuleNotFoundError"),
        ("my_factories:missing", "has no attribute 'missing'"),
        ("my_factories:needs_arg", "the factory must take no arguments"),
        ("my_factories:not_a_module", "returned int, not a torch.nn.Module"),
        ("my_factories:broken", "the factory raised RuntimeError: weights file missing"),
        ("no-colon", "expected MODULE:FACTORY"),
    ],
)
def test_factory_errors_are_one_line_exit_2(
    factories: Path, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    assert main(["export", spec, "-o", str(factories / "x.onnx"), "--input", "x:1x4"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_parse_inputs_and_dynamic_axes() -> None:
    from surgeon.errors import UsageError

    spec = parse_input("image:1x3x224x224:float16")
    assert (spec.name, spec.shape, spec.dtype) == ("image", [1, 3, 224, 224], "float16")
    assert parse_input("ids:1x128:int64").dtype == "int64" and parse_input("x:4").dtype == "float32"
    for bad in ("image", "image:1x3xa", "image:1x3:complex", "image:0x3"):
        with pytest.raises(UsageError):
            parse_input(bad)
    assert parse_dynamic(["image:0:batch", "image:2:h"], ["image"]) == {"image": {0: "batch", 2: "h"}}
    with pytest.raises(UsageError, match="no input or output 'img'"):
        parse_dynamic(["img:0:batch"], ["image"])


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_values_the_trace_froze_fail_on_fresh_inputs(
    factories: Path, capsys: pytest.CaptureFixture[str], exporter: str
) -> None:
    """A data-dependent branch agrees on the traced inputs; fresh ones show TorchScript froze it
    (dynamo refuses the branch outright: one line, exit 3)."""
    out = factories / "branch.onnx"
    code = main(["export", "my_factories:branch", "-o", str(out), "--input", "x:6", "--exporter", exporter])
    captured = capsys.readouterr()
    if exporter == "dynamo":
        assert code == 3 and "torch.onnx.export (dynamo) failed" in captured.err and captured.err.count("\n") == 1
    else:
        assert code == 1 and "on the fresh inputs; agrees on the traced inputs: the export froze values" in captured.out
    assert not out.exists()


def test_an_input_traced_into_a_constant_fails_an_unused_one_is_a_note(
    factories: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = factories / "item.onnx"
    assert (
        main(
            [
                "export",
                "my_factories:item_factor",
                "-o",
                str(out),
                "--input",
                "x:1x1x4x4",
                "--input",
                "factor:1",
                "--exporter",
                "torchscript",
            ]
        )
        == 1
    )
    text = capsys.readouterr().out
    assert (
        "(input factor)" in text
        and "input 'factor' is not in the exported model, but torch's outputs change with it" in text
    )
    assert not out.exists()
    out = factories / "shape.onnx"
    assert (
        main(
            [
                "export",
                "my_factories:shape_only",
                "-o",
                str(out),
                "--input",
                "x:2x3",
                "--input",
                "like:2x3",
                "--exporter",
                "torchscript",
            ]
        )
        == 0
    )
    assert (
        "input 'like' is not in the exported model: torch's outputs do not depend on its values"
        in capsys.readouterr().out
    )
    assert [i.name for i in onnx.load(str(out)).graph.input] == ["x"]


def test_torch_native_warnings_are_collected_not_leaked(factories: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The in-place trap: torch's C++ code prints its warning straight to file descriptor 2; it
    is shown once in the summary, and the wrong model (a constant [2, 14], torch gives [2, 12])
    fails against torch. The dynamo exporter gets it right."""
    out = factories / "inplace.onnx"
    assert (
        main(["export", "my_factories:in_place", "-o", str(out), "--input", "s:2x5x3", "--exporter", "torchscript"])
        == 1
    )
    captured = capfd.readouterr()
    assert captured.out.count("In-place op on output of tensor.shape") == 1 and "In-place" not in captured.err
    assert "shape [2, 14], torch gives [2, 12]" in captured.out and not out.exists()
    assert main(["export", "my_factories:in_place", "-o", str(out), "--input", "s:2x5x3"]) == 0
    assert out.exists()


RECIPE = """version: 1
source:
  factory: my_factories:build
  inputs: [x:2x4]
  exporter: torchscript
  opset: 17
  output_names: [scores]
output: fixed.onnx
passes:
  - mark-dynamic: {inputs: {x: {0: batch}}, outputs: {scores: {0: batch}}}
"""


def test_recipe_source_is_the_first_verified_step(factories: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    recipe = factories / "fix.yaml"
    recipe.write_text(RECIPE)
    assert main(["validate", str(recipe)]) == 0
    assert "model exported from my_factories:build at apply" in capsys.readouterr().out
    report = factories / "report.json"
    assert main(["apply", str(recipe), "--report", str(report), "--trust-source"]) == 0
    text = capsys.readouterr().out
    assert (
        "source my_factories:build: export (torchscript) verified against torch" in text
        and "export (torchscript)" in text.split("surgeon summary")[1]
    )
    data = json.loads(report.read_text())
    assert data["ok"] and data["export"]["ok"] and data["export"]["outputs"][0]["name"] == "scores"
    assert data["input"] == "source: my_factories:build (torchscript)"
    fixed = onnx.load(str(factories / "fixed.onnx"))
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not [p for p in factories.iterdir() if p.name.startswith(".surgeon")]
    (factories / "fixed.onnx").unlink()

    import surgeon

    result = surgeon.apply(recipe, trust_source=True)  # the Python API takes the same path
    assert result.ok and result.export is not None and result.export["exporter"] == "torchscript"

    # -i overrides the source: no export, the given model is read
    assert (
        main(["apply", str(recipe), "-i", str(factories / "fixed.onnx"), "-o", str(factories / "again.onnx"), "-q"])
        == 0
    )


def test_recipe_source_mismatch_and_errors(factories: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = factories / "noisy.yaml"
    recipe.write_text(
        RECIPE.replace("my_factories:build", "my_factories:noisy")
        .replace("x:2x4", "x:8x8")
        .replace("  output_names: [scores]\n", "")
        .replace("outputs: {scores: {0: batch}}", "")
    )
    assert main(["apply", str(recipe), "--trust-source"]) == 1
    assert "verification failed: source: export (torchscript) differs from torch" in capsys.readouterr().err
    assert not (factories / "fixed.onnx").exists() and not [
        p for p in factories.iterdir() if p.name.startswith(".surgeon")
    ]

    both = factories / "both.yaml"
    both.write_text(RECIPE.replace("output: fixed.onnx", "model: m.onnx\noutput: fixed.onnx"))
    assert main(["validate", str(both)]) == 2
    assert (
        "both.yaml:2:1: source: a recipe takes its model from 'model' or from 'source', not both"
        in capsys.readouterr().err
    )
    bad = factories / "bad.yaml"
    bad.write_text(RECIPE.replace("x:2x4", "x:2xa"))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:4:" in err and "source.inputs" in err and "dims must be integers" in err
    missing = factories / "missing.yaml"
    missing.write_text(RECIPE.replace("my_factories:build", "my_factories:nothere"))
    assert main(["validate", str(missing)]) == 2
    assert "has no attribute 'nothere'" in capsys.readouterr().err
