"""The model layer: loading from a path, bytes or a ModelProto; external data left on disk until a
pass needs it; the IR round trip preserving everything no pass changed; bad input refused with one
clear line, nothing written."""

from __future__ import annotations

import builtins
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from surgeon import Pipeline
from surgeon.cli import main as cli_main
from surgeon.errors import EXIT_MODEL, EXIT_USAGE, ModelError, SurgeonError, UsageError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import Model, load
from surgeon.passes.rename_io import RenameIO
from tests.models_external import (
    external_chain,
    external_locations,
    load_full,
    matmul_chain,
    rich_model,
    snapshot,
    weights,
)

VERIFY = {"dims": {"batch": 2}, "device": "cpu"}


class OpenSpy:
    """Records every file opened through Python's ``open`` and how many bytes were read from each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: list[Path] = []
        self.bytes_read: dict[Path, int] = {}
        real_open = builtins.open
        spy = self

        def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            f = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, Path)):
                path = Path(file).resolve()
                spy.opened.append(path)
                if "r" in mode and "b" in mode:
                    return _CountingFile(f, path, spy.bytes_read)
            return f

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)

    def opened_file(self, path: Path) -> bool:
        return path.resolve() in self.opened


class _CountingFile:
    def __init__(self, f: Any, path: Path, counts: dict[Path, int]) -> None:
        self._f, self._path, self._counts = f, path, counts

    def read(self, *args: Any) -> bytes:
        data = self._f.read(*args)
        self._counts[self._path] = self._counts.get(self._path, 0) + len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __iter__(self) -> Any:
        return iter(self._f)


# --- loading -------------------------------------------------------------------------------------


def test_load_from_path_bytes_and_proto(tmp_path: Path) -> None:
    proto = matmul_chain(2, 8)
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    from_path = load(path)
    from_str = load(str(path))
    from_bytes = load(path.read_bytes())
    from_proto = load(proto)
    for m in (from_path, from_str, from_bytes, from_proto):
        assert isinstance(m, Model)
        assert m.proto.SerializeToString() == proto.SerializeToString()
        assert not m.uses_external_data
    assert from_path.path == path and from_path.base_dir == tmp_path
    assert from_bytes.path is None and from_proto.path is None
    assert load(from_path) is from_path
    assert from_path.sha256() == from_bytes.sha256()


def test_load_external_reads_no_weight_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = external_chain(tmp_path, layers=3, dim=32)
    spy = OpenSpy(monkeypatch)
    model = load(path)
    ir = ModelIR.from_model(model)
    RenameIO(inputs={"x": "inp"}).run(ir)
    edited = ir.to_model()
    assert model.uses_external_data and model.data_files == [data.name]
    assert edited.data_files == [data.name]
    assert spy.opened_file(path)
    assert not spy.opened_file(data), "loading, importing and exporting must not open the weights"
    assert all(t.data_location == TensorProto.EXTERNAL for t in edited.proto.graph.initializer)


def test_values_reads_only_one_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = external_chain(tmp_path, layers=4, dim=32)
    expected = weights(load_full(path))
    ir = ModelIR.from_model(load(path))
    spy = OpenSpy(monkeypatch)
    w2 = ir.graph.tensors()["w2"]
    values = ir.values(w2)
    np.testing.assert_array_equal(values, expected["w2"])
    assert spy.bytes_read[data.resolve()] == 32 * 32 * 4, "reads exactly one tensor's bytes"
    # ModelIR.values does not turn the constant into an in-memory one: it is still unchanged
    import onnx_graphsurgeon as gs

    assert isinstance(w2._values, gs.ir.tensor.LazyValues)


def test_external_data_resolved_relative_to_model_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "models" / "deep"
    folder.mkdir(parents=True)
    (folder / "weights").mkdir()
    from tests.models_external import save_external

    path = folder / "m.onnx"
    save_external(matmul_chain(2, 16), path, location="weights/all.bin")
    expected = weights(load_full(path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ir = ModelIR.from_model(load(Path("..") / "models" / "deep" / "m.onnx"))
    w1 = ir.graph.tensors()["w1"]
    np.testing.assert_array_equal(ir.values(w1), expected["w1"])
    # a pass that reads `constant.values` directly gets the model folder's bytes too, not the cwd's
    np.testing.assert_array_equal(ir.graph.tensors()["w0"].values, expected["w0"])


# --- the IR round trip ---------------------------------------------------------------------------


def _fields(m: onnx.ModelProto) -> dict[str, Any]:
    g = m.graph
    return {
        "ir_version": m.ir_version,
        "producer": (m.producer_name, m.producer_version),
        "domain": m.domain,
        "model_version": m.model_version,
        "doc": m.doc_string,
        "metadata": [(p.key, p.value) for p in m.metadata_props],
        "opsets": sorted((o.domain, o.version) for o in m.opset_import),
        "functions": [f.SerializeToString() for f in m.functions],
        "training": [t.SerializeToString() for t in m.training_info],
        "graph_doc": g.doc_string,
        "graph_meta": [(p.key, p.value) for p in g.metadata_props],
        "value_info": [v.SerializeToString() for v in g.value_info],
        "nodes": [(n.name, n.doc_string, [(p.key, p.value) for p in n.metadata_props]) for n in g.node],
        "initializers": [t.SerializeToString() for t in g.initializer],
    }


def test_round_trip_preserves_what_no_pass_changed(tmp_path: Path) -> None:
    src = tmp_path / "rich.onnx"
    onnx.save(rich_model(), str(src))
    out = tmp_path / "out.onnx"
    res = Pipeline([RenameIO(outputs={"y": "result"})], verify=VERIFY, provenance=False).apply(src, out)
    assert res.ok and res.steps[0].modified
    before, after = _fields(onnx.load(str(src))), _fields(onnx.load(str(out)))
    assert after == before
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["result"]


def test_identity_round_trip_is_exact(tmp_path: Path) -> None:
    """A pipeline with nothing to do writes the same model (and provenance adds only metadata)."""
    src = tmp_path / "rich.onnx"
    onnx.save(rich_model(), str(src))
    out = tmp_path / "out.onnx"
    Pipeline([RenameIO()], verify=VERIFY).apply(src, out)
    before, after = _fields(onnx.load(str(src))), _fields(onnx.load(str(out)))
    added = dict(after.pop("metadata"))
    assert set(added) - dict(before.pop("metadata")).keys() == {
        "surgeon.version",
        "surgeon.recipe",
        "surgeon.source_sha256",
    }
    assert after == before
    assert added["surgeon.source_sha256"] == load(src).sha256()


def test_round_trip_of_external_model_keeps_weights_external(tmp_path: Path) -> None:
    path, _ = external_chain(tmp_path, layers=2, dim=16)
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    res = Pipeline([RenameIO(inputs={"x": "inp"})], verify=VERIFY).apply(path, out)
    assert res.ok and res.changed_tensors == set()
    got = load_full(out)
    for name, value in weights(load_full(path)).items():
        np.testing.assert_array_equal(weights(got)[name], value)
    assert all(
        t.data_location == TensorProto.EXTERNAL for t in onnx.load(str(out), load_external_data=False).graph.initializer
    )


# --- bad input -----------------------------------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, type[SurgeonError], str]]:
    good = tmp_path / "good.onnx"
    onnx.save(matmul_chain(2, 8), str(good))
    raw = good.read_bytes()
    cases: dict[str, tuple[Path, type[SurgeonError], str]] = {}

    def add(name: str, content: bytes, err: type[SurgeonError], text: str) -> None:
        p = tmp_path / name
        p.write_bytes(content)
        cases[name] = (p, err, text)

    add(
        "corrupt.onnx",
        bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8)),
        ModelError,
        "not a valid ONNX model",
    )
    add("half.onnx", raw[: len(raw) // 2], ModelError, "not a valid ONNX model")
    add("cut.onnx", raw[:-3], ModelError, "not a valid ONNX model")
    add("text.onnx", b"hello, this is not a model\n", ModelError, "not a valid ONNX model")
    add("empty.onnx", b"", ModelError, "not an ONNX model")
    buf = io.BytesIO()
    np.save(buf, np.zeros(8))
    add("array.npy", buf.getvalue(), ModelError, "not a valid ONNX model")
    no_out = matmul_chain(1, 4)
    del no_out.graph.output[:]
    add("no_outputs.onnx", no_out.SerializeToString(), ModelError, "no outputs")
    cases["missing.onnx"] = (tmp_path / "missing.onnx", UsageError, "no such file")
    (tmp_path / "folder.onnx").mkdir()
    cases["folder.onnx"] = (tmp_path / "folder.onnx", UsageError, "is a folder")
    return cases


def test_bad_model_files_give_one_clear_line(tmp_path: Path) -> None:
    for name, (path, err, text) in _bad_files(tmp_path).items():
        with pytest.raises(err) as info:
            load(path)
        msg = str(info.value)
        assert text in msg and str(path) in msg, name
        assert "\n" not in msg, name
        assert info.value.exit_code == (EXIT_USAGE if err is UsageError else EXIT_MODEL)


def test_bad_bytes_give_one_clear_line() -> None:
    with pytest.raises(ModelError, match=r"^<bytes>: not a valid ONNX model \(") as info:
        load(b"\x08\x0a\x12\xff\xff\xff")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name", ["corrupt.onnx", "half.onnx", "text.onnx", "empty.onnx", "missing.onnx", "folder.onnx"]
)
def test_cli_bad_input_writes_nothing(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path, err, text = _bad_files(tmp_path)[name]
    before = snapshot(tmp_path)
    code = cli_main(
        ["run", "rename-io", str(path), "-o", str(tmp_path / "out.onnx"), "--set", "inputs.x=inp", "--device", "cpu"]
    )
    assert code == err.exit_code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and text in lines[0] and lines[0].startswith("error: ")
    assert snapshot(tmp_path) == before


def test_output_folder_missing_writes_nothing(tmp_path: Path) -> None:
    path, _ = external_chain(tmp_path, layers=2, dim=8)
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match="output folder .* does not exist") as info:
        Pipeline([RenameIO(inputs={"x": "inp"})], verify=VERIFY).apply(path, tmp_path / "nope" / "out.onnx")
    assert info.value.exit_code == EXIT_USAGE and "\n" not in str(info.value)
    assert snapshot(tmp_path) == before


def test_refuses_to_overwrite_input_without_in_place(tmp_path: Path) -> None:
    path, _ = external_chain(tmp_path, layers=2, dim=8)
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match="is the input model; refusing to overwrite it without --in-place") as info:
        Pipeline([RenameIO(inputs={"x": "inp"})], verify=VERIFY).apply(path, path)
    assert info.value.exit_code == EXIT_USAGE
    assert snapshot(tmp_path) == before
    code = cli_main(["run", "rename-io", str(path), "-o", str(path), "--set", "inputs.x=inp", "-q"])
    assert code == EXIT_USAGE and snapshot(tmp_path) == before


def test_in_place(tmp_path: Path) -> None:
    path, data = external_chain(tmp_path, layers=3, dim=16)
    expected = weights(load_full(path))
    res = Pipeline([RenameIO(inputs={"x": "inp"})], verify=VERIFY).apply(path, path, in_place=True)
    assert res.ok
    # the new data went to a name the old model did not use (the pair is replaced atomically);
    # the old data file is gone once the new model file was in place
    (new_data,) = {r["location"] for r in external_locations(path).values()}
    assert re.fullmatch(r"model\.onnx\.[0-9a-f]{8}\.data", new_data)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, new_data]) and not data.exists()
    got = load_full(path)
    assert [i.name for i in got.graph.input] == ["inp"]
    for name, value in weights(got).items():
        np.testing.assert_array_equal(value, expected[name])
    # and the result runs
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.ones((2, 16), np.float32)
    ref = x @ expected["w0"] @ expected["w1"] @ expected["w2"]
    np.testing.assert_allclose(sess.run(None, {"inp": x})[0], ref, rtol=1e-5, atol=1e-5)


def test_external_model_from_bytes_is_refused(tmp_path: Path) -> None:
    path, _ = external_chain(tmp_path, layers=1, dim=4)
    with pytest.raises(ModelError, match="stores its data externally, but the model was not loaded from a file"):
        load(path.read_bytes())


def test_model_sha256_is_of_the_file(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(matmul_chain(1, 4).graph, ir_version=10), str(path))
    assert load(path).sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
