"""surgeon export: a factory's module exported and verified against torch; factory errors are one
line, exit 2; outputs that differ from torch's are exit 1 and nothing is written."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

from surgeon.cli import main
from surgeon.export import parse_dynamic, parse_input

FACTORIES = '''
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

def build():
    torch.manual_seed(0)
    return Net()

def noisy():
    return Noisy()

def needs_arg(width):
    return Net()

def not_a_module():
    return 42

def broken():
    raise RuntimeError("weights file missing")
'''


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_factories.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_factories", None)


def test_export_torchscript_verified_then_doctor_clean(factories: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = factories / "net.onnx"
    argv = ["export", "my_factories:build", "-o", str(out), "--input", "x:2x4:float32", "--exporter", "torchscript", "--opset", "17", "--output-name", "scores", "--dynamic", "x:0:batch", "--dynamic", "scores:0:batch"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "scores: shape [2, 3]" in text and "ok" in text
    assert text.count("TracerWarning") == 1  # collected, shown once
    m = onnx.load(str(out))
    assert [i.name for i in m.graph.input] == ["x"] and [o.name for o in m.graph.output] == ["scores"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert sorted(p.name for p in factories.iterdir() if not p.name.startswith(("my_factories", "__pycache__"))) == ["net.onnx"]
    assert main(["doctor", str(out), "-q"]) == 0  # named I/O, a dynamic batch: nothing to fix
    assert main(argv) == 2  # an existing output is not overwritten without --force


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
def test_factory_errors_are_one_line_exit_2(factories: Path, capsys: pytest.CaptureFixture[str], spec: str, message: str) -> None:
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
