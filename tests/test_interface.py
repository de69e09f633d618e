"""The whole interface under the contract: order, dtypes, static dims; verify a b probes dynamic axes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import onnx
import pytest
from onnx import parser

from surgeon import Pipeline
from surgeon.cli import main
from surgeon.ir.adapter import ModelIR
from surgeon.pass_api import Pass, PassParams, PassResult
from surgeon.passes.fix_dims import FixDims
from surgeon.passes.mark_dynamic import MarkDynamic
from surgeon.passes.rename_io import RenameIO
from surgeon.verify.contract import IOContract
from surgeon.verify.interface import check_interface

TWO_OUT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2,3] x) => ({outs}) {{ a = Relu (x)  b = Neg (x) }}"""


def _two(outs: str = "float[2,3] a, float[2,3] b") -> onnx.ModelProto:
    return parser.parse_model(TWO_OUT.format(outs=outs))


def test_swapped_outputs_fail_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx.save(_two(), str(tmp_path / "a.onnx"))
    onnx.save(_two("float[2,3] b, float[2,3] a"), str(tmp_path / "b.onnx"))
    assert main(["verify", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "--device", "cpu"]) == 1  # before: 0
    assert "order ['b', 'a'] != ['a', 'b'] before" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "a.onnx"), str(tmp_path / "a.onnx"), "--device", "cpu"]) == 0


def test_a_pass_that_swaps_outputs_or_changes_dims_undeclared_fails() -> None:
    class Swap(RenameIO):
        def run(self, ir):  # type: ignore[no-untyped-def]
            res = super().run(ir)
            ir.graph.outputs = list(reversed(ir.graph.outputs))
            return res

    class Loosen(RenameIO):
        def run(self, ir):  # type: ignore[no-untyped-def]
            res = super().run(ir)
            ir.graph.outputs[0].shape = ["n", 3]
            return res

    res = Pipeline([Swap(inputs={"x": "inp"})], verify={"device": "cpu"}).run(_two())
    assert not res.ok and any("interface: outputs" in f and "order" in f for f in res.failures()), res.failures()
    res = Pipeline([Loosen(inputs={"x": "inp"})], verify={"device": "cpu"}).run(_two())
    assert not res.ok and any(
        "output 'a'" in f and "axis 0 is 'n', was 2 (static -> symbolic)" in f for f in res.failures()
    ), res.failures()
    res = Pipeline([MarkDynamic(batch="n")], verify={"device": "cpu"}).run(_two())
    assert res.ok, res.failures()  # declared: changed_dims

    class LooseBatch(MarkDynamic):  # marks the batch, and also loosens an axis that does not follow it
        def run(self, ir):  # type: ignore[no-untyped-def]
            res = super().run(ir)
            ir.graph.outputs[0].shape = ["n", "m"]
            return res

    res = Pipeline([LooseBatch(batch="n")], verify={"device": "cpu"}).run(_two())
    assert not res.ok and any("output 'a'" in f and "axis 1 is 'm', was 3" in f for f in res.failures()), res.failures()

    class FixAndShrink(FixDims):  # fixes N, and also rewrites a dim that was static
        def run(self, ir):  # type: ignore[no-untyped-def]
            res = super().run(ir)
            ir.graph.outputs[1].shape = [2, 4]
            return res

    dynamic = parser.parse_model(
        TWO_OUT.replace("float[2,3] x", "float[N,3] x").format(outs="float[N,3] a, float[N,3] b")
    )
    res = Pipeline([FixDims(dims={"N": 2})], verify={"device": "cpu"}).run(dynamic)
    assert res.ok, res.failures()  # N -> 2 on the input and both outputs: declared
    res = Pipeline([FixAndShrink(dims={"N": 2})], verify={"device": "cpu"}).run(dynamic)
    assert not res.ok and any("output 'b'" in f and "axis 1 is 4, was 3" in f for f in res.failures()), res.failures()


def test_check_interface_dtypes_renames_and_declarations() -> None:
    before = _two()
    after = _two("double[2,3] a, float[2,3] b")
    bad = check_interface(before, after, [IOContract()])
    assert [o.name for o in bad] == ["interface: output 'a'"] and "dtype float64 != float32 before" in bad[0].note
    assert check_interface(before, after, [IOContract(changed_types={"a"})]) == []
    renamed = _two("float[2,3] b, float[2,3] z")
    assert check_interface(before, renamed, [IOContract(renamed_outputs={"a": "z"})])[0].note.startswith(
        "order ['b', 'z']"
    )
    assert check_interface(before, renamed, [IOContract(renamed_outputs={"a": "z"}, reordered=True)]) == []
    loose = _two("float[n,m] a, float[2,3] b")  # changed_axes frees those axes only
    assert check_interface(before, loose, [IOContract(changed_axes={"a": {0, 1}})]) == []
    only_one = check_interface(before, loose, [IOContract(changed_axes={"a": {0}})])
    assert [o.name for o in only_one] == ["interface: output 'a'"] and "axis 1 is 'm', was 3" in only_one[0].note
    assert (
        "rank"
        in check_interface(before, _two("float[2] a, float[2,3] b"), [IOContract(changed_axes={"a": {0, 1}})])[0].note
    )
    unknown = _two("float[?,3] a, float[2,3] b")  # placeholder dims are unknown: not an interface promise
    assert check_interface(unknown, before, [IOContract()]) == []


RESHAPE = """<ir_version: 10, opset_import: ["" : 17]>
g (float[{b},3] x) => (float[{b},3] y) <int64[2] s = {{{shape}, 3}}> {{ r = Reshape (x, s)  y = Relu (r) }}"""


def test_verify_probes_axes_the_candidate_made_dynamic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, good, broken = tmp_path / "a.onnx", tmp_path / "good.onnx", tmp_path / "broken.onnx"
    onnx.save(parser.parse_model(RESHAPE.format(b=2, shape=2)), str(a))
    onnx.save(parser.parse_model(RESHAPE.format(b="batch", shape=-1)), str(good))
    onnx.save(parser.parse_model(RESHAPE.format(b="batch", shape=2)), str(broken))  # hard-codes the traced batch
    report = tmp_path / "r.json"
    assert main(["verify", str(a), str(good), "--device", "cpu", "--report", str(report)]) == 0
    names = [o["name"] for o in json.loads(report.read_text())["outputs"]]
    assert "probe batch=6: y vs 3 runs of batch=2" in names
    assert json.loads(report.read_text())["sizes"] == ["batch=2 (traced)"]
    assert main(["verify", str(a), str(broken), "--device", "cpu"]) == 1  # before: "ok"
    assert "probe batch consistency (batch)" in capsys.readouterr().out


def test_verify_honours_dims(tmp_path: Path) -> None:
    model = parser.parse_model(RESHAPE.format(b="batch", shape=-1))
    onnx.save(model, str(tmp_path / "m.onnx"))
    report = tmp_path / "r.json"
    assert (
        main(
            [
                "verify",
                str(tmp_path / "m.onnx"),
                str(tmp_path / "m.onnx"),
                "--device",
                "cpu",
                "--dims",
                "batch=5",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    data = json.loads(report.read_text())
    assert data["sizes"] == ["batch=5 (verify.dims)"] and data["outputs"][0]["shape"] == [5, 3]


CROP = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,1,4,4] x) => (float[1,1,8,8] y)
  <float[4] sc = {{1.0, 1.0, 2.0, 2.0}}, int64[2] st = {{0, 0}}, int64[2] en = {{{ends}}}, int64[2] ax = {{2, 3}}>
{{ u = Resize <mode="nearest"> (x, , sc)  y = Slice (u, st, en, ax) }}"""


def test_resize_probe_fails_when_a_slice_crops_back_to_the_traced_size() -> None:
    from surgeon.passes.promote_resize_scales import PromoteResizeScales

    cropped = parser.parse_model(CROP.format(ends="8, 8"))
    cropped.graph.node[1].name = "/Slice"
    res = Pipeline([PromoteResizeScales(input="factor", form="factor", crops="keep")], verify={"device": "cpu"}).run(
        cropped
    )
    assert not res.ok  # before: ok (shape inference of the edited graph crops too)
    fail = next(f for f in res.failures() if "probe" in f)
    assert "expected (1, 1, 12, 12)" in fail and "Slice '/Slice' (ends [8, 8])" in fail, fail
    open_ended = parser.parse_model(CROP.format(ends="9223372036854775807, 9223372036854775807"))
    res = Pipeline([PromoteResizeScales(input="factor", form="factor")], verify={"device": "cpu"}).run(open_ended)
    assert res.ok, res.failures()
    assert [o.verdict for o in res.steps[0].check.outputs if o.name.startswith("probe")] == ["ok"]
    res = Pipeline([PromoteResizeScales(input="factor", form="factor")], verify={"device": "cpu"}).run(cropped)
    assert res.ok, res.failures()  # crops: rewrite (the default) opens the crop
    assert res.steps[0].notes[0] == "Slice '/Slice': ends [8, 8] -> [end, end] (the traced size of axis 2, 3, now open)"


def test_a_probe_with_nothing_to_compare_says_so() -> None:
    model = parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[3] y) { y = ReduceSum <keepdims=0> (x, ax) """
        """ax = Constant <value = int64[1] {0}> () }"""
    )
    res = Pipeline([MarkDynamic(inputs={"x": {0: "batch"}})], verify={"device": "cpu"}).run(model)
    probes = [o for o in res.steps[0].check.outputs if o.name.startswith("probe")]
    assert [o.verdict for o in probes] == ["FAIL"] and "no output's size changes with 'batch'" in probes[0].note
    # an axis the recipe asked for that nothing proves fails the step (tests/test_verdicts.py has the key)


# --- a value rule (expectation, feed transform, derived feed) frees neither dtype nor dims ----------


class _ChangeParams(PassParams):
    change: Literal["dims", "dtype"]
    declare: bool = False


class _ReshapeOutput(Pass):
    """A buggy pass: appends an op at output 'a' with the right expectation, but changes what 'a'
    is (dims: a Transpose, dtype: a Cast to double) without declaring it (unless ``declare``)."""

    name = "reshape-output"

    Params = _ChangeParams
    params: _ChangeParams

    def run(self, model: ModelIR) -> PassResult:
        import numpy as np
        import onnx_graphsurgeon as gs

        g, change = model.graph, self.params.change
        old = g.outputs[0]
        old.name = "a_pre"
        if change == "dims":
            new = gs.Variable("a", old.dtype, [3, 2])
            g.nodes.append(gs.Node("Transpose", "t", {"perm": [1, 0]}, [old], [new]))
            contract = IOContract(expectations={"a": lambda outs, feed: outs["a"].T})
        else:
            new = gs.Variable("a", np.dtype("float64"), old.shape)
            g.nodes.append(gs.Node("Cast", "c", {"to": onnx.TensorProto.DOUBLE}, [old], [new]))
            contract = IOContract(expectations={"a": lambda outs, feed: outs["a"].astype(np.float64)})
        g.outputs[0] = new
        if self.params.declare:
            (contract.changed_dims if change == "dims" else contract.changed_types).add("a")
        return PassResult(True, contract)


class _ReshapeInput(Pass):
    """A buggy pass: input 'x' becomes a transposed (dims) or double (dtype) input with the right
    feed transform, without declaring the change (unless ``declare``)."""

    name = "reshape-input"

    Params = _ChangeParams
    params: _ChangeParams

    def run(self, model: ModelIR) -> PassResult:
        import numpy as np
        import onnx_graphsurgeon as gs

        g, change = model.graph, self.params.change
        old = g.inputs[0]
        old.name = "x_inner"
        if change == "dims":
            new = gs.Variable("x", old.dtype, [3, 2])
            g.nodes.insert(0, gs.Node("Transpose", "t", {"perm": [1, 0]}, [new], [old]))
            contract = IOContract(feed_transforms={"x": lambda feed: np.ascontiguousarray(feed["x"].T)})
        else:
            new = gs.Variable("x", np.dtype("float64"), old.shape)
            g.nodes.insert(0, gs.Node("Cast", "c", {"to": onnx.TensorProto.FLOAT}, [new], [old]))
            contract = IOContract(feed_transforms={"x": lambda feed: feed["x"].astype(np.float64)})
        g.inputs[0] = new
        if self.params.declare:
            (contract.changed_dims if change == "dims" else contract.changed_types).add("x")
        return PassResult(True, contract)


@pytest.mark.parametrize(
    ("step", "port", "what"),
    [
        (_ReshapeOutput, "output 'a'", "axis 0 is 3, was 2 (static -> static)"),
        (_ReshapeInput, "input 'x'", "axis 0 is 3, was 2 (static -> static)"),
    ],
)
def test_an_undeclared_dims_change_fails_even_with_a_value_rule(step: type[Pass], port: str, what: str) -> None:
    res = Pipeline([step(change="dims")], verify={"device": "cpu"}).run(_two())
    assert [c.verdict for c in res.steps[0].check.outputs if not c.name.startswith("interface")] == [
        "ok",
        "ok",
    ]  # values agree
    assert not res.ok and [f for f in res.failures() if port in f and what in f], res.failures()  # before: ok
    res = Pipeline([step(change="dims", declare=True)], verify={"device": "cpu"}).run(_two())
    assert res.ok, res.failures()


@pytest.mark.parametrize(("step", "port"), [(_ReshapeOutput, "output 'a'"), (_ReshapeInput, "input 'x'")])
def test_an_undeclared_dtype_change_fails_even_with_a_value_rule(step: type[Pass], port: str) -> None:
    res = Pipeline([step(change="dtype")], verify={"device": "cpu"}).run(_two())
    assert not res.ok and [f for f in res.failures() if port in f and "dtype float64 != float32 before" in f], (
        res.failures()
    )  # before: ok
    res = Pipeline([step(change="dtype", declare=True)], verify={"device": "cpu"}).run(_two())
    assert res.ok, res.failures()


def test_check_interface_value_rules_free_nothing() -> None:
    before = _two()
    after = _two("double[3,2] a, float[2,3] b")
    keep = lambda outs, feed: outs["a"]  # noqa: E731
    notes = [o.note for o in check_interface(before, after, [IOContract(expectations={"a": keep})])]
    assert (
        len(notes) == 2
        and notes[0].startswith("dtype float64 != float32")
        and notes[1].startswith("axis 0 is 3, was 2")
    )
    only_types = IOContract(expectations={"a": keep}, changed_types={"a"})
    assert [o.note.split(";")[0] for o in check_interface(before, after, [only_types])] == [
        "axis 0 is 3, was 2 (static -> static)"
    ]
    assert check_interface(before, after, [IOContract(changed_types={"a"}, changed_dims={"a"})]) == []
    x_in = parser.parse_model(TWO_OUT.format(outs="float[2,3] a, float[2,3] b").replace("float[2,3] x", "uint8[2,3] x"))
    derived = IOContract(derived_inputs={"x": lambda feed: feed["x"]})
    assert [o.name for o in check_interface(before, x_in, [derived])] == ["interface: input 'x'"]
    derived.changed_types.add("x")
    assert check_interface(before, x_in, [derived]) == []
