"""The command line, through main(argv) and one real subprocess."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from surgeon.cli import main
from tests.conftest import write_recipe

RECIPE = """\
version: 1
model: model.onnx
output: out.onnx
verify: {device: cpu, dims: {batch: 2}, prove: false}
passes:
  - rename-io: {inputs: {"onnx::MatMul_0": x}, outputs: {"/relu/Relu_output_0": y}}
  - cleanup: {}
"""


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_apply_writes_verified_model_and_report(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(model_path.parent, RECIPE)
    report = model_path.parent / "report.json"
    assert main(["apply", str(recipe), "--report", str(report)]) == 0
    out = onnx.load(str(model_path.parent / "out.onnx"))
    assert [i.name for i in out.graph.input] == ["x"]
    assert [o.name for o in out.graph.output] == ["y"]
    assert [n.name for n in out.graph.node] == ["/fc/MatMul", "/relu/Relu"]
    meta = {p.key: p.value for p in out.metadata_props}
    assert meta["author"] == "someone"
    assert "rename-io" in meta["surgeon.recipe"] and len(meta["surgeon.source_sha256"]) == 64
    data = json.loads(report.read_text())
    assert data["ok"] is True and data["device_line"].startswith("CPU") and data["device"]["provider"] == "CPU"
    assert [s["pass"] for s in data["steps"]] == ["rename-io", "cleanup"]
    assert data["steps"][0]["outputs"][0]["name"] == "y" and data["steps"][0]["outputs"][0]["max_abs"] == 0.0
    text = capsys.readouterr().out
    assert "[1/2] rename-io" in text and "surgeon summary" in text and "wrote" in text


def test_run_single_pass_with_set(model_path: Path) -> None:
    out = model_path.parent / "one.onnx"
    code = main(
        [
            "run",
            "rename-io",
            str(model_path),
            "-o",
            str(out),
            "--set",
            "inputs.onnx::MatMul_0=image",
            "--dims",
            "batch=3",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert [i.name for i in onnx.load(str(out)).graph.input] == ["image"]


def test_refuses_to_overwrite_input_without_in_place(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _digest(model_path.parent)
    code = main(["run", "cleanup", str(model_path), "-o", str(model_path), "--dims", "batch=2"])
    assert code == 2
    assert "refusing to overwrite it without --in-place" in capsys.readouterr().err
    assert _digest(model_path.parent) == before
    assert main(["run", "cleanup", str(model_path), "-o", str(model_path), "--dims", "batch=2", "--in-place"]) == 0
    assert len(onnx.load(str(model_path)).graph.node) == 2


def test_verification_failure_writes_nothing_and_force_writes(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from surgeon.passes import cleanup

    real_run = cleanup.Cleanup.run

    def broken(self, model):  # a pass that changes the function: Relu -> Sigmoid
        result = real_run(self, model)
        for node in model.graph.nodes:
            if node.op == "Relu":
                node.op = "Sigmoid"
        return result

    monkeypatch.setattr(cleanup.Cleanup, "run", broken)
    out = model_path.parent / "bad.onnx"
    code = main(["run", "cleanup", str(model_path), "-o", str(out), "--dims", "batch=2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "verification failed: passes[0] (cleanup): output '/relu/Relu_output_0': max abs error" in err
    assert "nothing written" in err and not out.exists()
    assert not [p for p in model_path.parent.iterdir() if p.name.startswith(".")]
    assert main(["run", "cleanup", str(model_path), "-o", str(out), "--dims", "batch=2", "--force"]) == 1
    assert out.exists()


@pytest.mark.parametrize(
    "argv_tail, code, message",
    [
        (["run", "cleanup", "{missing}", "-o", "{out}"], 2, "no such file"),
        (["run", "cleanup", "{notonnx}", "-o", "{out}"], 3, "not a valid ONNX model"),
        (["run", "cleanup", "{truncated}", "-o", "{out}"], 3, "not a valid ONNX model"),
        (["run", "cleanup", "{model}", "-o", "{nofolder}"], 2, "output folder"),
        (["run", "clenaup", "{model}", "-o", "{out}"], 2, "did you mean 'cleanup'?"),
        (["run", "rename-io", "{model}", "-o", "{out}", "--set", "inputs.nope=x"], 2, "unknown input 'nope'"),
        (["run", "cleanup", "{model}", "-o", "{out}", "--set", "toposort=maybe"], 2, "toposort"),
        (["run", "cleanup", "{model}", "-o", "{out}", "--dims", "batch=two"], 2, "--dims: sizes must be integers"),
        (["run", "cleanup", "{model}", "-o", "{out}", "--dims", "batch=0"], 2, "dims"),
        (
            ["run", "cleanup", "{model}", "-o", "{out}", "--dims", "batch=2", "--device", "cuda", "--no-proof"],
            2,
            "CUDA is unavailable",
        ),
        (["apply", "{badyaml}"], 2, "YAML syntax error"),
        (["validate", "{badyaml}"], 2, "YAML syntax error"),
        (["inspect", "{notonnx}"], 3, "not a valid ONNX model"),
        (["explain", "nope"], 2, "unknown pass 'nope'"),
    ],
)
def test_bad_input_one_line_no_traceback_nothing_written(
    model_path: Path, capsys: pytest.CaptureFixture[str], argv_tail: list[str], code: int, message: str
) -> None:
    folder = model_path.parent
    (folder / "not.onnx").write_text("hello, this is not a model\n")
    (folder / "trunc.onnx").write_bytes(model_path.read_bytes()[:-40])
    (folder / "bad.yaml").write_text("version: 1\npasses: [\n  - a: b\n")
    names = {
        "missing": folder / "missing.onnx",
        "notonnx": folder / "not.onnx",
        "truncated": folder / "trunc.onnx",
        "model": model_path,
        "out": folder / "out.onnx",
        "nofolder": folder / "nowhere" / "out.onnx",
        "badyaml": folder / "bad.yaml",
    }
    argv = [a.format(**names) for a in argv_tail]
    before = _digest(folder)
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert message in lines[0] and "Traceback" not in err
    assert _digest(folder) == before


def test_inspect_reports_io_ops_and_resize_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from onnx import helper, numpy_helper

    scales = helper.make_node(
        "Constant",
        [],
        ["scales"],
        name="const_scales",
        value=numpy_helper.from_array(np.array([1, 1, 3, 3], np.float32)),
    )
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="cubic")
    graph = helper.make_graph(
        [scales, resize],
        "g",
        [helper.make_tensor_value_info("x", 1, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("y", 1, ["n", 1, 12, 12])],
    )
    path = tmp_path / "r.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"] == [{"name": "x", "dtype": "float", "shape": ["n", 1, 4, 4]}]
    assert info["ops"] == {"Constant": 1, "Resize": 1}
    (r,) = info["resize_nodes"]
    assert r["scales"] == {
        "from": "Constant node",
        "node": "const_scales",
        "tensor": "scales",
        "value": [1.0, 1.0, 3.0, 3.0],
    }
    assert r["roi"] == {"from": "absent"}
    assert main(["inspect", str(path)]) == 0
    assert "Resize 'up': roi: absent; scales: Constant node 'scales' = [1.0, 1.0, 3.0, 3.0]" in capsys.readouterr().out


def test_passes_explain_schema_validate(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes"]) == 0
    assert "rename-io" in capsys.readouterr().out
    assert main(["explain", "rename-io"]) == 0
    text = capsys.readouterr().out
    assert "old input name -> new name" in text
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "surgeon recipe"
    recipe = write_recipe(model_path.parent, RECIPE)
    assert main(["validate", str(recipe)]) == 0
    assert "ok (2 passes)" in capsys.readouterr().out
    assert not (model_path.parent / "out.onnx").exists()


def test_verify_two_models_with_mapping(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = model_path.parent / "renamed.onnx"
    assert (
        main(
            [
                "run",
                "rename-io",
                str(model_path),
                "-o",
                str(out),
                "--set",
                "outputs./relu/Relu_output_0=y",
                "--dims",
                "batch=2",
                "-q",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["verify", str(model_path), str(out), "--dims", "batch=2"]) == 1  # output 'y' is not mapped
    capsys.readouterr()
    assert main(["verify", str(model_path), str(out), "--dims", "batch=2", "--map", "/relu/Relu_output_0=y"]) == 0
    assert "ok" in capsys.readouterr().out


def test_version_and_help_without_heavy_imports() -> None:
    code = (
        "import sys; from surgeon.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "main(['passes'])\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "apply" in proc.stdout and "rename-io" in proc.stdout


def test_real_subprocess_apply(model_path: Path) -> None:
    recipe = write_recipe(model_path.parent, RECIPE)
    proc = subprocess.run(
        [sys.executable, "-m", "surgeon.cli", "apply", str(recipe), "-q"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert (model_path.parent / "out.onnx").exists()
    proc = subprocess.run([sys.executable, "-m", "surgeon.cli", "--version"], capture_output=True, text=True)
    assert proc.stdout.startswith("surgeon ")


def test_no_color_is_honoured(model_path: Path) -> None:
    import os

    recipe = write_recipe(model_path.parent, RECIPE)
    env = {**os.environ, "FORCE_COLOR": "1", "TERM": "xterm-256color"}
    colored = subprocess.run(
        [sys.executable, "-m", "surgeon.cli", "apply", str(recipe), "--in-place"],
        capture_output=True,
        text=True,
        env=env,
    )
    green = "\x1b[32m"  # the "ok" verdict
    assert colored.returncode == 0 and green in colored.stdout
    env["NO_COLOR"] = "1"
    plain = subprocess.run(
        [sys.executable, "-m", "surgeon.cli", "apply", str(recipe), "--in-place"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert plain.returncode == 0 and "surgeon summary" in plain.stdout
    assert not re.search(r"\x1b\[[0-9;]*(3[0-9]|9[0-7]|38;)", plain.stdout), "colour codes despite NO_COLOR"
