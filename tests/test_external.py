"""External data: locations confined to the model's folder, checks without reading, byte-range
copies, and the verifier running an external-data model with its weights in place."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import surgeon.ir.model
import surgeon.verify.runtime
import surgeon.verify.verifier
from surgeon import Pipeline
from surgeon.errors import EXIT_MODEL, ModelError
from surgeon.ir.external import (
    ExternalRef,
    check_external_data,
    copy_range,
    external_ref,
    safe_data_path,
    set_external_ref,
    tensor_values,
)
from surgeon.ir.model import load
from surgeon.ir.walk import iter_model_tensors
from surgeon.passes.rename_io import RenameIO
from tests.models_external import external_chain, load_full, snapshot, weights

VERIFY = {"dims": {"batch": 2}, "device": "cpu", "prove": False}  # runs, not structural proofs


def _relocate(path: Path, location: str, tensor: str | None = None) -> None:
    """Point the external references of ``path`` (or one tensor's) at ``location``."""
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        if tensor is None or t.name == tensor:
            ref = external_ref(t)
            set_external_ref(t, ExternalRef(location, ref.offset, ref.length))
    path.write_bytes(m.SerializeToString())


# --- locations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("location", ["w.bin", "sub/w.bin", "./w.bin", "sub/./deeper/w.bin"])
def test_locations_inside_the_folder(tmp_path: Path, location: str) -> None:
    assert safe_data_path(tmp_path, location, "t") == (tmp_path / location).resolve()


@pytest.mark.parametrize(
    "location",
    [
        "../w.bin",
        "sub/../../w.bin",
        "/etc/passwd",
        "C:\\weights\\w.bin",
        "\\\\server\\share\\w.bin",
        "..\\w.bin",
        "c:w.bin",
    ],
)
def test_locations_outside_the_folder_are_refused(tmp_path: Path, location: str) -> None:
    with pytest.raises(ModelError, match="points outside the model's folder; refusing to follow it"):
        safe_data_path(tmp_path, location, "t")


def test_empty_location_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="has no location"):
        safe_data_path(tmp_path, "", "t")


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"\0" * 16)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link").symlink_to(outside)
    with pytest.raises(ModelError, match="resolves outside the model's folder"):
        safe_data_path(folder, "link/w.bin", "t")


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_model_pointing_outside_is_rejected_and_not_followed(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    path, data = external_chain(folder, layers=2, dim=8)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(data.read_bytes())  # a file that would "work" if it were followed
    _relocate(path, "../secret.bin" if where == "parent" else str(secret))
    before = snapshot(tmp_path)
    opened: list[str] = []
    real_open = open

    def spy(file: object, *args: object, **kwargs: object) -> object:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(ModelError, match="points outside the model's folder; refusing to follow it") as info:
        load(path)
    monkeypatch.undo()
    assert info.value.exit_code == EXIT_MODEL and "\n" not in str(info.value)
    assert "tensor 'w0'" in str(info.value) and str(path) in str(info.value)
    assert not any("secret" in f for f in opened)
    assert snapshot(tmp_path) == before


def test_missing_data_file(tmp_path: Path) -> None:
    path, data = external_chain(tmp_path, layers=2, dim=8)
    data.unlink()
    with pytest.raises(ModelError, match=r"external data file 'model.onnx.data' does not exist") as info:
        load(path)
    assert info.value.exit_code == EXIT_MODEL and "\n" not in str(info.value)


def test_truncated_data_file(tmp_path: Path) -> None:
    path, data = external_chain(tmp_path, layers=2, dim=8)
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(
        ModelError, match=r"tensor 'w1': external data range 256\.\.512 is past the end .* the file is truncated"
    ):
        load(path)


def test_cli_on_bad_external_data_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from surgeon.cli import main

    path, data = external_chain(tmp_path, layers=2, dim=8)
    data.write_bytes(data.read_bytes()[:100])
    before = snapshot(tmp_path)
    code = main(["run", "rename-io", str(path), "-o", str(tmp_path / "out.onnx"), "--set", "inputs.x=inp"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == EXIT_MODEL and len(err) == 1 and "truncated" in err[0]
    assert snapshot(tmp_path) == before


def test_check_reads_no_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = external_chain(tmp_path, layers=2, dim=8)
    proto = onnx.load(str(path), load_external_data=False)
    real_open = open

    def guarded(file: object, *args: object, **kwargs: object) -> object:
        assert Path(str(file)).name != data.name, "the check opened the weights"
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", guarded)
    assert check_external_data(proto, tmp_path, "m") == [data.name]


def test_iter_model_tensors_finds_attributes_and_subgraphs() -> None:
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(2, np.float32), "cv"))
    inner = helper.make_node("Constant", [], ["d"], value=numpy_helper.from_array(np.zeros(2, np.float32), "dv"))
    branch = helper.make_graph([inner], "b", [], [helper.make_tensor_value_info("d", TensorProto.FLOAT, [2])])
    node_if = helper.make_node("If", ["cond"], ["o"], then_branch=branch, else_branch=branch)
    g = helper.make_graph(
        [const, node_if],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(1, np.float32), "init")],
    )
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(1, np.float32), "sp"),
        numpy_helper.from_array(np.zeros(1, np.int64), "sp_i"),
        [3],
    )
    g.sparse_initializer.append(sparse)
    names = [t.name for t in iter_model_tensors(helper.make_model(g, ir_version=10))]
    assert names == ["init", "sp", "sp_i", "cv", "dv", "dv"]


def test_tensor_values_reads_only_its_range(tmp_path: Path) -> None:
    path, _ = external_chain(tmp_path, layers=3, dim=8)
    proto = onnx.load(str(path), load_external_data=False)
    expected = weights(load_full(path))
    for t in proto.graph.initializer:
        np.testing.assert_array_equal(tensor_values(t, tmp_path), expected[t.name])
        assert t.data_location == TensorProto.EXTERNAL  # the model's tensor is left as it was


# --- copies --------------------------------------------------------------------------------------


def _copy(src: bytes, offset: int, length: int, tmp_path: Path) -> bytes:
    s, d = tmp_path / "s", tmp_path / "d"
    s.write_bytes(src)
    with open(s, "rb") as fs, open(d, "wb") as fd:
        fd.write(b"head")
        copy_range(fs, fd, offset, length)
        fd.write(b"tail")
    return d.read_bytes()


@pytest.mark.parametrize("kernel", [True, False])
def test_copy_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: bool) -> None:
    if not kernel:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
        monkeypatch.setattr(surgeon.ir.external, "COPY_CHUNK", 7)
    src = bytes(range(256)) * 10
    assert _copy(src, 100, 1000, tmp_path) == b"head" + src[100:1100] + b"tail"
    assert _copy(src, 0, 0, tmp_path) == b"headtail"


def test_copy_range_past_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="ended early while copying"):
        _copy(b"x" * 10, 5, 100, tmp_path)


def test_copy_range_falls_back_when_the_kernel_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    src = bytes(range(200))
    assert _copy(src, 10, 50, tmp_path) == b"head" + src[10:60] + b"tail"


# --- the verifier on an external-data model -------------------------------------------------------


def test_pipeline_verifies_external_model_in_place_of_its_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    path, data = external_chain(folder, layers=3, dim=16)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = snapshot(folder)
    seen: list[list[str]] = []
    sessions: list[str] = []
    real_session = surgeon.verify.runtime.Runtime.session

    def spy(
        self: surgeon.verify.runtime.Runtime, p: Path, folder_: Path | None = None, data_: bytes | None = None
    ) -> object:
        seen.append(sorted(x.name for x in folder.iterdir()))
        sessions.append(str(p))
        assert data_ is None, "sessions are built from files on disk"
        return real_session(self, p, folder_, data_)

    monkeypatch.setattr(surgeon.verify.runtime.Runtime, "session", spy)
    res = Pipeline([RenameIO(inputs={"x": "inp"}, outputs={"y": "out"})], verify=VERIFY).apply(path, out_dir / "m.onnx")
    check = res.steps[0].check
    assert res.ok and check is not None and [o.ok for o in check.outputs] == [True]
    # the reference ran the source file itself; the candidate a hidden file beside the weights
    assert sessions[0] == str(path)
    hidden = [Path(s) for s in sessions[1:]]
    assert hidden and all(p.parent == folder and p.name.startswith(".surgeon-verify-") for p in hidden)
    assert any(any(n.startswith(".surgeon-verify-") for n in names) for names in seen)
    assert snapshot(folder) == before, "the temporary model is removed, the source untouched"
    got = load_full(out_dir / "m.onnx")
    assert [i.name for i in got.graph.input] == ["inp"] and [o.name for o in got.graph.output] == ["out"]
    for name, value in weights(load_full(path)).items():
        np.testing.assert_array_equal(weights(got)[name], value)


def test_verifier_temp_file_removed_when_verification_fails(tmp_path: Path) -> None:
    """A run that fails verification leaves no hidden file beside the weights either."""
    from surgeon.pass_api import Pass, PassResult
    from surgeon.verify.contract import IOContract

    class Break(Pass):
        name = "break-weight"

        def run(self, model):  # type: ignore[no-untyped-def]
            c = model.graph.tensors()["w0"]
            c.values = model.values(c) + 1
            return PassResult(True, IOContract())

    path, _ = external_chain(tmp_path, layers=2, dim=8)
    before = snapshot(tmp_path)
    res = Pipeline([Break()], verify=VERIFY).run(path)
    assert not res.ok
    assert snapshot(tmp_path) == before


def test_read_only_folder_falls_back_to_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no temporary file can be written beside the weights, the verifier hands onnxruntime
    the model as bytes with the weights folder set."""
    import tempfile

    path, _ = external_chain(tmp_path, layers=2, dim=8)
    real = tempfile.mkstemp

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        if kwargs.get("dir") == tmp_path:
            raise PermissionError("read-only")
        return real(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    handed: list[tuple[Path | None, bool]] = []
    real_session = surgeon.verify.runtime.Runtime.session

    def spy(
        self: surgeon.verify.runtime.Runtime, p: Path, folder: Path | None = None, data: bytes | None = None
    ) -> object:
        handed.append((folder, data is not None))
        return real_session(self, p, folder, data)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(surgeon.verify.runtime.Runtime, "session", spy)
    res = Pipeline([RenameIO(inputs={"x": "inp"})], verify=VERIFY).run(path)
    assert res.ok and res.steps[0].check is not None
    assert handed[0] == (None, False)  # the source: its own file
    assert handed[1] == (tmp_path, True)  # the candidate: bytes, weights folder set
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_reference_runs_once_per_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source runs once for the reference however many steps are verified; every session is
    built from a file on disk."""
    path, _ = external_chain(tmp_path, layers=2, dim=8)
    runs: list[str] = []
    real = surgeon.verify.verifier.run_model

    def spy(
        runtime: surgeon.verify.runtime.Runtime,
        model: surgeon.ir.model.Model,
        feeds: list[dict[str, np.ndarray]],
        *rest: str,
    ) -> object:
        runs.append("source" if model.path == path else "candidate")
        return real(runtime, model, feeds, *rest)

    monkeypatch.setattr(surgeon.verify.verifier, "run_model", spy)
    steps = [RenameIO(inputs={"x": "a"}), RenameIO(outputs={"y": "b"}), RenameIO(inputs={"a": "c"})]
    res = Pipeline(steps, verify=VERIFY).run(path)
    assert res.ok and all(s.check is not None for s in res.steps)
    assert runs == ["source", "candidate", "candidate", "candidate"]


def test_external_tensors_finds_what_the_full_walk_finds() -> None:
    """The tight walk loads and saves use (``external_tensors``) finds every external tensor the
    general one does: initializers, sparse values, Constant attributes, If branches, functions."""
    from onnx import TensorProto, helper

    from surgeon.ir.external import is_external
    from surgeon.ir.walk import external_tensors

    def ext(name: str) -> onnx.TensorProto:
        t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[1])
        set_external_ref(t, ExternalRef("w.bin", 0, 4))
        return t

    def inline(name: str) -> onnx.TensorProto:
        return onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[1], raw_data=bytes(4))

    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=ext("in_branch"))],
        "b",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
        [ext("branch_init"), inline("branch_inline")],
    )
    sparse = onnx.SparseTensorProto(
        values=ext("sparse_values"),
        indices=onnx.TensorProto(name="i", data_type=TensorProto.INT64, dims=[1], int64_data=[0]),
        dims=[2],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["k"], value=ext("const")),
            helper.make_node("Constant", [], ["k2"], value=inline("const_inline")),
            helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch),
        ],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [ext("init"), inline("init_inline")],
        sparse_initializer=[sparse],
    )
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    fn = helper.make_function(
        "local",
        "f",
        [],
        ["o"],
        [helper.make_node("Constant", [], ["o"], value=ext("in_fn"))],
        [helper.make_opsetid("", 17)],
    )
    model.functions.append(fn)
    want = [t.name for t in iter_model_tensors(model) if is_external(t)]
    assert sorted(want) == sorted(
        ["init", "sparse_values", "const", "in_branch", "branch_init", "in_branch", "branch_init", "in_fn"]
    )
    assert [t.name for t in external_tensors(model)] == want


def test_a_file_without_external_data_is_ruled_out_from_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """referenced_files (what an existing output refers to, asked before every save) does not parse
    a model whose bytes hold no external data entry; one that does is parsed and its files found,
    also when the entry's key straddles two read chunks."""
    import surgeon.ir.targets as targets

    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "g", [], []), ir_version=10), str(plain))
    parsed: list[str] = []
    real = onnx.load

    def spy(path: str, *a: object, **k: object) -> onnx.ModelProto:
        parsed.append(path)
        return real(path, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx, "load", spy)
    assert targets.referenced_files(plain) == set() and parsed == []
    path, _ = external_chain(tmp_path, layers=2, dim=4)
    data = path.read_bytes()
    at = data.index(b"\x0a\x08location")
    for chunk in (1 << 20, at + 3, 7):
        assert targets._may_refer(path, chunk)
    monkeypatch.undo()
    assert targets.referenced_files(path) == {(tmp_path / f).resolve() for f in load(path).data_files}


def test_a_small_model_in_memory_goes_to_onnxruntime_as_bytes_a_big_one_as_a_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The verifier hands a model held in memory to onnxruntime as bytes (no temporary file, no
    fsync) while it is small; above ``IN_MEMORY_LIMIT`` it writes a temporary file instead, so the
    serialized copy does not sit in memory beside onnxruntime's own."""
    import surgeon.verify.runtime as runtime

    model = load(
        helper.make_model(
            helper.make_graph(
                [helper.make_node("Relu", ["x"], ["y"])],
                "g",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
            ),
            ir_version=10,
            opset_imports=[helper.make_opsetid("", 17)],
        ).SerializeToString()
    )
    with runtime.on_disk(model) as (path, folder, data):
        assert data is not None and not path.exists() and folder is None
    monkeypatch.setattr(runtime, "IN_MEMORY_LIMIT", 0)
    with runtime.on_disk(model) as (path, folder, data):
        assert data is None and path.is_file()
        assert onnx.load(str(path)).graph.node[0].op_type == "Relu"
    assert not path.exists()
