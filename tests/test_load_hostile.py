"""Hostile third-party models: files that are not model files, oversize files, odd dims, bad
external data entries, models onnxruntime cannot load, exporters' duplicated value_info. Each
gets one line and its exit code, never a traceback, a hang or a whole-file read."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from surgeon import Pipeline
from surgeon.cli import main
from surgeon.errors import EXIT_MODEL, EXIT_OK, EXIT_USAGE, ModelError, UsageError, VerificationError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.external import ExternalRef, external_ref, set_external_ref
from surgeon.ir.model import load
from surgeon.pass_api import Pass, PassResult
from surgeon.passes.cleanup import Cleanup
from surgeon.passes.rename_io import RenameIO
from tests.models_external import external_chain, snapshot

# --- helpers ------------------------------------------------------------------------------------


def _relu(ir_version: int | None = 10, opset: int = 17, dims: list[int | str | None] | None = None) -> onnx.ModelProto:
    """``y = Relu(x)``; ``dims`` are written as they are (ints, even negative, as dim_value,
    strings as dim_param, None as a dim with neither)."""
    x, y = onnx.ValueInfoProto(), onnx.ValueInfoProto()
    for vi, name in ((x, "x"), (y, "y")):
        vi.name = name
        vi.type.tensor_type.elem_type = TensorProto.FLOAT
        vi.type.tensor_type.shape.SetInParent()
        for d in [2, 3] if dims is None else dims:
            dim = vi.type.tensor_type.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif isinstance(d, str):
                dim.dim_param = d
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if line.strip()], out


# --- files that are not model files -------------------------------------------------------------


def _never_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx.load on a FIFO blocks and on /dev/zero reads until memory runs out: fail instead."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"onnx.load({args[0]!r}) was called")

    monkeypatch.setattr(onnx, "load", refuse)


def test_fifo_is_refused_without_opening_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    _never_parse(monkeypatch)
    result: list[object] = []

    def run() -> None:  # in a thread: a regression (an open() of the FIFO) blocks, not the suite
        try:
            load(fifo)
        except Exception as exc:
            result.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader so the thread ends, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("load() opened the FIFO and blocked")
    assert (
        len(result) == 1
        and isinstance(result[0], UsageError)
        and "is a FIFO" in str(result[0])
        and str(fifo) in str(result[0])
    )
    code, err, _ = _cli(["run", "cleanup", str(fifo), "-o", str(tmp_path / "out.onnx"), "--no-verify"], capsys)
    assert code == EXIT_USAGE and len(err) == 1 and "FIFO" in err[0]
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("kind", ["device", "folder", "socket"])
def test_non_regular_files_are_usage_errors(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _never_parse(monkeypatch)
    if kind == "device":
        path = Path("/dev/zero")
        if not path.exists():
            pytest.skip("no /dev/zero on this platform")
        word = "character device"
    elif kind == "folder":
        path = tmp_path / "model.onnx"
        path.mkdir()
        word = "folder"
    else:
        path = tmp_path / "s.onnx"
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        word = "socket"
    with pytest.raises(UsageError, match=word):
        load(path)
    code, err, _ = _cli(["inspect", str(path)], capsys)
    assert code == EXIT_USAGE and len(err) == 1 and word in err[0] and str(path) in err[0]
    if kind == "socket":
        sock.close()


def test_oversize_file_is_refused_before_any_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as f:  # sparse: no disk used
        f.write(_relu().SerializeToString())
        f.truncate(2**31 + 10)
    import builtins

    real_open = builtins.open

    def no_read(file: object, mode: str = "r", *a: object, **k: object) -> object:
        if Path(str(file)) == path:
            raise AssertionError("the oversize file was opened")
        return real_open(file, mode, *a, **k)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", no_read)
    _never_parse(monkeypatch)
    with pytest.raises(ModelError, match=r"2147483658 bytes, over protobuf's 2 GiB limit"):
        load(path)
    code, err, _ = _cli(["inspect", str(path)], capsys)
    assert code == EXIT_MODEL and len(err) == 1 and str(path) in err[0]


# --- external data entries ----------------------------------------------------------------------


def _set_entry(path: Path, key: str, value: str) -> None:
    m = onnx.load(str(path), load_external_data=False)
    t = m.graph.initializer[1]
    for e in t.external_data:
        if e.key == key:
            e.value = value
            break
    else:
        t.external_data.add(key=key, value=value)
    path.write_bytes(m.SerializeToString())


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("offset", "abc", "is not a non-negative integer"),
        ("offset", "-5", "is not a non-negative integer"),
        ("length", "1e3", "is not a non-negative integer"),
        ("length", " ", "is not a non-negative integer"),
        ("offset", "99999999999999999999999", r"larger than 2\*\*63-1"),
        ("length", "99999999999999999999999", r"larger than 2\*\*63-1"),
        ("location", "model.onnx.data\0x", "contains a NUL byte"),
    ],
)
def test_bad_external_entries_are_model_errors(
    tmp_path: Path, key: str, value: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = external_chain(tmp_path, layers=2, dim=8)
    _set_entry(path, key, value)
    with pytest.raises(ModelError, match=rf"tensor 'w1': external data .*{why}"):
        load(path)
    before = snapshot(tmp_path)
    code, err, _ = _cli(["run", "cleanup", str(path), "-o", str(tmp_path / "out.onnx")], capsys)
    assert code == EXIT_MODEL and len(err) == 1 and "w1" in err[0]
    assert snapshot(tmp_path) == before


def test_external_ref_parses_good_entries() -> None:
    t = TensorProto(name="w")
    set_external_ref(t, ExternalRef("w.bin", 4096, 64))
    assert external_ref(t) == ExternalRef("w.bin", 4096, 64)
    t.external_data[1].value = "0"
    assert external_ref(t).offset == 0


def test_range_past_the_end_is_still_reported(tmp_path: Path) -> None:
    path, _ = external_chain(tmp_path, layers=2, dim=8)
    _set_entry(path, "offset", str(2**62))
    with pytest.raises(ModelError, match="past the end .* truncated"):
        load(path)


# --- third-party dims ---------------------------------------------------------------------------

HOSTILE_DIMS: list[list[int | str | None]] = [[-1, 3], [0, -7], ["?", "?"], ["n", "n"], [None, 3], [None, None]]


def _dims_of(vi: onnx.ValueInfoProto) -> list[tuple[str, object]]:
    return [
        (d.WhichOneof("value") or "", getattr(d, d.WhichOneof("value") or "dim_value"))
        for d in vi.type.tensor_type.shape.dim
    ]


@pytest.mark.parametrize("dims", HOSTILE_DIMS, ids=str)
def test_hostile_dims_load_inspect_round_trip_and_cleanup(
    tmp_path: Path, dims: list[int | str | None], capsys: pytest.CaptureFixture[str]
) -> None:
    src = _relu(dims=dims)
    path = _save(src, tmp_path / "m.onnx")
    ir = ModelIR.from_model(load(path))
    back = ir.to_model().proto
    assert _dims_of(back.graph.input[0]) == _dims_of(src.graph.input[0])
    assert _dims_of(back.graph.output[0]) == _dims_of(src.graph.output[0])
    code, err, out = _cli(["inspect", "--json", str(path)], capsys)
    assert code == EXIT_OK and not err
    shown = json.loads(out)["inputs"][0]["shape"]
    assert shown == [d if d is not None else "?" for d in dims]
    out_path = tmp_path / "out.onnx"
    code, err, _ = _cli(["run", "cleanup", str(path), "-o", str(out_path), "--no-verify"], capsys)
    assert code == EXIT_OK, err
    saved = onnx.load(str(out_path))
    assert _dims_of(saved.graph.input[0]) == _dims_of(src.graph.input[0])


# --- models onnxruntime cannot load -------------------------------------------------------------


def test_ir_version_too_new_is_a_model_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    path = _save(_relu(ir_version=None), tmp_path / "m.onnx")  # make_model's default IR version
    ir = onnx.load(str(path)).ir_version
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        pytest.skip(f"this onnxruntime loads IR version {ir}")
    except Exception:
        pass
    code, err, _ = _cli(
        ["run", "cleanup", str(path), "-o", str(tmp_path / "out.onnx"), "--device", "cpu", "--no-proof"], capsys
    )
    assert code == EXIT_MODEL and len(err) == 1, err
    assert f"IR version {ir} is newer than this onnxruntime ({ort.__version__}) loads (max " in err[0]
    assert "re-export" in err[0] and str(path) in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out.onnx").exists()


def test_opset_too_new_is_a_model_error_with_the_conversion_that_fixes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    newest = onnx.defs.onnx_opset_version()
    path = _save(_relu(opset=newest), tmp_path / "m.onnx")
    code, err, _ = _cli(
        ["run", "cleanup", str(path), "-o", str(tmp_path / "out.onnx"), "--device", "cpu", "--no-proof"], capsys
    )
    if code == EXIT_OK:
        pytest.skip(f"this onnxruntime loads opset {newest}")
    assert code == EXIT_MODEL and len(err) == 1, err
    m = re.search(
        r"opset (\d+) of ai\.onnx is newer than this onnxruntime \S+ supports \(up to (\d+)\); "
        r"convert it: (surgeon run convert-opset .*?--no-verify)",
        err[0],
    )
    assert m and int(m.group(1)) == newest, err[0]
    # the advice is true: the conversion it names makes a model onnxruntime runs
    top = m.group(2)
    fixed = tmp_path / "fixed.onnx"
    assert (
        main(["run", "convert-opset", str(path), "-o", str(fixed), "--set", f"opset={top}", "--no-verify"]) == EXIT_OK
    )
    assert main(["run", "cleanup", str(fixed), "-o", str(tmp_path / "out.onnx"), "--device", "cpu"]) == EXIT_OK


class _BreakOp(Pass):
    """Turns the Relu into an op onnxruntime does not know (a buggy pass)."""

    name = "break-op"

    def run(self, model: ModelIR) -> PassResult:
        model.graph.nodes[0].op = "NoSuchOp"
        return PassResult(True)


class _DropOutputShape(Pass):
    """Forgets the output's shape: onnxruntime still loads it, onnx.checker does not (a buggy pass)."""

    name = "drop-output-shape"

    def run(self, model: ModelIR) -> PassResult:
        model.graph.outputs[0].shape = None
        return PassResult(True)


def test_edited_model_onnxruntime_refuses_fails_verification_naming_the_step(tmp_path: Path) -> None:
    path = _save(_relu(), tmp_path / "m.onnx")
    steps = [RenameIO(inputs={"x": "inp"}), _BreakOp()]
    with pytest.raises(
        VerificationError,
        match=r"the model after passes\[1\] \(break-op\) fails: onnxruntime cannot load the edited model .*NoSuchOp",
    ) as info:
        Pipeline(steps, verify={"device": "cpu"}).apply(path, tmp_path / "out.onnx")
    assert not isinstance(info.value, ModelError) and info.value.exit_code == 1
    with pytest.raises(VerificationError, match=r"passes\[1\] \(break-op\) fails: onnxruntime cannot load"):
        Pipeline(steps, verify={"device": "cpu", "mode": "end"}).apply(path, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --- round-trip fidelity and the post-save check ------------------------------------------------


def _shapeless_duplicate(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph output listed again in value_info with its dtype only (as some exporters write)."""
    vi = model.graph.value_info.add()
    vi.name = "y"
    vi.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(model, full_check=True)  # the source is valid
    return model


def test_output_listed_again_in_value_info_keeps_its_declared_shape(tmp_path: Path) -> None:
    src = _shapeless_duplicate(_relu())
    path = _save(src, tmp_path / "m.onnx")
    model = load(path)
    proto = ModelIR.from_model(model).to_model().proto
    assert proto.graph.output[0] == src.graph.output[0]
    assert "y" not in [vi.name for vi in proto.graph.value_info]  # no shapeless duplicate written
    onnx.checker.check_model(proto, full_check=True)
    assert model.proto == src  # the source proto is left as it was
    out = tmp_path / "out.onnx"
    Pipeline([Cleanup()], verify={"mode": "off"}).apply(path, out)
    onnx.checker.check_model(str(out), full_check=True)


def test_saved_model_failing_the_checker_is_not_written_and_names_the_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _save(_relu(), tmp_path / "m.onnx")
    steps = [RenameIO(outputs={"y": "out"}), _DropOutputShape(), Cleanup()]
    with pytest.raises(
        VerificationError,
        match=r"fails onnx\.checker.*\(Field 'shape' of 'type' is required.*\); the source passes it; "
        r"last step that modified the model: passes\[1\] \(drop-output-shape\); nothing written",
    ):
        Pipeline(steps, verify={"device": "cpu"}).apply(path, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left either
    # --force writes it anyway and says so in the result
    result = Pipeline(steps, verify={"mode": "off"}).apply(path, tmp_path / "out.onnx", force=True)
    assert result.checker.startswith("FAIL: Field 'shape'") and (tmp_path / "out.onnx").is_file()


def test_checker_failure_the_source_shares_is_not_blamed_on_a_step(tmp_path: Path) -> None:
    src = _relu()
    src.graph.output[0].type.tensor_type.ClearField("shape")  # invalid for the full checker already
    path = _save(src, tmp_path / "m.onnx")
    result = Pipeline([RenameIO(inputs={"x": "inp"})], verify={"device": "cpu"}).apply(path, tmp_path / "out.onnx")
    assert result.checker == "fails, as the source does" and (tmp_path / "out.onnx").is_file()


def test_checker_runs_on_external_data_outputs_without_reading_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = external_chain(tmp_path, layers=2, dim=8)
    calls: list[str] = []
    real = onnx.checker.check_model

    def spy(model: object, *args: object, **kwargs: object) -> None:
        assert isinstance(model, str), "the checker was handed a loaded proto"
        calls.append(model)
        real(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx.checker, "check_model", spy)
    result = Pipeline([RenameIO(inputs={"x": "inp"})], verify={"mode": "off"}).apply(path, tmp_path / "out.onnx")
    assert result.checker == "passed" and calls
    report = result.as_dict()
    assert report["onnx_checker"] == "passed"


def test_checker_is_skipped_above_the_size_limit_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import surgeon.ir.check

    monkeypatch.setattr(surgeon.ir.check, "FULL_CHECK_LIMIT", 10)
    monkeypatch.setattr(surgeon.pipeline, "FULL_CHECK_LIMIT", 10)
    monkeypatch.setattr(onnx.checker, "check_model", lambda *a, **k: pytest.fail("checked anyway"))
    path = _save(_relu(), tmp_path / "m.onnx")
    result = Pipeline([RenameIO(inputs={"x": "inp"})], verify={"mode": "off"}).apply(path, tmp_path / "out.onnx")
    assert result.checker == "skipped: model file over 0 MiB"


def test_verify_command_with_a_reference_onnxruntime_refuses_is_a_model_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    newest = onnx.defs.onnx_opset_version()
    ref = _save(_relu(opset=newest), tmp_path / "ref.onnx")
    cand = _save(_relu(), tmp_path / "cand.onnx")
    code, err, _ = _cli(["verify", str(ref), str(cand), "--device", "cpu"], capsys)
    if code == EXIT_OK:
        pytest.skip(f"this onnxruntime loads opset {newest}")
    assert (
        code == EXIT_MODEL and len(err) == 1 and str(ref) in err[0] and f"opset {newest} of ai.onnx is newer" in err[0]
    )


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_external_data_file_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path, data = external_chain(tmp_path, layers=2, dim=8)
    data.unlink()
    if kind == "fifo":
        os.mkfifo(data)
    else:
        data.mkdir()
    with pytest.raises(ModelError, match=r"tensor 'w0': external data file 'model.onnx.data' is not a regular file"):
        load(path)


EVERY_PASS_PARAMS: dict[str, dict[str, object]] = {
    "add-outputs": {"tensors": ["y"]},
    "append-op": {"output": "y", "op": "Sigmoid"},
    "cleanup": {},
    "convert-opset": {"opset": 18},
    "dedupe-initializers": {},
    "extract": {"inputs": ["x"], "outputs": ["y"]},
    "fix-dims": {"dims": {"x:0": 2}},
    "fix-negative-indices": {},
    "fold-constants": {},
    "mark-dynamic": {"inputs": {"x": {1: "width"}}},
    "prepend-op": {"input": "x", "op": "Cast", "dtype": "uint8"},
    "promote-initializer": {"names": ["w"]},
    "promote-resize-scales": {},
    "remove-nodes": {},
    "remove-outputs": {"outputs": ["y"]},
    "rename-io": {"inputs": {"x": "image"}},
    "rewrite": {"rules": ["fuse-gemm", "fuse-gelu"]},
    "set-metadata": {"producer_name": "me"},
    "simplify": {},
    "strip-doc": {},
    "to-fp16": {"keep_io_types": True},
}


def test_the_every_pass_table_names_every_pass() -> None:
    from surgeon.catalog import catalog

    assert set(EVERY_PASS_PARAMS) == set(catalog())


@pytest.mark.parametrize("dims", HOSTILE_DIMS, ids=str)
@pytest.mark.parametrize("name", sorted(EVERY_PASS_PARAMS))
def test_every_pass_accepts_hostile_dims(
    tmp_path: Path, name: str, dims: list[int | str | None], capsys: pytest.CaptureFixture[str]
) -> None:
    """A pass may refuse (one line, exit 2 or 3) but never crash on third-party dims."""
    src = _relu(dims=dims)
    src.graph.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), "w"))
    # w stays unused by the graph: promote-initializer has something to promote
    path = _save(src, tmp_path / "m.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"version": 1, "passes": [{name: EVERY_PASS_PARAMS[name]}]}))
    code, err, _ = _cli(
        ["apply", str(recipe), "-i", str(path), "-o", str(tmp_path / "out.onnx"), "--no-verify"], capsys
    )
    assert code in (EXIT_OK, 2, 3), err
    assert len(err) <= 1 and not any("internal error" in line or "Traceback" in line for line in err), err


@pytest.fixture
def proof_checks_every_graph(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The checker-by-proof for graphs of any size (it is for graphs over 20,000 nodes); the list
    records every call of the full checker."""
    calls: list[str] = []
    real = onnx.checker.check_model

    def spy(model: object, *args: object, **kwargs: object) -> None:
        calls.append(str(model))
        real(model, *args, **kwargs)  # type: ignore[arg-type]

    import surgeon.pipeline

    monkeypatch.setattr(surgeon.pipeline, "PROOF_CHECK_NODES", 0)
    monkeypatch.setattr(onnx.checker, "check_model", spy)
    return calls


@pytest.mark.parametrize("mode", ["each", "off"])
def test_a_proved_big_graph_is_checked_by_its_proof_and_its_interface(
    tmp_path: Path, proof_checks_every_graph: list[str], mode: str
) -> None:
    """Every step proved (``each``), or the whole run proved through the steps' contracts
    composed (``off``): the full checker does not run; the proof and the interface stand for it.
    A step that drops the output's shape (proved: a declaration that says less) is still caught
    by the interface check and nothing is written."""
    from surgeon.passes.set_metadata import SetMetadata

    path = _save(_relu(), tmp_path / "m.onnx")
    steps = [
        RenameIO(inputs={"x": "inp"}, outputs={"y": "a"}),
        SetMetadata(producer_name="p"),
        RenameIO(outputs={"a": "b"}),
    ]
    result = Pipeline(steps, verify={"device": "cpu", "mode": mode}).apply(path, tmp_path / "out.onnx")
    assert result.checker.startswith("passed (the graph's nodes by structural proof")
    assert proof_checks_every_graph == []
    out = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == ["b"]
    with pytest.raises(VerificationError, match=r"Field 'shape' of 'type' is required.*drop-output-shape"):
        Pipeline([*steps, _DropOutputShape()], verify={"device": "cpu", "mode": mode}).apply(path, tmp_path / "o2.onnx")
    assert not (tmp_path / "o2.onnx").exists()


def test_an_unproved_big_graph_gets_the_full_checker(tmp_path: Path, proof_checks_every_graph: list[str]) -> None:
    """A step that rewrites a constant is not proved: the full checker runs on the saved model."""
    from surgeon.passes.promote_initializer import PromoteInitializer

    model = _relu()
    model.graph.node[0].op_type = "Add"
    model.graph.node[0].input.append("k")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((2, 3), np.float32), "k"))
    path = _save(model, tmp_path / "m.onnx")
    result = Pipeline([PromoteInitializer(names=["k"])], verify={"mode": "off"}).apply(path, tmp_path / "out.onnx")
    assert result.checker == "passed" and proof_checks_every_graph
