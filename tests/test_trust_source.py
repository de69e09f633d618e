"""Code from recipes and factories: a recipe's ``source:`` names Python code, which ``validate``
never runs and ``apply`` runs only when the user says so; whatever user code raises (``sys.exit``
included) or a ``breakpoint()`` in it is one line, never a silent exit 0 or a debugger; the
module failing on the given inputs is exit 3; the exporter's refusal keeps torch's cause."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import onnx
import pytest

from surgeon.cli import main
from surgeon.errors import UsageError

MODULE = """
import pathlib
import sys
import torch

pathlib.Path(__file__).with_name("imported.marker").write_text("imported")

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))

class Raises(torch.nn.Module):
    def forward(self, x):
        raise ValueError("forward says no")

class Exits(torch.nn.Module):
    def forward(self, x):
        sys.exit(0)

class Scaled(torch.nn.Module):  # dynamo refuses .item() feeding interpolate's scale_factor
    def forward(self, x, f):
        return torch.nn.functional.interpolate(x, scale_factor=f.item(), mode="nearest")

class ItemUp(torch.nn.Module):  # the tutorial's SRCNN: the factor read with .item()
    def forward(self, x, factor):
        return torch.nn.functional.interpolate(x, scale_factor=factor.item(), mode="nearest")

def item_up():
    return ItemUp()

def build():
    torch.manual_seed(0)
    pathlib.Path(__file__).with_name("called.marker").write_text("called")
    return Net()

def exits():
    sys.exit(0)

def stops():
    breakpoint()
    return Net()

def raises():
    return Raises()

def forward_exits():
    return Exits()

def scaled():
    return Scaled()
"""

RECIPE = """version: 1
source:
  factory: {factory}
  inputs: [x:1x3x8x8]
  exporter: torchscript
output: out.onnx
passes:
  - cleanup: {{}}
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A recipe folder holding the module; the current folder elsewhere; the module not yet imported."""
    recipes = tmp_path / "downloaded"
    recipes.mkdir()
    (recipes / "user_models.py").write_text(MODULE)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("SURGEON_TRUST_SOURCE", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_factory puts the recipe's folder first
    yield recipes
    for name in ("user_models", "exiting_mod", "broken_mod"):
        sys.modules.pop(name, None)


def _recipe(folder: Path, factory: str = "user_models:build", name: str = "r.yaml") -> Path:
    path = folder / name
    path.write_text(RECIPE.format(factory=factory))
    return path


def _ran(folder: Path) -> bool:
    return (folder / "imported.marker").exists() or (folder / "called.marker").exists()


def test_validate_checks_the_source_block_without_importing(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(_recipe(folder))]) == 0
    assert "model exported from user_models:build at apply" in capsys.readouterr().out
    assert not _ran(folder) and "user_models" not in sys.modules
    # a name the module does not define, found by parsing the file, not importing it
    assert main(["validate", str(_recipe(folder, "user_models:nothere", "n.yaml"))]) == 2
    err = capsys.readouterr().err
    assert "n.yaml:3:12: source.factory:" in err and "has no attribute 'nothere'" in err and err.count("\n") == 1
    # no such module file in the recipe's folder or on sys.path
    assert main(["validate", str(_recipe(folder, "absent_mod:build", "a.yaml"))]) == 2
    err = capsys.readouterr().err
    assert "a.yaml:3:12: source.factory:" in err and "no file for module absent_mod" in err
    # a module that does not parse is said so, not run
    (folder / "broken_mod.py").write_text("def build(:\n")
    assert main(["validate", str(_recipe(folder, "broken_mod:build", "b.yaml"))]) == 2
    assert "is not valid Python" in capsys.readouterr().err
    # apply --dry-run without trust: exit 2, one line naming the module and the file, nothing run
    assert main(["apply", str(_recipe(folder)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "r.yaml:3:12: source.factory: user_models:build" in err
    assert f"import module user_models ({folder / 'user_models.py'})" in err and "--trust-source" in err
    assert "SURGEON_TRUST_SOURCE=1" in err
    assert not _ran(folder) and not (folder / "out.onnx").exists()


def test_apply_runs_source_code_only_when_trusted(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import surgeon

    recipe = _recipe(folder)
    with pytest.raises(UsageError, match="not run without --trust-source"):
        surgeon.apply(recipe)  # the Python API: a recipe file is data too
    assert not _ran(folder)
    assert main(["apply", str(recipe), "--trust-source", "-q"]) == 0
    assert _ran(folder) and onnx.load(str(folder / "out.onnx")).graph.input[0].name == "x"
    (folder / "out.onnx").unlink()
    sys.modules.pop("user_models", None)
    monkeypatch.setenv("SURGEON_TRUST_SOURCE", "1")
    assert main(["apply", str(recipe), "-q"]) == 0
    assert (folder / "out.onnx").exists()
    monkeypatch.delenv("SURGEON_TRUST_SOURCE")
    assert surgeon.apply(recipe, output=folder / "api.onnx", trust_source=True).ok


def test_export_of_named_code_needs_no_flag(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(folder))
    out = folder / "net.onnx"
    argv = ["export", "user_models:build", "-o", str(out), "--input", "x:1x3x8x8", "--exporter", "torchscript", "-q"]
    assert main(argv) == 0 and out.exists()


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("user_models:exits", "the factory raised SystemExit: it called sys.exit(0)"),
        ("exiting_mod:build", "cannot import exiting_mod: SystemExit: it called sys.exit(0)"),
        ("user_models:stops", ""),  # breakpoint() does nothing: the factory returns its module
        ("builtins:breakpoint", "the factory returned NoneType, not a torch.nn.Module"),
    ],
)
def test_sys_exit_and_breakpoint_in_user_code_are_one_line(
    folder: Path, capsys: pytest.CaptureFixture[str], factory: str, message: str
) -> None:
    (folder / "exiting_mod.py").write_text("import sys\nsys.exit(0)\ndef build():\n    pass\n")
    recipe = _recipe(folder, factory)
    code = main(["apply", str(recipe), "--trust-source", "-q"])
    err = capsys.readouterr().err
    if not message:
        assert code == 0 and (folder / "out.onnx").exists()
        return
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (folder / "out.onnx").exists()
    sys.path.insert(0, str(folder))
    out = folder / "e.onnx"
    assert main(["export", factory, "-o", str(out), "--input", "x:1x3x8x8"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()
    if factory != "builtins:breakpoint":
        assert main(["validate", str(recipe)]) == 0  # validate runs none of it


@pytest.mark.parametrize(
    ("factory", "inputs", "message"),
    [
        ("build", ["x:1x4x8x8"], "expected input[1, 4, 8, 8] to have 3 channels"),  # wrong channel count
        ("build", ["x:1x3x8x8:int64"], "the module fails on the given inputs (x:1x3x8x8:int64)"),  # wrong dtype
        ("build", ["x:3x8"], "the module fails on the given inputs (x:3x8:float32)"),  # wrong rank
        ("raises", ["x:2"], "ValueError: forward says no"),
        ("forward_exits", ["x:2"], "SystemExit: it called sys.exit(0)"),
    ],
)
def test_forward_failing_on_the_given_inputs_is_exit_3(
    folder: Path, capsys: pytest.CaptureFixture[str], factory: str, inputs: list[str], message: str
) -> None:
    sys.path.insert(0, str(folder))
    out = folder / "m.onnx"
    argv = ["export", f"user_models:{factory}", "-o", str(out)] + [a for i in inputs for a in ("--input", i)]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "the module fails on the given inputs" in err and message in err
    assert err.count("\n") == 1 and "internal error" not in err and not out.exists()


def test_dynamo_refusal_keeps_torch_cause(folder: Path, capfd: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(folder))
    out = folder / "s.onnx"
    argv = ["export", "user_models:scaled", "-o", str(out), "--input", "x:1x1x4x4", "--input", "f:1"]
    assert main(argv) == 3
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.onnx.export (dynamo) failed" in err[0]
    assert "TypeError" in err[0] and "scale_factors" in err[0] and not err[0].endswith("Next steps:")
    assert main([*argv, "-v"]) == 3  # the full text behind -v
    assert "Exception summary" in capfd.readouterr().err


def test_export_overwrite_and_force_are_two_choices(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(folder))
    out = folder / "net.onnx"
    out.write_bytes(b"old")
    argv = ["export", "user_models:build", "-o", str(out), "--input", "x:1x3x8x8", "--exporter", "torchscript", "-q"]
    assert main([*argv, "--force"]) == 2  # --force does not replace an existing file
    assert "--overwrite replaces it" in capsys.readouterr().err and out.read_bytes() == b"old"
    assert main([*argv, "--overwrite"]) == 0
    assert onnx.load(str(out)).graph.input[0].name == "x"


def test_model_that_is_a_fifo_is_refused_at_its_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("version: 1\nmodel: pipe.onnx\noutput: out.onnx\npasses:\n  - cleanup: {}\n")
    for argv in (["apply", str(recipe)], ["validate", str(recipe)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{recipe}:2:8: model: pipe.onnx: is a FIFO (named pipe), not an ONNX model file" in err
        assert err.count("\n") == 1


def test_unreadable_external_data_is_named_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.models_external import external_chain

    path, data = external_chain(tmp_path, layers=2, dim=8)
    real_open = os.open

    def denied(file: object, flags: int, *args: object, **kwargs: object) -> int:
        if os.fspath(file) == os.fspath(data):  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(data))  # type: ignore[arg-type]
        return real_open(file, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", denied)
    out = tmp_path / "out.onnx"
    assert main(["run", "cleanup", str(path), "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert f"external data file '{data.name}' cannot be read: Permission denied" in err
    assert "generated inputs" not in err and err.count("\n") == 1 and not out.exists()


def _traced_size(path: Path) -> list[int]:
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in sess.get_inputs()}
    return list(sess.run(None, feed)[0].shape)


@pytest.mark.parametrize("how", ["value", "npz", "range"])
def test_export_takes_input_values_for_the_trace(
    folder: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, how: str
) -> None:
    """The .item() factor is traced with the value given (not a random draw, a downscale); the
    fresh comparison uses another value, so the frozen factor still fails, and --force writes it."""
    import numpy as np

    sys.path.insert(0, str(folder))
    out = folder / f"{how}.onnx"
    argv = ["export", "user_models:item_up", "-o", str(out), "--input", "x:1x1x4x4", "--exporter", "torchscript"]
    if how == "value":
        argv += ["--input", "factor=3.0"]
    elif how == "npz":
        np.savez(tmp_path / "data.npz", factor=np.array(3.0, np.float32))
        argv += ["--inputs", str(tmp_path / "data.npz")]
    else:
        argv += ["--input", "factor:", "--range", "factor=2:2.5"]
    assert main([*argv, "--force", "-q"]) == 1  # the frozen factor differs on the fresh value
    assert "written anyway (--force)" in capsys.readouterr().err
    size = _traced_size(out)
    if how == "range":
        assert 8 <= size[-1] < 10  # an upscale drawn from [2, 2.5), not [-1, 1)
    else:
        assert size == [1, 1, 12, 12]  # traced at factor 3.0 exactly


def test_export_input_value_errors(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(folder))
    base = ["export", "user_models:item_up", "-o", str(folder / "e.onnx"), "--input", "x:1x1x4x4"]
    for extra, message in (
        (["--input", "factor=abc"], "the value must be numbers"),
        (["--input", "factor:2=1,2,3"], "3 values for 2 elements"),
        (["--input", "factor=3.0", "--range", "nope=1:2"], "no input 'nope'"),
        (["--input", "factor=3.0", "--range", "factor=2:1"], "LOW must be below HIGH"),
    ):
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err


def _relu(declared: int) -> onnx.ModelProto:
    """``y = Relu(x)`` on ``[1, 4]``; ``declared`` is the output's width as written (5: the full
    checker's shape inference refuses it, onnx loads it and passes keep it)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, declared])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_in_place_no_verify_while_the_model_is_replaced_never_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Repeated in-place applies with verification off while another writer keeps replacing the
    file (a model the checker refuses, then one it accepts, each renamed in atomically) and
    reading it. The post-save checker used to re-read the source from its path to decide whether
    a failure was the source's: the file there was another model by then, the output was blamed
    and the run exited 1 ("verification failed" with verification off). The source's verdict is
    now the model as loaded; every run exits 0."""
    import threading
    import time

    model = tmp_path / "m.onnx"
    bad, good = _relu(5).SerializeToString(), _relu(4).SerializeToString()
    model.write_bytes(bad)
    stop = threading.Event()
    swaps = [0]

    def other_writer() -> None:
        n = 0
        while not stop.is_set():
            tmp = tmp_path / f"other-{n % 2}.tmp"
            tmp.write_bytes(good if n % 2 else bad)
            os.replace(tmp, model)
            onnx.load(str(model))  # and reads it
            n += 1
            time.sleep(0.001)
        swaps[0] = n

    thread = threading.Thread(target=other_writer, daemon=True)
    thread.start()
    codes = []
    try:
        t0 = time.monotonic()
        while len(codes) < 24 and time.monotonic() - t0 < 15:
            cmd = ["run", "set-metadata", str(model), "-o", str(model), "--in-place", "--no-verify", "-q"]
            codes.append(main([*cmd, "--set", f"producer_name=run{len(codes)}"]))
    finally:
        stop.set()
        thread.join()
    err = capsys.readouterr().err
    assert swaps[0] > len(codes) and len(codes) >= 12
    assert codes == [0] * len(codes), err


def test_in_place_is_its_own_input_even_when_two_stats_see_two_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The race of the test above, made certain: another writer replaces the file between the two
    stats ``os.path.samefile`` makes, so they see two files. The input named as the output with
    --in-place is the same path, and the run writes it (it used to refuse: "a file this run reads")."""
    model = tmp_path / "m.onnx"
    model.write_bytes(_relu(4).SerializeToString())
    monkeypatch.setattr(os.path, "samefile", lambda a, b: False)
    cmd = ["run", "set-metadata", str(model), "-o", str(model), "--in-place", "--no-verify", "-q"]
    assert main([*cmd, "--set", "producer_name=raced"]) == 0, capsys.readouterr().err
    assert onnx.load(str(model)).producer_name == "raced"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nverify: {mode: off}\npasses:\n  - set-metadata: {producer_name: many}\n")
    assert main(["apply", str(recipe), "-i", str(model), "-o", str(model), "--in-place", "-q"]) == 0, (
        capsys.readouterr().err
    )
    assert onnx.load(str(model)).producer_name == "many"
    (tmp_path / "b.onnx").write_bytes(_relu(4).SerializeToString())  # many models, written in place
    cmd = ["apply", str(recipe), "-i", str(tmp_path / "*.onnx"), "--out-dir", str(tmp_path), "--in-place", "-q"]
    assert main([*cmd, "-j", "1"]) == 0, capsys.readouterr().err
    assert onnx.load(str(tmp_path / "b.onnx")).producer_name == "many"
