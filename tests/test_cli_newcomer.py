"""The command line a newcomer meets: --set with TorchScript names, one exit code per error
class, readable explain output with valid examples, python -m surgeon, JSON for tools,
inspect --tensors, op counts after apply, --dry-run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon.cli import main
from surgeon.cli.explain import EXAMPLES, describe, type_text
from surgeon.pass_api import catalog, get_pass


def example_model(batch: int | str = 1) -> onnx.ModelProto:
    """What surgeon.cli.explain.EXAMPLE_MODEL describes."""
    bias = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "bias")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "/up/scales")
    nodes = [
        helper.make_node("Identity", ["input.1"], ["/id/Identity_output_0"], name="/id/Identity"),
        helper.make_node("Add", ["/id/Identity_output_0", "bias"], ["/add/Add_output_0"], name="/add/Add"),
        helper.make_node(
            "Resize",
            ["/add/Add_output_0", "", "/up/scales"],
            ["/up/Resize_output_0"],
            name="/up/Resize",
            mode="nearest",
        ),
        helper.make_node("Relu", ["/up/Resize_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        helper.make_node("Identity", ["/relu/Relu_output_0"], ["output"], name="/out/Identity"),
        helper.make_node("Identity", ["/add/Add_output_0"], ["aux"], name="/aux/Identity"),
    ]
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3, 16, 16]),
            helper.make_tensor_value_info("aux", TensorProto.FLOAT, [batch, 3, 8, 8]),
        ],
        [bias, scales],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.fixture
def ts_model(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(example_model(), str(path))
    return path


def test_type_text_is_readable() -> None:
    from typing import Literal

    assert type_text(bool) == "bool"
    assert type_text(list[str]) == "list[str]"
    assert type_text(dict[str, str]) == "dict[str, str]"
    assert type_text(Literal["auto", "cpu"]) == "'auto' | 'cpu'"
    assert type_text(int | None) == "int | None"
    types = {p["name"]: p["type"] for p in describe(get_pass("promote-resize-scales"))["params"]}
    assert types == {
        "nodes": "list[str] | str | None",
        "input": "str | None",
        "form": "'scales' | 'factor'",
        "per_axis": "bool",
        "per_node": "bool",
        "crops": "'rewrite' | 'keep'",
        "probe_factor": "float",
    }
    for name in catalog():
        for p in describe(get_pass(name))["params"]:
            assert "<class" not in p["type"] and "typing." not in p["type"], (name, p)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_validates(name: str, tmp_path: Path) -> None:
    """The step `surgeon explain` prints is a valid recipe step on the model it names."""
    from surgeon.cli.explain import example_yaml

    model = tmp_path / "model.onnx"
    onnx.save(example_model("batch" if name == "fix-dims" else 1), str(model))
    info = describe(get_pass(name))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nmodel: model.onnx\npasses:\n  {example_yaml(info['example'])}\n")
    assert main(["validate", str(recipe), "-q"]) == 0


def test_every_builtin_pass_has_an_example() -> None:
    assert set(EXAMPLES) == set(catalog())


def test_python_m_surgeon_and_json_for_tools() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "surgeon", "passes", "--json"], capture_output=True, text=True, check=True
    ).stdout
    names = [p["name"] for p in json.loads(out)]
    assert names == sorted(catalog())
    out = subprocess.run(
        [sys.executable, "-m", "surgeon", "explain", "rename-io", "--json"], capture_output=True, text=True, check=True
    ).stdout
    info = json.loads(out)
    assert info["example"] == {"rename-io": EXAMPLES["rename-io"]}
    assert {p["name"]: p["type"] for p in info["params"]}["inputs"] == "dict[str, str]"


def test_explain_prints_readable_types_and_a_valid_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "cleanup"]) == 0
    out = capsys.readouterr().out
    assert "<class" not in out and "bool" in out
    assert "- cleanup: {}" in out
    assert main(["explain", "rename-io"]) == 0
    assert "- rename-io: {inputs: {input.1: image}, outputs: {output: logits}}" in capsys.readouterr().out


def _io_names(path: Path) -> tuple[list[str], list[str]]:
    m = onnx.load(str(path))
    return [i.name for i in m.graph.input], [o.name for o in m.graph.output]


def test_set_keeps_torchscript_names_whole(ts_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.onnx"
    assert (
        main(
            [
                "run",
                "rename-io",
                str(ts_model),
                "-o",
                str(out),
                "-q",
                "--set",
                "inputs.input.1=image",
                "--set",
                "outputs.aux=32",
            ]
        )
        == 0
    )
    assert _io_names(out) == (["image"], ["output", "32"])
    out2 = tmp_path / "b.onnx"
    assert (
        main(
            [
                "run",
                "rename-io",
                str(ts_model),
                "-o",
                str(out2),
                "-q",
                "--set",
                "inputs={input.1: image}",
                "--set",
                "outputs={aux: 7}",
            ]
        )
        == 0
    )
    assert _io_names(out2) == (["image"], ["output", "7"])
    out3 = tmp_path / "c.onnx"
    assert (
        main(
            [
                "run",
                "mark-dynamic",
                str(ts_model),
                "-o",
                str(out3),
                "-q",
                "--set",
                "inputs.input.1.0=batch",
                "--set",
                "outputs.output.0=batch",
                "--set",
                "outputs.aux.0=batch",
            ]
        )
        == 0
    )
    assert onnx.load(str(out3)).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_set_errors_name_the_param_and_hint_at_quoting(
    ts_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.onnx"
    assert main(["run", "rename-io", str(ts_model), "-o", str(out), "--set", "inptus.input.1=image"]) == 2
    err = capsys.readouterr().err
    assert "no param 'inptus'; did you mean 'inputs'?" in err and err.count("\n") == 1
    assert main(["run", "rename-io", str(ts_model), "-o", str(out), "--set", "inputs=[a"]) == 2
    assert "quote" in capsys.readouterr().err
    assert main(["run", "rename-io", str(ts_model), "-o", str(out), "--set", "inputs=3"]) == 2
    assert "quote" in capsys.readouterr().err
    assert not out.exists()


def test_one_exit_code_for_a_missing_tensor(ts_model: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: model.onnx\noutput: out.onnx\npasses:\n  - rename-io: {inputs: {inptu: x}}\n")
    assert main(["validate", str(recipe)]) == 2
    assert main(["apply", str(recipe)]) == 2
    assert main(["run", "rename-io", str(ts_model), "-o", str(tmp_path / "o.onnx"), "--set", "inputs.inptu=x"]) == 2
    assert not (tmp_path / "out.onnx").exists()


def test_inspect_tensors_lists_intermediates(ts_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(ts_model), "--tensors", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["/up/Resize_output_0"] == {
        "name": "/up/Resize_output_0",
        "op": "Resize",
        "node": "/up/Resize",
        "dtype": "float",
        "shape": [1, 3, 16, 16],
        "graph_output": False,
    }
    assert rows["input.1"]["op"] == "(input)" and rows["output"]["graph_output"]
    assert "bias" not in rows  # initializers are weights, not tensors a node makes
    assert main(["inspect", str(ts_model), "--tensors", "--filter", "^/relu", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["/relu/Relu_output_0"]
    assert main(["inspect", str(ts_model), "--tensors", "--filter", "("]) == 2


def test_apply_shows_op_counts_and_dry_run_writes_nothing(
    ts_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: model.onnx\noutput: out.onnx\npasses:\n  - remove-nodes: {ops: [Identity]}\n"
        "  - promote-resize-scales: {input: factor, form: factor}\n"
    )
    report = tmp_path / "report.json"
    before = sorted(tmp_path.iterdir())
    assert main(["apply", str(recipe), "--dry-run", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing written" in out and "Identity" in out
    assert sorted(p for p in tmp_path.iterdir() if p != report) == before
    data = json.loads(report.read_text())
    assert data["ok"] and [s["verdict"] for s in data["steps"]] == ["ok", "ok"]
    assert data["ops"]["before"]["Identity"] == 3 and "Identity" not in data["ops"]["after"]
    assert data["ops"]["after"]["Expand"] == 1
