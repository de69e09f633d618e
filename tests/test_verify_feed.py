"""``surgeon verify a b`` compares a model with one that added an input (a promoted factor) when
told the value it stands for (``--feed``), and every verifying command takes input data
(``--inputs data.npz``); verify has no ``--no-verify`` (it always verifies)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from surgeon.cli import main
from tests.models_interface import resize_constant_nodes


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(resize_constant_nodes(), str(a))
    args = ["run", "promote-resize-scales", str(a), "-o", str(b), "--set", "form=factor", "--set", "input=factor"]
    assert main([*args, "-q"]) == 0
    return a, b


def test_verify_needs_the_value_of_an_added_input(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = pair
    assert main(["verify", str(a), str(b), "-q"]) == 2
    assert "--feed factor=VALUE" in capsys.readouterr().err
    assert main(["verify", str(a), str(b), "--feed", "factor=3.0", "--report", str(a.parent / "r.json")]) == 0
    report = json.loads((a.parent / "r.json").read_text())
    assert report["ok"] and report["kind"] == "verify"
    assert main(["verify", str(a), str(b), "--feed", "factor=2.0", "-q"]) == 1  # not the factor a computes with
    assert main(["verify", str(a), str(b), "--feed", "nope=1", "-q"]) == 2
    assert main(["verify", str(a), str(b), "--feed", "factor=x", "-q"]) == 2


def test_inputs_npz_feeds_verify_and_apply(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = pair
    x = onnx.load(str(a)).graph.input[0]
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    data = tmp_path / "data.npz"
    np.savez(data, **{x.name: np.full(shape, 0.5, np.float32)})
    report = tmp_path / "v.json"
    code = main(["verify", str(a), str(a), "--inputs", str(data), "--report", str(report), "-q"])
    assert code == 0
    assert main(["run", "cleanup", str(a), "-o", str(tmp_path / "c.onnx"), "--inputs", str(data), "-q"]) == 0
    assert main(["run", "cleanup", str(a), "-o", str(tmp_path / "c.onnx"), "--inputs", "missing.npz", "-q"]) == 2


def test_verify_has_no_no_verify_flag(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = pair
    assert main(["verify", str(a), str(a), "--no-verify"]) == 2
    assert "unrecognized arguments: --no-verify" in capsys.readouterr().err
    assert main(["verify", "--help"]) == 0
    assert "overrides the recipe" not in capsys.readouterr().out
