"""Saving: atomic writes, external data policies, untouched weights copied file-to-file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

import surgeon.ir.external
import surgeon.ir.save
from surgeon import Pipeline
from surgeon.errors import EXIT_USAGE, ModelError, UsageError
from surgeon.ir.model import load
from surgeon.ir.save import SavePolicy, save
from surgeon.pass_api import Pass, PassParams, PassResult
from surgeon.passes.rename_io import RenameIO
from tests.models_external import (
    external_chain,
    external_locations,
    load_full,
    matmul_chain,
    save_external,
    snapshot,
    weights,
)

VERIFY = {"dims": {"batch": 2}, "device": "cpu"}


def _check_refs_inside(path: Path) -> None:
    """Every external reference of the model at ``path`` lies inside its file."""
    for name, ref in external_locations(path).items():
        data = path.parent / ref["location"]
        assert data.is_file(), name
        assert int(ref["offset"]) + int(ref["length"]) <= data.stat().st_size, name


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(load_full(a)), weights(load_full(b))
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name])


def _no_python_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any read of external weights into Python objects fail."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights went through Python objects")

    monkeypatch.setattr(surgeon.ir.external, "read_external_bytes", boom)
    monkeypatch.setattr(surgeon.ir.save, "inline_copy", boom)
    monkeypatch.setattr(numpy_helper, "to_array", boom)


class DoubleWeight(Pass):
    """Test pass (not registered): multiply one weight by two."""

    name = "double-weight"

    class Params(PassParams):
        tensor: str = "w1"

    params: Params

    def run(self, model):  # type: ignore[no-untyped-def]
        from surgeon.verify.contract import IOContract

        const = model.graph.tensors()[self.params.tensor]
        const.values = model.values(const) * 2
        return PassResult(True, IOContract())


# --- unchanged external models -------------------------------------------------------------------


def test_unchanged_external_model_is_copied_file_to_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "src").mkdir()
    path, data = external_chain(tmp_path / "src", layers=4, dim=32)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.onnx"
    _no_python_copies(monkeypatch)
    written = save(load(path), out)
    monkeypatch.undo()
    assert written == [out_dir / "m.onnx.data", out]
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.onnx", "m.onnx.data"]
    locs = external_locations(out)
    assert sorted(locs) == ["w0", "w1", "w2", "w3"]
    assert {ref["location"] for ref in locs.values()} == {"m.onnx.data"}
    _check_refs_inside(out)
    _assert_same_weights(path, out)
    # the bytes of every tensor are the source's bytes
    src_bytes, out_bytes = data.read_bytes(), (out_dir / "m.onnx.data").read_bytes()
    for name, ref in external_locations(path).items():
        o = locs[name]
        a = src_bytes[int(ref["offset"]) : int(ref["offset"]) + int(ref["length"])]
        b = out_bytes[int(o["offset"]) : int(o["offset"]) + int(o["length"])]
        assert a == b, name


def test_pipeline_on_external_model_copies_without_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = external_chain(tmp_path, layers=3, dim=16)
    out = tmp_path / "out.onnx"
    pipe = Pipeline([RenameIO(inputs={"x": "inp"})], verify={"mode": "off"})
    _no_python_copies(monkeypatch)
    res = pipe.apply(path, out)
    monkeypatch.undo()
    assert res.changed_tensors == set()
    _assert_same_weights(path, out)


def test_copy_without_copy_file_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = external_chain(tmp_path, layers=3, dim=16)
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    monkeypatch.setattr(surgeon.ir.external, "COPY_CHUNK", 1000)  # several chunks per tensor
    out = tmp_path / "out.onnx"
    save(load(path), out)
    _assert_same_weights(path, out)


# --- policies ------------------------------------------------------------------------------------


def test_external_never_inlines(tmp_path: Path) -> None:
    path, _ = external_chain(tmp_path, layers=2, dim=16)
    out = tmp_path / "inline.onnx"
    assert save(load(path), out, SavePolicy(external="never")) == [out]
    assert external_locations(out) == {}
    _assert_same_weights(path, out)


def test_external_always_with_threshold(tmp_path: Path) -> None:
    proto = matmul_chain(2, 16)
    proto.graph.initializer.append(numpy_helper.from_array(np.arange(4, dtype=np.float32), "small"))
    out = tmp_path / "m.onnx"
    save(load(proto), out, SavePolicy(external="always", threshold=512))
    locs = external_locations(out)
    assert sorted(locs) == ["w0", "w1"]  # 1 KiB each; 'small' (16 bytes) stays inline
    _check_refs_inside(out)
    got = weights(load_full(out))
    for name, value in weights(proto).items():
        np.testing.assert_array_equal(got[name], value)


def test_external_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proto = matmul_chain(2, 16)
    small = tmp_path / "small.onnx"
    save(load(proto), small)  # inline source, small: inline
    assert external_locations(small) == {}
    ext, _ = external_chain(tmp_path, layers=2, dim=16, name="ext.onnx")
    out = tmp_path / "from_ext.onnx"
    save(load(ext), out)  # the source used external data: so does the output
    assert set(external_locations(out)) == {"w0", "w1"}
    monkeypatch.setattr(surgeon.ir.save, "SAFE_INLINE_LIMIT", 1000)  # "the model would pass 2 GB"
    big = tmp_path / "big.onnx"
    save(load(proto), big)
    assert set(external_locations(big)) == {"w0", "w1"}


def test_external_auto_keeps_external_when_a_pass_replaced_every_weight(tmp_path: Path) -> None:
    """'auto' follows the source: a model whose weights are all new (in memory) is still written
    with external data when the source used it."""
    path, _ = external_chain(tmp_path, layers=1, dim=32)
    out = tmp_path / "out.onnx"
    res = Pipeline([DoubleWeight(tensor="w0")], verify={"mode": "off"}).apply(path, out)
    assert res.changed_tensors == {"w0"} and not res.model.uses_external_data
    assert {r["location"] for r in external_locations(out).values()} == {"out.onnx.data"}
    np.testing.assert_array_equal(weights(load_full(out))["w0"], weights(load_full(path))["w0"] * 2)


def test_inline_over_two_gigabytes_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(surgeon.ir.save, "PROTOBUF_LIMIT", 1000)
    before = snapshot(tmp_path)
    with pytest.raises(ModelError, match="over 2 GB; save it with external data"):
        save(load(matmul_chain(2, 16)), tmp_path / "m.onnx", SavePolicy(external="never"))
    assert snapshot(tmp_path) == before


def test_location(tmp_path: Path) -> None:
    path, _ = external_chain(tmp_path, layers=2, dim=16)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "m.onnx"
    (tmp_path / "out" / "weights").mkdir()
    save(load(path), out, SavePolicy(location="weights/all.bin"))
    assert {r["location"] for r in external_locations(out).values()} == {"weights/all.bin"}
    _assert_same_weights(path, out)


@pytest.mark.parametrize("location", ["../escape.bin", "/tmp/abs.bin", "a/../../x.bin"])
def test_location_outside_folder_is_refused(tmp_path: Path, location: str) -> None:
    path, _ = external_chain(tmp_path, layers=1, dim=8)
    (tmp_path / "out").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(ModelError, match="points outside the model's folder"):
        save(load(path), tmp_path / "out" / "m.onnx", SavePolicy(location=location))
    assert snapshot(tmp_path) == before


def test_one_file_per_tensor(tmp_path: Path) -> None:
    proto = matmul_chain(2, 16)
    proto.graph.initializer[0].name = "layer/0:w"  # a name that is not a file name
    proto.graph.node[0].input[1] = "layer/0:w"
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "m.onnx"
    save_external(proto, path)
    out = tmp_path / "m.onnx"
    save(load(path), out, SavePolicy(one_file_per_tensor=True))
    locs = external_locations(out)
    assert {n: r["location"] for n, r in locs.items()} == {"layer/0:w": "layer_0_w", "w1": "w1"}
    assert all(r["offset"] == "0" for r in locs.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer_0_w", "m.onnx", "src", "w1"]
    _assert_same_weights(path, out)


def test_alignment_of_large_tensors(tmp_path: Path) -> None:
    proto = matmul_chain(2, 512)  # 1 MiB each
    proto.graph.initializer.insert(0, numpy_helper.from_array(np.arange(3, dtype=np.float32), "odd"))
    path = tmp_path / "m.onnx"
    save_external(proto, path)
    out = tmp_path / "out.onnx"
    save(load(path), out)
    locs = external_locations(out)
    assert int(locs["w0"]["offset"]) % 4096 == 0 and int(locs["w1"]["offset"]) % 4096 == 0
    _assert_same_weights(path, out)


def test_share_weights_next_to_source(tmp_path: Path) -> None:
    path, data = external_chain(tmp_path, layers=3, dim=16)
    src_refs = external_locations(path)
    out = tmp_path / "shared.onnx"
    res = Pipeline([RenameIO(inputs={"x": "inp"})], verify=VERIFY, save={"share_weights": True}).apply(path, out)
    assert res.ok
    assert external_locations(out) == src_refs  # same file, same offsets
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, data.name, out.name])
    _assert_same_weights(path, out)


def test_share_weights_never_for_a_changed_tensor(tmp_path: Path) -> None:
    path, data = external_chain(tmp_path, layers=3, dim=16)
    src = weights(load_full(path))
    before = data.read_bytes()
    out = tmp_path / "changed.onnx"
    res = Pipeline([DoubleWeight()], verify={"mode": "off"}, save={"share_weights": True}).apply(path, out)
    assert res.changed_tensors == {"w1"}
    locs = external_locations(out)
    assert locs["w0"]["location"] == locs["w2"]["location"] == data.name
    assert locs["w1"]["location"] == "changed.onnx.data"
    got = weights(load_full(out))
    np.testing.assert_array_equal(got["w1"], src["w1"] * 2)
    np.testing.assert_array_equal(got["w0"], src["w0"])
    assert data.read_bytes() == before


def test_share_weights_changed_set_names_an_external_tensor(tmp_path: Path) -> None:
    """``changed`` alone keeps a tensor from being shared, even while it is still external."""
    path, data = external_chain(tmp_path, layers=2, dim=16)
    out = tmp_path / "o.onnx"
    save(load(path), out, SavePolicy(share_weights=True), changed={"w0"})
    locs = external_locations(out)
    assert locs["w0"]["location"] == "o.onnx.data" and locs["w1"]["location"] == data.name
    _assert_same_weights(path, out)


def test_share_weights_in_another_folder_copies(tmp_path: Path) -> None:
    path, data = external_chain(tmp_path, layers=2, dim=16)
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "elsewhere" / "m.onnx"
    save(load(path), out, SavePolicy(share_weights=True))
    assert {r["location"] for r in external_locations(out).values()} == {"m.onnx.data"}
    _assert_same_weights(path, out)


def test_share_weights_in_place_rewrites_only_the_model_file(tmp_path: Path) -> None:
    path, data = external_chain(tmp_path, layers=2, dim=16)
    before = data.read_bytes()
    res = Pipeline([RenameIO(inputs={"x": "inp"})], verify=VERIFY, save={"share_weights": True}).apply(
        path, path, in_place=True
    )
    assert res.ok and data.read_bytes() == before
    assert [i.name for i in onnx.load(str(path), load_external_data=False).graph.input] == ["inp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, data.name]


def test_share_weights_location_collision_is_refused(tmp_path: Path) -> None:
    path, data = external_chain(tmp_path, layers=2, dim=16)
    before = snapshot(tmp_path)
    with pytest.raises(ModelError, match="is the shared source weights file"):
        Pipeline([DoubleWeight()], verify={"mode": "off"}, save={"share_weights": True, "location": data.name}).apply(
            path, tmp_path / "o.onnx"
        )
    assert snapshot(tmp_path) == before


def test_never_overwrites_the_source_weights_file(tmp_path: Path) -> None:
    """An output beside the source, not in place, must not write over the source's data file."""
    proto = matmul_chain(2, 16)
    proto.graph.initializer.insert(0, numpy_helper.from_array(np.arange(3, dtype=np.float32), "odd"))
    path = tmp_path / "m.onnx"
    save_external(proto, path, location="weights.bin")
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match="is the weights file of the source model") as info:
        Pipeline([RenameIO(inputs={"x": "inp"})], verify=VERIFY, save={"location": "weights.bin"}).apply(
            path, tmp_path / "o.onnx"
        )
    assert info.value.exit_code == EXIT_USAGE
    assert snapshot(tmp_path) == before


def test_one_file_per_tensor_beside_a_source_that_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(
        matmul_chain(2, 16), str(path), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0
    )
    before = snapshot(tmp_path)
    out = tmp_path / "o.onnx"
    save(load(path), out, SavePolicy(one_file_per_tensor=True))
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # the source's files are untouched
    assert {r["location"] for r in external_locations(out).values()} == {"w0_1", "w1_1"}
    _assert_same_weights(path, out)


# --- atomic writes -------------------------------------------------------------------------------


def test_failed_save_leaves_nothing_and_keeps_old_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = external_chain(tmp_path, layers=3, dim=16)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    (tmp_path / "out.onnx.data").write_bytes(b"previous data")
    before = snapshot(tmp_path)
    calls = []

    def failing_copy(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_copy(*args)  # type: ignore[arg-type]

    real_copy = surgeon.ir.save.copy_range
    monkeypatch.setattr(surgeon.ir.save, "copy_range", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        save(load(path), out)
    assert snapshot(tmp_path) == before  # no temporary files, old output untouched


def test_save_to_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="output folder .* does not exist"):
        save(load(matmul_chain(1, 4)), tmp_path / "no" / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_policy_rejects_unknown_keys() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SavePolicy.model_validate({"externl": "always"})
    with pytest.raises(ValidationError):
        SavePolicy.model_validate({"external": "sometimes"})


def test_written_model_has_no_raw_data_left_for_external_tensors(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    save(load(matmul_chain(2, 16)), out, SavePolicy(external="always", threshold=0))
    m = onnx.load(str(out), load_external_data=False)
    for t in m.graph.initializer:
        assert t.data_location == TensorProto.EXTERNAL and not t.raw_data and not t.float_data
