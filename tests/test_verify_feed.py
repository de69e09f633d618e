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


def test_apply_verifies_on_the_inputs_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`surgeon apply --inputs`: to-fp16 held to rtol = atol = 0 fails on random data (float16
    rounding) and passes on the zeros given, so the data given is what the steps ran on; an array
    named after no input is exit 2 before any pass runs."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    w = nh.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), tmp_path / "m.onnx")
    (tmp_path / "r.yaml").write_text("version: 1\nmodel: m.onnx\noutput: o.onnx\npasses:\n  - to-fp16: {}\n")
    np.savez(tmp_path / "zeros.npz", x=np.zeros((2, 4), np.float32))
    np.savez(tmp_path / "wrong.npz", z=np.zeros((2, 4), np.float32))
    strict = ["apply", str(tmp_path / "r.yaml"), "--rtol", "0", "--atol", "0", "-q"]
    assert main(strict) == 1 and not (tmp_path / "o.onnx").exists()
    assert main([*strict, "--inputs", str(tmp_path / "zeros.npz")]) == 0 and (tmp_path / "o.onnx").exists()
    (tmp_path / "o.onnx").unlink()
    capsys.readouterr()
    assert main([*strict, "--inputs", str(tmp_path / "wrong.npz")]) == 2
    assert "wrong.npz" in capsys.readouterr().err and not (tmp_path / "o.onnx").exists()
