"""One path for every run: the output guard (every file a run writes checked together before any
work, devices and FIFOs refused, no target an input, the recipe or another target), the command
line's overrides validated once for one model and many, one report with a schema version, and
``--out-dir`` created when missing. Each test failed on the code before the one apply path."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon.cli import main
from surgeon.report import SCHEMA_VERSION


def _model(seed: int = 0, input_name: str = "input.1") -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((16, 16)).astype(np.float32), "w")
    g = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "w"], ["h"], name="mm"),
            helper.make_node("Tanh", ["h"], ["y"], name="tanh"),
        ],
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [w],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """m.onnx, recipe.yaml (m.onnx -> out.onnx), and a models/ folder of three for many-models runs."""
    onnx.save(_model(), str(tmp_path / "m.onnx"))
    (tmp_path / "recipe.yaml").write_text(
        "version: 1\nmodel: m.onnx\noutput: out.onnx\npasses:\n  - rename-io: {inputs: {input.1: image}}\n"
    )
    (tmp_path / "models").mkdir()
    for i in range(3):
        onnx.save(_model(seed=i), str(tmp_path / "models" / f"m{i}.onnx"))
    return tmp_path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- --report naming a file the run reads or writes -----------------------------------------------


@pytest.mark.parametrize("target", ["m.onnx", "recipe.yaml", "out.onnx"])
def test_report_naming_input_recipe_or_output_exits_2_and_writes_nothing(run: Path, target: str) -> None:
    (run / "out.onnx").write_bytes(b"a previous output")
    before = _snapshot(run)
    code = main(["apply", str(run / "recipe.yaml"), "--report", str(run / target), "-q"])
    assert code == 2
    assert _snapshot(run) == before  # every file byte-identical, nothing new


@pytest.mark.parametrize("target", ["models/m1.onnx", "recipe.yaml", "fixed/m0.onnx", "fixed/m2.report.json"])
def test_many_models_report_naming_an_input_recipe_or_output_exits_2(run: Path, target: str) -> None:
    (run / "fixed").mkdir()
    (run / "fixed" / "m0.onnx").write_bytes(b"an earlier output")
    before = _snapshot(run)
    args = ["apply", str(run / "recipe.yaml"), "-i", str(run / "models" / "*.onnx"), "--out-dir", str(run / "fixed")]
    assert main([*args, "--report", str(run / target), "-q", "-j", "1"]) == 2
    assert _snapshot(run) == before


def test_many_models_per_model_report_cannot_be_another_models_output(run: Path) -> None:
    """A model named ``m0.report.json`` would be written where m0's report goes."""
    onnx.save(_model(seed=5), str(run / "models" / "m0.report.json"))
    before = _snapshot(run)
    pattern = str(run / "models" / "m*")
    code = main(["apply", str(run / "recipe.yaml"), "-i", pattern, "--out-dir", str(run / "fixed"), "-q", "-j", "1"])
    assert code == 2
    assert _snapshot(run) == before
    assert not (run / "fixed").exists()  # the folder it would have created is not left behind


def test_report_into_a_missing_folder_exits_2_before_the_work(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["apply", str(run / "recipe.yaml"), "--report", str(run / "no" / "r.json")])
    assert code == 2
    assert not (run / "out.onnx").exists()
    captured = capsys.readouterr()
    assert "does not exist" in captured.err and "[1/1]" not in captured.out  # no pass ran


# --- devices, FIFOs, sockets and folders are never replaced ---------------------------------------


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _chardev(path: Path) -> Path:
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the null device's numbers, in our own folder
    return path


def _socket(path: Path) -> Path:
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))  # the socket file stays after close
    sock.close()
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    (path / "inside.txt").write_text("keep")
    return path


@pytest.mark.parametrize("make", [_socket, _folder], ids=["socket", "folder"])
@pytest.mark.parametrize("flag", ["-o", "--report", "--html"])
def test_output_that_is_a_socket_or_folder_exits_2_and_stays(run: Path, make, flag: str) -> None:  # type: ignore[no-untyped-def]
    node = make(run / "node")
    args = ["apply", str(run / "recipe.yaml"), flag, str(node), "-q"]
    if flag != "-o":
        args += ["-o", str(run / "out.onnx")]
    assert main(args) == 2
    mode = os.lstat(node).st_mode
    assert stat.S_ISSOCK(mode) if make is _socket else stat.S_ISDIR(mode), "the node was replaced"
    if make is _folder:
        assert [p.name for p in node.iterdir()] == ["inside.txt"]
    assert not (run / "out.onnx").exists()


@pytest.mark.parametrize("make", [_fifo, _chardev], ids=["fifo", "chardev"])
@pytest.mark.parametrize("flag", ["-o", "--report"])
def test_output_that_is_a_fifo_or_device_exits_2_and_stays(run: Path, make, flag: str) -> None:  # type: ignore[no-untyped-def]
    if make is _chardev and os.geteuid() != 0:
        pytest.skip("making a device node needs root (CI runs as root)")
    node = make(run / "node")
    args = ["apply", str(run / "recipe.yaml"), flag, str(node), "-q"]
    if flag == "--report":
        args += ["-o", str(run / "out.onnx")]
    assert main(args) == 2
    mode = os.lstat(node).st_mode
    assert stat.S_ISFIFO(mode) if make is _fifo else stat.S_ISCHR(mode), "the node was replaced"
    assert not (run / "out.onnx").exists()


def test_run_and_export_refuse_a_fifo_output(run: Path) -> None:
    node = _fifo(run / "node.onnx")
    assert main(["run", "cleanup", str(run / "m.onnx"), "-o", str(node), "-q"]) == 2
    assert main(["export", "nomodule:build", "-o", str(node), "--input", "x:1x4:float32", "-q"]) == 2
    assert stat.S_ISFIFO(os.lstat(node).st_mode)


def test_many_models_output_that_is_a_fifo_exits_2(run: Path) -> None:
    (run / "fixed").mkdir()
    node = _fifo(run / "fixed" / "m1.onnx")
    pattern = str(run / "models" / "*.onnx")
    code = main(["apply", str(run / "recipe.yaml"), "-i", pattern, "--out-dir", str(run / "fixed"), "-q", "-j", "1"])
    assert code == 2
    assert stat.S_ISFIFO(os.lstat(node).st_mode)
    assert sorted(p.name for p in (run / "fixed").iterdir()) == ["m1.onnx"]  # nothing else written


def test_emit_recipe_into_a_fifo_exits_2(run: Path) -> None:
    node = _fifo(run / "fix.yaml")
    assert main(["doctor", str(run / "m.onnx"), "--emit-recipe", str(node), "--force", "-q"]) == 2
    assert stat.S_ISFIFO(os.lstat(node).st_mode)


def test_output_symlink_is_replaced_not_followed(run: Path) -> None:
    (run / "elsewhere.onnx").write_bytes(b"keep me")
    (run / "link.onnx").symlink_to(run / "elsewhere.onnx")
    assert main(["apply", str(run / "recipe.yaml"), "-o", str(run / "link.onnx"), "-q"]) == 0
    assert (run / "elsewhere.onnx").read_bytes() == b"keep me"
    assert not (run / "link.onnx").is_symlink()
    assert onnx.load(str(run / "link.onnx")).graph.input[0].name == "image"


# --- the command line's overrides: validated once, for one model and many -------------------------


def test_many_models_refuses_a_negative_rtol(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pattern = str(run / "models" / "*.onnx")
    code = main(["apply", str(run / "recipe.yaml"), "-i", pattern, "--out-dir", str(run / "fixed"), "--rtol", "-1"])
    assert code == 2
    assert "--rtol -1.0" in capsys.readouterr().err
    assert not (run / "fixed").exists()
    assert main(["apply", str(run / "recipe.yaml"), "--rtol", "-1", "-q"]) == 2  # as for one model


def test_many_models_tolerance_flags_override_a_pass_default(run: Path) -> None:
    """to-fp16's own default (rtol 1e-2) holds where the user set none; --rtol/--atol 0 win over it,
    in many-models mode as for one model."""
    (run / "fp16.yaml").write_text("version: 1\npasses:\n  - to-fp16: {keep_io_types: true}\n")
    pattern = str(run / "models" / "*.onnx")
    base = ["apply", str(run / "fp16.yaml"), "-i", pattern, "-q", "-j", "1"]
    assert main([*base, "--out-dir", str(run / "default")]) == 0
    rep = json.loads((run / "default" / "m0.report.json").read_text())
    assert rep["steps"][0]["outputs"][0]["rtol"] == pytest.approx(1e-2)
    assert main([*base, "--out-dir", str(run / "strict"), "--rtol", "0", "--atol", "0"]) == 1
    rep = json.loads((run / "strict" / "m0.report.json").read_text())
    out = rep["steps"][0]["outputs"][0]
    assert (out["rtol"], out["atol"]) == (0, 0) and out["max_abs"] > 0
    assert rep["failure_class"] == "verification" and "max abs error" in rep["message"]
    one = main(["apply", str(run / "fp16.yaml"), "-i", str(run / "m.onnx"), "-o", str(run / "one.onnx")])
    assert one == 0  # the same recipe on one model: the pass default
    strict_one = ["apply", str(run / "fp16.yaml"), "-i", str(run / "m.onnx"), "-o", str(run / "one.onnx")]
    assert main([*strict_one, "--rtol", "0", "--atol", "0", "-q"]) == 1


def test_a_bug_in_a_worker_exits_4(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import surgeon.pipeline

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(surgeon.pipeline.Pipeline, "run", broken)  # -j 1 runs in this process
    pattern = str(run / "models" / "*.onnx")
    code = main(["apply", str(run / "recipe.yaml"), "-i", pattern, "--out-dir", str(run / "fixed"), "-q", "-j", "1"])
    assert code == 4
    rep = json.loads((run / "fixed" / "m0.report.json").read_text())
    assert rep["failure_class"] == "bug" and "RuntimeError" in rep["traceback"]
    assert main(["apply", str(run / "recipe.yaml"), "-q"]) == 4  # one model: the same code


def test_a_bug_in_a_real_worker_process_exits_4(run: Path) -> None:
    """-j 2: the models go to worker processes (forkserver or spawn, so no monkeypatch reaches
    them): a sitecustomize on PYTHONPATH breaks Pipeline.run in every process of a subprocess run."""
    import os
    import subprocess
    import sys

    hook = run / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import surgeon.pipeline\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('a bug in a worker')\n"
        "surgeon.pipeline.Pipeline.run = broken\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    pattern = str(run / "models" / "*.onnx")
    args = ["apply", str(run / "recipe.yaml"), "-i", pattern, "--out-dir", str(run / "fixed"), "-q", "-j", "2"]
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from surgeon.cli import main; sys.exit(main(sys.argv[1:]))", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 4, done.stderr
    reports = sorted((run / "fixed").glob("*.report.json"))
    assert len(reports) == 3
    for path in reports:
        rep = json.loads(path.read_text())
        assert rep["failure_class"] == "bug" and "a bug in a worker" in rep["traceback"]
    assert not list((run / "fixed").glob("*.onnx"))


# --- one report ------------------------------------------------------------------------------------


def test_one_report_for_one_model_and_many(run: Path) -> None:
    assert main(["apply", str(run / "recipe.yaml"), "--report", str(run / "one.json"), "-q"]) == 0
    pattern = str(run / "models" / "*.onnx")
    args = ["apply", str(run / "recipe.yaml"), "-i", pattern, "--out-dir", str(run / "fixed")]
    assert main([*args, "--report", str(run / "many.json"), "-q", "-j", "1"]) == 0
    one = json.loads((run / "one.json").read_text())
    per_model = json.loads((run / "fixed" / "m0.report.json").read_text())
    summary = json.loads((run / "many.json").read_text())
    assert one["schema_version"] == per_model["schema_version"] == summary["schema_version"] == SCHEMA_VERSION
    assert set(one) == set(per_model)  # the same builder
    assert (one["kind"], summary["kind"]) == ("apply", "many")
    assert one["ok"] and one["output"] == str(run / "out.onnx") and one["failure_class"] is None
    assert summary["models"][0] == per_model


def test_failure_report_names_the_failure_and_keeps_other_files(run: Path) -> None:
    (run / "bad.yaml").write_text(
        "version: 1\nmodel: m.onnx\noutput: out.onnx\npasses:\n  - rename-io: {inputs: {nope: x}}\n"
    )
    assert main(["apply", str(run / "bad.yaml"), "--report", str(run / "r.json"), "-q"]) == 2
    rep = json.loads((run / "r.json").read_text())
    assert rep["ok"] is False and rep["failure_class"] == "usage" and "nope" in rep["message"]
    assert rep["schema_version"] == SCHEMA_VERSION and not (run / "out.onnx").exists()


# --- --out-dir --------------------------------------------------------------------------------------


def test_out_dir_is_created_when_missing(run: Path) -> None:
    pattern = str(run / "models" / "*.onnx")
    out_dir = run / "new" / "fixed"
    (run / "new").mkdir()
    code = main(["apply", str(run / "recipe.yaml"), "-i", pattern, "--out-dir", str(out_dir), "-q", "-j", "1"])
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [f"m{i}.onnx" for i in range(3)] + [f"m{i}.report.json" for i in range(3)]
    )


def test_out_dir_without_write_permission_exits_2_before_any_work(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Root writes anywhere, so the permission is taken away where surgeon asks for it."""
    (run / "fixed").mkdir()
    real_access = os.access

    def access(path: object, mode: int, **kwargs: object) -> bool:
        if Path(str(path)).resolve() == (run / "fixed").resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    pattern = str(run / "models" / "*.onnx")
    code = main(["apply", str(run / "recipe.yaml"), "-i", pattern, "--out-dir", str(run / "fixed"), "-j", "1"])
    assert code == 2
    captured = capsys.readouterr()
    assert "not writable" in captured.err and "models, " not in captured.out  # no model ran
    assert list((run / "fixed").iterdir()) == []


def test_the_report_shows_each_steps_params_and_verify_keywords(run: Path) -> None:
    (run / "steps.yaml").write_text(
        "version: 1\nmodel: m.onnx\noutput: out.onnx\nverify: {prove: false}\npasses:\n"
        "  - rename-io:\n      inputs: {input.1: image}\n    verify: {rtol: 0.5}\n"
    )
    assert main(["apply", str(run / "steps.yaml"), "--report", str(run / "r.json"), "-q"]) == 0
    [step] = json.loads((run / "r.json").read_text())["steps"]
    assert step["params"]["inputs"] == {"input.1": "image"} and step["params"]["outputs"] == {}  # defaults too
    assert step["params"]["verify"] == {"rtol": 0.5}
    assert step["outputs"][0]["rtol"] == 0.5


def test_structural_diffs_are_made_only_where_something_shows_them(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quarter of an interface recipe's time on a big graph went to sketching the graph for
    step diffs nobody asked for: a plain apply sketches nothing; --report (and many models,
    whose per-model reports the parent writes) still carry them."""
    import surgeon.pipeline

    real = surgeon.pipeline.sketch
    calls: list[int] = []

    def counted(graph: object) -> object:
        calls.append(1)
        return real(graph)

    monkeypatch.setattr(surgeon.pipeline, "sketch", counted)
    assert main(["apply", str(run / "recipe.yaml"), "-q"]) == 0 and calls == []
    assert main(["apply", str(run / "recipe.yaml"), "-q", "--force", "--report", str(run / "r.json")]) == 0
    assert calls and json.loads((run / "r.json").read_text())["steps"][0]["structure"]["ops_before"]
    pattern = str(run / "models" / "*.onnx")
    assert (
        main(["apply", str(run / "recipe.yaml"), "-i", pattern, "--out-dir", str(run / "fixed"), "-q", "-j", "1"]) == 0
    )
    assert json.loads((run / "fixed" / "m0.report.json").read_text())["steps"][0]["structure"]["ops_before"]
