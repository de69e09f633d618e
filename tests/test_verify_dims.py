"""Sizes for symbolic dims (chosen once, reported with why) and values integer inputs accept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, parser

from surgeon import Pipeline
from surgeon.cli import main
from surgeon.errors import ModelError, UsageError
from surgeon.ir.model import load
from surgeon.passes.cleanup import Cleanup
from surgeon.passes.mark_dynamic import MarkDynamic
from surgeon.passes.prepend_op import PrependOp
from surgeon.passes.promote_resize_scales import PromoteResizeScales
from surgeon.passes.rename_io import RenameIO
from surgeon.verify.config import VerifyConfig
from surgeon.verify.specs import graph_inputs
from surgeon.verify.verifier import Verifier
from tests.conftest import write_recipe

CPU = {"device": "cpu", "prove": False}


def _conv(pads: int, dims: list[str | int] | None = None) -> onnx.ModelProto:
    """Conv 3x3 over float[batch, 3, height, width] (no padding: height and width must be >= 3)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((2, 3, 3, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[pads] * 4)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims or ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _resize() -> onnx.ModelProto:
    return parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[2,3,4,4] x) => (float[2,3,8,8] y) <float[4] sc = {1.0, 1.0, 2.0, 2.0}>
        { y = Resize <mode="nearest"> (x, , sc) }"""
    )


def test_a_symbol_a_pass_introduced_takes_its_traced_size_in_later_steps() -> None:
    # before: the probe of the step after mark-dynamic asked for verify.dims: {batch: N}
    res = Pipeline([MarkDynamic(batch="batch"), PromoteResizeScales(input="factor", form="factor")], verify=CPU).run(
        _resize()
    )
    assert res.ok, res.failures()
    assert "batch=2 (traced)" in res.steps[1].check.sizes
    assert res.steps[1].as_dict()["sizes"] == ["batch=2 (traced)"]


def test_a_feed_derived_backwards_after_mark_dynamic_uses_the_traced_size() -> None:
    res = Pipeline([MarkDynamic(batch="batch"), PrependOp(input="x", op="Cast", dtype="float16")], verify=CPU).run(
        _resize()
    )
    assert res.ok, res.failures()


def test_unknown_sizes_default_and_are_reported_with_why(capsys: pytest.CaptureFixture[str]) -> None:
    res = Pipeline([RenameIO(inputs={"x": "image"})], verify={**CPU, "dims": {"height": 5}}).run(_conv(pads=1))
    assert res.ok, res.failures()
    assert res.sizes == ["height=5 (verify.dims)", "batch=1 (default)", "width=1 (default)"]
    assert res.as_dict()["sizes"] == res.sizes
    res = Pipeline([RenameIO(inputs={"x": "image"})], verify={**CPU, "default_dim": 4}).run(_conv(pads=1))
    assert res.ok and res.sizes == ["batch=4 (default)", "height=4 (default)", "width=4 (default)"]
    from rich.console import Console

    from surgeon.cli.render import summary_table

    console = Console(record=True, width=200)
    summary_table(console, res)
    assert "sizes: batch=4 (default), height=4 (default), width=4 (default)" in console.export_text()


def test_a_size_that_does_not_fit_names_every_size_and_the_key_in_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the unsized symbols are searched (test_firstaid_feeds); a height the user set too small is not
    res = Pipeline([RenameIO(inputs={"x": "image"})], verify=CPU).run(_conv(pads=0))
    assert res.ok and res.sizes == ["batch=1 (default)", "height=4 (searched)", "width=4 (searched)"]
    with pytest.raises(ModelError) as err:
        Pipeline([RenameIO(inputs={"x": "image"})], verify={**CPU, "dims": {"height": 2}}).run(_conv(pads=0))
    text = str(err.value)
    assert "the source model fails on the generated inputs" in text and "\n" not in text
    assert "height=2 (verify.dims), batch=1 (default), width=1 (default)" in text
    assert "set verify.dims: {height: N, batch: N, width: N}" in text and "verify.ranges" not in text
    onnx.save(_conv(pads=0), str(tmp_path / "m.onnx"))
    recipe = write_recipe(
        tmp_path,
        "version: 1\nmodel: m.onnx\noutput: o.onnx\nverify: {device: cpu, dims: {height: 2}, prove: false}\n"
        "passes:\n  - rename-io: {inputs: {x: image}}\n",
    )
    assert main(["apply", str(recipe)]) == 3
    assert "the source model fails on the generated inputs" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "verification will default batch, width to 1" in out and "set verify.dims: {batch: N, width: N}" in out


def test_placeholder_and_non_positive_dims_are_each_their_own_symbol() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["?", "?"])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3])
    z.type.tensor_type.shape.dim[0].dim_value = -1
    z.type.tensor_type.shape.dim.add()  # neither value nor param
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Identity", ["z"], ["zz"])],
        "g",
        [x, z],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("zz", TensorProto.FLOAT, None),
        ],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    assert [s.dims for s in graph_inputs(model)] == [("x:0", "x:1"), ("z:0", 3, "z:2")]
    # '?' on both axes is not one symbol: sizing axis 1 leaves axis 0 at the default
    res = Pipeline([RenameIO(outputs={"y": "out"})], verify={**CPU, "dims": {"x:1": 3}}).run(model)
    assert res.ok, res.failures()
    assert res.sizes == ["x:1=3 (verify.dims)", "x:0=1 (default)", "z:0=1 (default)", "z:2=1 (default)"]


def test_sizes_come_from_verify_inputs(tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", x=np.ones((2, 3, 6, 7), np.float32))
    v = Verifier(load(_conv(pads=0)), VerifyConfig(inputs="in.npz", device="cpu"), base_dir=tmp_path)
    assert v.sizes.lines() == ["batch=2 (verify.inputs)", "height=6 (verify.inputs)", "width=7 (verify.inputs)"]


def test_a_feed_that_would_need_gigabytes_is_refused_in_one_line() -> None:
    with pytest.raises(
        UsageError, match=r"input 'x' at shape \[1000000, 3, 1000000, 1\] would need .* GiB of random data"
    ):
        Verifier(load(_conv(pads=1, dims=[1000000, 3, 1000000, 1])), VerifyConfig(device="cpu"))


def _bert_like() -> onnx.ModelProto:
    """Word and token-type embeddings (10 and 2 rows) and an attention mask used as a condition."""
    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "emb")
    tt = numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "tt_emb")
    neg = numpy_helper.from_array(np.array(-1e4, np.float32), "neg")
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"], name="word"),
        helper.make_node("Gather", ["tt_emb", "token_type_ids"], ["t"], name="type"),
        helper.make_node("Add", ["e", "t"], ["h"]),
        helper.make_node("Cast", ["attention"], ["m"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
        helper.make_node("Where", ["m3", "h", "neg"], ["y"], name="masked"),
    ]
    ids = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "token_type_ids", "attention")
    ]
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    graph = helper.make_graph(
        nodes, "g", ids, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [emb, tt, neg, axes]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_integer_inputs_get_values_their_consumers_accept() -> None:
    v = Verifier(load(_bert_like()), VerifyConfig(device="cpu", dims={"batch": 4, "seq": 64}))
    assert v.feed["input_ids"].max() >= 4 and v.feed["input_ids"].max() < 10
    assert set(np.unique(v.feed["token_type_ids"])) == {0, 1}
    assert v.values == [
        "input_ids in [0, 10) (indexes 'emb' (10 rows))",
        "token_type_ids in [0, 2) (indexes 'tt_emb' (2 rows))",
        "attention in [0, 2) (mask: condition of Where 'masked')",
    ]
    # before: token type ids in [0, 4) made onnxruntime fail on the source model
    res = Pipeline([Cleanup()], verify={"device": "cpu", "dims": {"batch": 2, "seq": 5}}).run(_bert_like())
    assert res.values == v.values


def test_mask_by_name_and_ranges_override() -> None:
    model = parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (int64[8] pad_mask, int64[8] k) => (int64[8] y) { y = Add (pad_mask, k) }"""
    )
    v = Verifier(load(model), VerifyConfig(device="cpu", ranges={"pad_mask": (5, 6)}))
    assert set(np.unique(v.feed["pad_mask"])) == {5} and v.values == []
    v = Verifier(load(model), VerifyConfig(device="cpu"))
    assert set(np.unique(v.feed["pad_mask"])) <= {0, 1} and v.values == ["pad_mask in [0, 2) (named like a mask)"]


def test_sizes_a_fix_dims_step_binds_are_the_sources_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from surgeon.passes.fix_dims import FixDims

    res = Pipeline([FixDims(dims={"height": 6, "width": 5})], verify=CPU).run(_conv(pads=0))
    assert res.ok, res.failures()  # before: the source's feed needed verify.dims
    assert res.sizes == [
        "height=6 (fixed by passes[0] (fix-dims))",
        "width=5 (fixed by passes[0] (fix-dims))",
        "batch=1 (default)",
    ]
    onnx.save(_conv(pads=0), str(tmp_path / "m.onnx"))
    recipe = write_recipe(
        tmp_path, "version: 1\nmodel: m.onnx\noutput: o.onnx\npasses:\n  - fix-dims: {dims: {height: 6, width: 5}}\n"
    )
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert (
        "height=6 (fixed by passes[0] (fix-dims))" in out and "will default batch to 1" in out and "{batch: N}" in out
    )
