"""Hostile third-party models: files that are not model files, oversize files, odd dims, bad
external data entries, models onnxruntime cannot load, exporters' duplicated value_info. Each
gets one line and its exit code, never a traceback, a hang or a whole-file read."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from surgeon.cli import main
from surgeon.errors import EXIT_MODEL, EXIT_USAGE, ModelError, UsageError
from surgeon.ir.external import ExternalRef, external_ref, set_external_ref
from surgeon.ir.model import load
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


def test_fifo_is_refused_without_opening_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
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
    assert len(result) == 1 and isinstance(result[0], UsageError) and "is a FIFO" in str(result[0]) and str(fifo) in str(result[0])
    code, err, _ = _cli(["run", "cleanup", str(fifo), "-o", str(tmp_path / "out.onnx"), "--no-verify"], capsys)
    assert code == EXIT_USAGE and len(err) == 1 and "FIFO" in err[0]
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("kind", ["device", "folder", "socket"])
def test_non_regular_files_are_usage_errors(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
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


def test_oversize_file_is_refused_before_any_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
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
def test_bad_external_entries_are_model_errors(tmp_path: Path, key: str, value: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
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
