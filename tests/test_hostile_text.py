"""Text from a model, a recipe or a path is shown inert: a model whose names, doc strings and
metadata carry ANSI escapes, NUL, CR, newlines, a bidi override and rich markup goes through every
command with no raw control character on stdout or stderr, every error stays one line, nothing is
a markup crash (exit 4), ``--json``/``--report`` hold the original strings, and the recipe the
doctor emits reads back with the model's names unchanged."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from surgeon.cli.render import inert, markup
from surgeon.errors import RecipeError, SurgeonError, VerificationError
from surgeon.yaml12 import compose, dump_flow

H = "\x1b[31m\x1b]0;title\x07\0\r\n\u202e[bold]x[/]"
"""Hostile text: a colour escape, a window-title escape (OSC ... BEL), NUL, CR, LF, a
right-to-left override and rich markup (an unbalanced closing tag included)."""
HN = H.replace("\n", "")
HP = H.replace("\0", "").replace("/", "|")  # for file names (a path holds no NUL, and / is a folder)
IN = f"onnx::in{HN}"  # auto-generated-looking, so the doctor proposes a rename-io for it
OUT = f"out{H}"
PRODUCER = f"[/]{H}[bold]"
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""What may never reach the terminal raw: C0 (but tab and line feed) and C1 controls, DEL, line
and paragraph separators and bidirectional controls."""


def hostile_model() -> onnx.ModelProto:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), f"scales{H}")
    unused = numpy_helper.from_array(np.zeros(3, np.float32), f"unused{H}")
    resize = helper.make_node(
        "Resize", [IN, "", scales.name], [f"mid{H}"], name=f"resize{H}", mode="nearest", doc_string=H
    )
    relu = helper.make_node("Relu", [f"mid{H}"], [OUT], name=f"relu{H}", doc_string=H)
    graph = helper.make_graph(
        [resize, relu],
        f"graph{H}",
        [helper.make_tensor_value_info(IN, TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info(OUT, TensorProto.FLOAT, [1, 1, 8, 8])],
        [scales, unused],
        doc_string=H,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10, producer_name=PRODUCER, doc_string=H
    )
    helper.set_model_props(model, {f"key{H}": f"value{H}", "plain": H})
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model, saved under a file name holding an escape and a newline."""
    folder = tmp_path_factory.mktemp("hostile")
    path = folder / "m\x1b[31m\nx.onnx"
    onnx.save(hostile_model(), path)
    return path


def surgeon(*args: str | Path, cwd: Path, code: int | None = 0) -> subprocess.CompletedProcess[str]:
    """``python -m surgeon`` in a subprocess (rich writes to real pipes, not a tty), checked: never
    exit 4, no raw control character on stdout or stderr, the expected exit code."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("NO_COLOR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "surgeon", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        env=env,
        timeout=300,
    )
    out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
    shown = f"exit {proc.returncode}\n--- stdout\n{out!r}\n--- stderr\n{err!r}"
    assert proc.returncode != 4, shown
    for stream in (out, err):
        bad = RAW.search(stream)
        assert bad is None, f"raw {bad.group()!r} at {bad.start()}\n{shown}"
    if code is not None:
        assert proc.returncode == code, shown
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def error_lines(err: str) -> list[str]:
    """stderr as lines, each checked to be an error line of its own (no continuation lines)."""
    lines = err.splitlines()
    assert lines, "no error shown"
    for line in lines:
        assert line.startswith(("error", "verification")), lines
    return lines


# --- the renderer's helpers ------------------------------------------------------------------------


def test_inert_writes_control_characters_as_escapes() -> None:
    assert inert(H) == "\\x1b[31m\\x1b]0;title\\x07\\0\\r\\n\\u202e[bold]x[/]"
    assert inert("tab\there\x7f\x9b\u2028\ufeff") == "tab\\there\\x7f\\x9b\\u2028\\ufeff"
    assert inert("plain ascii, 日本語 and émoji 😀") == "plain ascii, 日本語 and émoji 😀"
    assert inert(3) == "3"
    assert RAW.search(inert(H)) is None and "\n" not in inert(H)


def test_markup_is_text_to_rich() -> None:
    from rich.console import Console

    console = Console(record=True, width=300, color_system=None)
    for text in (PRODUCER, "[/]", "[bold]x", "ends with a backslash\\", "[link=http://x]y[/link]"):
        console.print(f"[bold]{markup(text)}[/bold]")  # never a MarkupError
        assert console.export_text().rstrip("\n") == inert(text)


def test_error_lines_are_explicit() -> None:
    assert SurgeonError(f"model {H}: broken").lines == [f"model {H}: broken"]
    assert RecipeError(["a: one", f"b: {H}"]).lines == ["a: one", f"b: {H}"]
    assert VerificationError("x\ny", lines=["x", "y"]).lines == ["x", "y"]
    retold = VerificationError(f"a {H}", lines=[f"a {H}"])
    retold.args = (f"passes[0]: a {H}",)  # a copy with a new text (pass_api.with_message) is that text
    assert retold.lines == [f"passes[0]: a {H}"]
    assert VerificationError(f"one {H}").lines == [f"one {H}"]

    class Result:
        def failures(self) -> list[str]:
            return [f"passes[0] (cleanup): {OUT}: differs", "passes[1] (x): differs"]

    err = VerificationError("verification failed; nothing written:\n" + "\n".join(Result().failures()), Result())
    assert err.lines == ["verification failed; nothing written:", *Result().failures()]


@pytest.mark.parametrize(
    "name",
    [
        H,
        IN,
        "on",
        "off",
        "yes",
        "no",
        "010",
        "1e3",
        ".inf",
        "0o17",
        "null",
        "~",
        "",
        "a\u2028b",
        "# c",
        "a: b",
        "-x",
        "?x",
        "!x",
        "&x",
        "*x",
        "'q'",
        '"dq"',
        "input.1",
        "12",
        "onnx::Flatten_0",
        " lead",
        "trail ",
        "日本",
        "a,b",
        "{x}",
    ],
)
def test_flow_yaml_round_trips(name: str) -> None:
    data = {"inputs": {name: name + "2"}, "outputs": [name]}
    text = dump_flow(data)
    assert "\n" not in text and all(" " <= c <= "~" for c in text), text
    assert compose(f"k: {text}", "t")[0] == {"k": data}
    assert yaml.safe_load(f"k: {text}") == {"k": data}


# --- the commands ------------------------------------------------------------------------------------


def test_inspect(hostile: Path) -> None:
    out = surgeon("inspect", hostile, cwd=hostile.parent).stdout
    assert inert(PRODUCER) in out and inert(IN) in out and inert(hostile.name) in out
    info = json.loads(surgeon("inspect", hostile, "--json", cwd=hostile.parent).stdout)
    assert info["producer"] == PRODUCER
    assert [i["name"] for i in info["inputs"]] == [IN] and [o["name"] for o in info["outputs"]] == [OUT]
    surgeon("inspect", hostile, "--tensors", cwd=hostile.parent)
    rows = json.loads(surgeon("inspect", hostile, "--tensors", "--json", cwd=hostile.parent).stdout)
    assert {r["name"] for r in rows} >= {IN, OUT, f"mid{H}"}


def test_inspect_in_process(hostile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from surgeon.cli import main

    assert main(["inspect", str(hostile)]) == 0
    captured = capsys.readouterr()
    assert RAW.search(captured.out + captured.err) is None
    assert inert(PRODUCER) in captured.out


def test_doctor_and_its_recipe(hostile: Path, tmp_path: Path) -> None:
    from surgeon.recipe import load_recipe

    out = surgeon("doctor", hostile, "-v", cwd=tmp_path, code=5).stdout
    assert inert(IN) in out
    report = json.loads(surgeon("doctor", hostile, "--json", cwd=tmp_path, code=5).stdout)
    assert report["model"] == str(hostile)
    assert any(IN in f["message"] for f in report["findings"])
    shutil.copy(hostile, tmp_path / hostile.name)
    model = tmp_path / hostile.name
    recipe = tmp_path / "fix.yaml"
    surgeon("doctor", model, "--emit-recipe", recipe, cwd=tmp_path, code=5)
    text = recipe.read_text(encoding="utf-8")
    assert all(" " <= c <= "~" for line in text.splitlines() for c in line), text  # printable ASCII only
    assert all(
        line.startswith(("#", " ", "version", "model", "output", "verify", "passes")) for line in text.splitlines()
    )
    surgeon("validate", recipe, cwd=tmp_path)
    loaded = load_recipe(recipe)
    assert loaded.model is not None and loaded.model.resolve() == model.resolve()
    steps = {name: params for step in loaded.pipeline.to_recipe()["passes"] for name, params in step.items()}
    assert list(steps["rename-io"]["inputs"]) == [IN]  # the model's own name, unchanged
    surgeon("apply", recipe, cwd=tmp_path)  # every step verified, names shown inert
    fixed = onnx.load(loaded.output) if loaded.output else None
    assert fixed is not None and [i.name for i in fixed.graph.input][0] == "input"


def test_run_rename_and_cleanup_verbose(hostile: Path, tmp_path: Path) -> None:
    setting = "inputs=" + dump_flow({IN: f"image{HN}"})
    proc = surgeon("run", "rename-io", hostile, "-o", tmp_path / "renamed.onnx", "--set", setting, "-v", cwd=tmp_path)
    assert "proved (structural)" in proc.stdout and inert(IN) in proc.stdout  # -v: the pass's notes name the input
    assert [i.name for i in onnx.load(tmp_path / "renamed.onnx").graph.input] == [f"image{HN}"]
    report = tmp_path / "report.json"
    proc = surgeon("run", "cleanup", hostile, "-o", tmp_path / "clean.onnx", "-v", "--report", report, cwd=tmp_path)
    assert inert(f"unused{H}") in proc.stdout or "unused" in proc.stdout
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["input"] == str(hostile)


def test_verify(hostile: Path, tmp_path: Path) -> None:
    report = tmp_path / "verify.json"
    proc = surgeon("verify", hostile, hostile, "--report", report, cwd=tmp_path)
    assert inert(OUT) in proc.stdout
    data = json.loads(report.read_text(encoding="utf-8"))
    assert [o["name"] for o in data["outputs"]] == [OUT]
    other = hostile_model()
    other.graph.node[1].op_type = "Sigmoid"  # differs from the Relu everywhere
    candidate = tmp_path / f"cand{HP}.onnx"
    onnx.save(other, candidate)
    proc = surgeon("verify", hostile, candidate, "--localize", "--report", report, cwd=tmp_path, code=1)
    assert inert(OUT) in proc.stdout and "FAIL" in proc.stdout
    data = json.loads(report.read_text(encoding="utf-8"))
    assert not data["ok"] and [o["name"] for o in data["outputs"]] == [OUT]


def test_a_missing_tensor_is_one_error_line_each(hostile: Path, tmp_path: Path) -> None:
    missing = f"missing{H}"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"version: 1\nmodel: {dump_flow(str(hostile))}\noutput: out.onnx\n"
        f"passes:\n  - rename-io: {dump_flow({'inputs': {missing: 'image'}})}\n",
        encoding="utf-8",
    )
    err = surgeon("apply", recipe, cwd=tmp_path, code=2).stderr
    (line,) = error_lines(err)
    assert inert(missing) in line and inert(IN) in line
    err = surgeon("validate", recipe, cwd=tmp_path, code=2).stderr
    (line,) = error_lines(err)
    assert not (tmp_path / "out.onnx").exists()


def test_a_path_with_a_newline_is_one_error_line(tmp_path: Path) -> None:
    for args, code in (
        (("inspect", tmp_path / f"no such{HP}.onnx"), 2),
        (("apply", tmp_path / f"recipe{HP}.yaml"), 2),
        (("verify", tmp_path / f"a{HP}.onnx", tmp_path / "b.onnx"), 2),
    ):
        proc = surgeon(*args, cwd=tmp_path, code=None)
        assert proc.returncode in (code, 3), proc
        (line,) = error_lines(proc.stderr)
        assert inert(HP) in line


def test_a_broken_model_with_a_hostile_name_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / f"bad{HP}.onnx"
    bad.write_bytes(b"not a model")
    (line,) = error_lines(surgeon("inspect", bad, cwd=tmp_path, code=3).stderr)
    assert inert(bad.name) in line


def test_many_models_progress_bar_and_reports(hostile: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(hostile, models / hostile.name)
    shutil.copy(hostile, models / f"second{HP}.onnx")
    recipe = tmp_path / "clean.yaml"
    recipe.write_text("version: 1\npasses:\n  - cleanup: {}\n", encoding="utf-8")
    summary = tmp_path / "summary.json"
    proc = surgeon(
        "apply", recipe, "-i", str(models / "*.onnx"), "--out-dir", tmp_path / "fixed", "-j", "1",
        "--report", summary, cwd=tmp_path,
    )  # fmt: skip
    assert inert(hostile.name) in proc.stdout  # the summary table
    assert any(f"{inert(n)}: ok" in proc.stderr for n in (hostile.name, f"second{HP}.onnx"))  # the progress bar
    data = json.loads(summary.read_text(encoding="utf-8"))
    assert data["ok"] and {m["input"] for m in data["models"]} == {
        str(models / hostile.name),
        str(models / f"second{HP}.onnx"),
    }
    for name in (hostile.name, f"second{HP}.onnx"):
        report = json.loads((tmp_path / "fixed" / (Path(name).stem + ".report.json")).read_text(encoding="utf-8"))
        assert report["input"] == str(models / name)
    missing = f"missing{H}"
    bad = tmp_path / "missing.yaml"
    bad.write_text(
        f"version: 1\npasses:\n  - rename-io: {dump_flow({'inputs': {missing: 'image'}})}\n", encoding="utf-8"
    )
    proc = surgeon(
        "apply", bad, "-i", str(models / "*.onnx"), "--out-dir", tmp_path / "bad", "-j", "1", cwd=tmp_path, code=2
    )
    assert inert(missing) in proc.stdout
    for name in (hostile.name, f"second{HP}.onnx"):
        report = json.loads((tmp_path / "bad" / (Path(name).stem + ".report.json")).read_text(encoding="utf-8"))
        assert not report["ok"] and missing in report["message"]  # the whole first line, newline and all
    surgeon("doctor", models / hostile.name, models / f"second{HP}.onnx", "-j", "1", cwd=tmp_path, code=5)
    reports = json.loads(
        surgeon(
            "doctor", models / hostile.name, models / f"second{HP}.onnx", "-j", "1", "--json", cwd=tmp_path, code=5
        ).stdout
    )
    assert [r["model"] for r in reports] == [str(models / hostile.name), str(models / f"second{HP}.onnx")]


def test_surgeons_own_warnings_are_inert(hostile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import logging
    import warnings

    from surgeon.cli import _inert_warnings

    with _inert_warnings():
        logging.getLogger("surgeon.ir.save").warning("could not remove %s", f"data{H}")
        warnings.warn(f"node {H} is odd", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert RAW.search(err) is None
    assert err.splitlines() == [
        f"warning: could not remove data{inert(H)}",
        f"warning: UserWarning: node {inert(H)} is odd",
    ]


def test_usage_errors_quote_arguments_inert(tmp_path: Path) -> None:
    proc = surgeon("inspect", "a.onnx", f"extra{HP}", cwd=tmp_path, code=2)
    assert inert(f"extra{HP}") in proc.stderr
    proc = surgeon(f"cmd{HP}", cwd=tmp_path, code=2)
    assert "invalid choice" in proc.stderr


def test_emoji_codes_in_names_stay_text() -> None:
    from surgeon.cli.render import make_console, say

    console = make_console()
    with console.capture() as cap:
        say(console, "node :smile: :red_circle:")
        console.print(f"[bold]{markup(':thumbs_up:')}[/bold]")
    assert cap.get() == "node :smile: :red_circle:\n:thumbs_up:\n"


@pytest.mark.parametrize("name", [H, "a\nb", "on", "010", "😀 past U+FFFF", "\u2028", "\x85nel\x9b", "[bold]"])
def test_a_dumped_pipeline_reads_back_unchanged(name: str) -> None:
    from surgeon.passes.rename_io import RenameIO
    from surgeon.pipeline import Pipeline, _dump_recipe
    from surgeon.recipe import parse_recipe_text
    from surgeon.yaml12 import dump

    p = Pipeline([RenameIO(inputs={name: f"image{name}"}, outputs={f"out{name}": "logits"})])
    for text in (dump(p.to_recipe()), _dump_recipe(p.to_recipe())):  # a saved recipe; the provenance record
        assert parse_recipe_text(text).pipeline.to_recipe() == p.to_recipe(), text


def test_a_many_models_workers_warnings_are_inert() -> None:
    code = (
        "import logging, warnings\n"
        "from surgeon.many import _worker_init\n"
        "_worker_init(1)\n"
        f"warnings.warn({H!r})\n"
        f"logging.getLogger('surgeon.ir.save').warning('data %s', {H!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == 0 and RAW.search(err) is None, err
    assert err.splitlines() == [f"warning: UserWarning: {inert(H)}", f"warning: data {inert(H)}"]


def test_a_hostile_op_type_and_domain(tmp_path: Path) -> None:
    node = helper.make_node(f"Op{H}", ["x"], ["y"], name=f"n{H}", domain=f"dom{HN}")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(f"dom{HN}", 1)],
        ir_version=10,
    )
    path = tmp_path / "op.onnx"
    onnx.save(model, path)
    out = surgeon("inspect", path, cwd=tmp_path).stdout
    assert inert(f"Op{H}") in out and inert(f"dom{HN}") in out
    surgeon("inspect", path, "--tensors", cwd=tmp_path)
    proc = surgeon("doctor", path, "-v", cwd=tmp_path, code=None)
    assert proc.returncode in (0, 5)
    report = json.loads(surgeon("doctor", path, "--json", cwd=tmp_path, code=None).stdout)
    assert report["model"] == str(path)
