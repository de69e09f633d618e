"""Verdicts you can bet on (issue 17): half-precision outputs at a tolerance sized for their
precision, Resize sizes by the op's own rule, probes that prove nothing never shown as ok."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon import Pipeline
from surgeon.cli import main
from surgeon.pass_api import Pass, PassResult
from surgeon.passes.convert_opset import ConvertOpset
from surgeon.passes.mark_dynamic import MarkDynamic
from surgeon.passes.promote_resize_scales import PromoteResizeScales
from surgeon.passes.simplify import Simplify
from surgeon.pipeline import Step
from surgeon.verify.compare import Tolerance, Verdict, compare
from surgeon.verify.config import StepVerify

CPU = {"device": "cpu"}


# --- float16 / bfloat16 outputs: a tolerance sized for their precision ----------------------------


def _conv_bn(dtype: int) -> onnx.ModelProto:
    """Conv + BatchNormalization, all in ``dtype``: simplify fuses the BatchNormalization into the
    Conv, which in float16 moves one rounding step (as onnx-simplifier does for every user)."""
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    rng = np.random.default_rng(0)
    c = 8
    inits = [
        numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np_type), "w"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np_type), "b"),
        numpy_helper.from_array((rng.random(c) + 0.5).astype(np_type), "scale"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np_type), "bias"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np_type), "mean"),
        numpy_helper.from_array((rng.random(c) + 0.5).astype(np_type), "var"),
    ]
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"]),
        ],
        "conv_bn",
        [helper.make_tensor_value_info("x", dtype, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", dtype, [1, c, 16, 16])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_a_float16_model_simplified_passes_at_a_tolerance_sized_for_float16() -> None:
    res = Pipeline([Simplify()], verify=CPU).run(_conv_bn(TensorProto.FLOAT16).SerializeToString())
    assert [n.op_type for n in res.model.proto.graph.node] == ["Conv"]  # the BatchNormalization was fused
    y = res.steps[0].check.outputs[0]
    assert res.ok, res.failures()  # before: max rel 0.7 > rtol 1e-4 (one rounding step near zero)
    assert y.max_abs > 0 and y.rtol == 1e-3 and y.tolerance.startswith("float16 output: rtol 0.001")
    assert y.as_dict()["tolerance"] == y.tolerance  # the report carries why


def test_a_float32_output_keeps_the_float32_tolerance() -> None:
    res = Pipeline([Simplify()], verify=CPU).run(_conv_bn(TensorProto.FLOAT).SerializeToString())
    y = res.steps[0].check.outputs[0]
    assert res.ok and (y.rtol, y.atol, y.tolerance) == (1e-4, 1e-5, "")
    wide = np.linspace(-8, 8, 101, dtype=np.float32)
    assert not compare("y", wide, wide + np.float32(1e-3), Tolerance(1e-4, 1e-5)).ok  # no float16 sizing


@pytest.mark.parametrize(
    "how",
    [
        {"verify": {"device": "cpu", "rtol": 1e-4}},  # the recipe's verify.rtol
        {"step": StepVerify(rtol=1e-4)},  # the step's verify:
        {"override": {"rtol": 1e-4}},  # the command line's --rtol
    ],
)
def test_a_tolerance_the_user_set_wins_over_the_float16_sizing(how: dict[str, Any]) -> None:
    p = Pipeline([Step(Simplify(), verify=how.get("step"))], verify=how.get("verify", CPU))
    p.tolerance_override = how.get("override", {})
    res = p.run(_conv_bn(TensorProto.FLOAT16).SerializeToString())
    y = res.steps[0].check.outputs[0]
    assert not res.ok and y.rtol == 1e-4 and y.tolerance == ""


def test_verify_cli_says_which_tolerance_a_float16_output_got(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(_conv_bn(TensorProto.FLOAT16), str(a))
    onnx.save(Pipeline([Simplify()], verify={"mode": "off"}).run(str(a)).model.proto, str(b))
    assert main(["verify", str(a), str(b), "--device", "cpu"]) == 0
    assert "(float16 output: rtol 0.001, atol 0.001 x max |expected|)" in capsys.readouterr().out
    assert main(["verify", str(a), str(b), "--device", "cpu", "--rtol", "1e-4"]) == 1  # the user's wins


# --- promote-resize-scales: sizes by the Resize rule, not the floored traced size ----------------


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_non_integer_traced_factor_probes_the_size_resize_gives(tmp_path: Path, exporter: str) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.up = nn.Upsample(scale_factor=1.5, mode="nearest")

        def forward(self, x: Any) -> Any:
            return self.up(self.conv(x))

    path = tmp_path / "up.onnx"
    x = torch.randn(1, 3, 31, 31)
    torch.onnx.export(Up().eval(), (x,), str(path), dynamo=exporter == "dynamo", input_names=["x"], output_names=["y"])
    res = Pipeline([PromoteResizeScales(input="factor", form="factor")], verify=CPU).run(str(path))
    probe = next(o for o in res.steps[0].check.outputs if o.name.startswith("probe factor=2.0: "))
    assert res.ok, res.failures()  # before: "expected (1, 3, 61, 61)": 46 * 2 / 1.5 floored
    assert probe.verdict == "ok" and probe.shape == (1, 3, 62, 62)
    with torch.no_grad():  # torch agrees: floor(31 * 2)
        assert tuple(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest").shape) == (1, 3, 62, 62)


def test_a_resize_probe_still_fails_a_crop_to_the_traced_size() -> None:
    """The rule sizes the Resize's own output; a Slice that crops it back is still caught."""
    from onnx import parser

    from tests.test_interface import CROP

    cropped = parser.parse_model(CROP.format(ends="8, 8"))
    res = Pipeline([PromoteResizeScales(input="factor", form="factor", crops="keep")], verify=CPU).run(cropped)
    assert not res.ok and any("expected (1, 1, 12, 12)" in f for f in res.failures())


# --- probes that prove nothing ----------------------------------------------------------------


def _trap(tmp_path: Path) -> Path:
    """The tutorial's trap: an in-place op on a shape value; torch gives 2 * batch rows, the
    TorchScript export freezes the half it computed from the shape (batch + 1 rows)."""
    torch = pytest.importorskip("torch")
    from torch import nn

    class Trap(nn.Module):
        def forward(self, x: Any) -> Any:
            b = x.shape[0]
            rows = b
            rows += b  # in place: in the trace, b is doubled too
            return torch.cat([x, x.new_zeros(rows // 2, x.shape[1])]) + 1

    path = tmp_path / "trap.onnx"
    torch.onnx.export(Trap().eval(), (torch.randn(1, 4),), str(path), dynamo=False, input_names=["x"])
    assert tuple(Trap()(torch.randn(3, 4)).shape) == (6, 4)
    return path


def test_the_batch_probe_compares_every_output_that_grows_with_the_batch(tmp_path: Path) -> None:
    path = _trap(tmp_path)
    name = onnx.load(str(path)).graph.output[0].name
    res = Pipeline([MarkDynamic(inputs={"x": {0: "batch"}})], verify=CPU).run(str(path))
    sess = ort.InferenceSession(res.model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.ones((3, 4), np.float32)})[0].shape == (4, 4)  # torch: 6 rows
    assert not res.ok  # before: ok, "proved nothing" hidden on the default lines
    probe = next(o for o in res.steps[0].check.outputs if o.kind == "probe")
    assert probe.verdict == "FAIL" and f"{name} vs 3 runs of batch=1" in probe.name
    assert "shape (4, 4) != expected (6, 4)" in probe.note and "axis 0 grows with 'batch'" in probe.note


def _reduce() -> onnx.ModelProto:
    from onnx import parser

    return parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[3] y) { y = ReduceSum <keepdims=0> (x, ax) """
        """ax = Constant <value = int64[1] {0}> () }"""
    )


def test_a_probe_that_proves_nothing_on_an_asked_axis_fails_unless_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    res = Pipeline([MarkDynamic(inputs={"x": {0: "batch"}})], verify=CPU).run(_reduce())
    probe = next(o for o in res.steps[0].check.outputs if o.kind == "probe")
    assert not res.ok and probe.verdict == "FAIL"
    assert "no output's size changes with 'batch'" in probe.note and "accept_unproved" in probe.note
    accepted = Pipeline(
        [Step(MarkDynamic(inputs={"x": {0: "batch"}}), verify=StepVerify(accept_unproved=["batch"]))], verify=CPU
    ).run(_reduce())
    probe = next(o for o in accepted.steps[0].check.outputs if o.kind == "probe")
    assert accepted.ok and probe.verdict is Verdict.PROVED_NOTHING
    other = Step(MarkDynamic(inputs={"x": {0: "batch"}}), verify=StepVerify(accept_unproved=["seq"]))
    assert not Pipeline([other], verify=CPU).run(_reduce()).ok  # another symbol accepted: not this one
    # the default output shows it, never as ok
    onnx.save(_reduce(), str(tmp_path / "r.onnx"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: r.onnx\noutput: out.onnx\nverify: {device: cpu}\npasses:\n"
        "  - mark-dynamic: {inputs: {x: {0: batch}}}\n    verify: {accept_unproved: true}\n"
    )
    assert main(["apply", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "proved nothing" in out and "ok, 1 proved nothing" in out
    assert "[1/1] mark-dynamic" in out and "  ok\n" not in out.split("[1/1]")[1].splitlines()[0] + "\n"


def test_render_never_colours_proved_nothing_as_ok() -> None:
    from rich.console import Console

    from surgeon.cli.render import show_outputs, step_verdict
    from surgeon.verify.compare import CheckKind, OutputCheck, StepCheck

    check = StepCheck(
        [OutputCheck("probe b", True, Verdict.PROVED_NOTHING, kind=CheckKind.PROBE), OutputCheck("y", True, "ok")]
    )
    console = Console(record=True, width=200, force_terminal=True)
    show_outputs(console, check, only_failures=True)
    text = console.export_text(styles=True)
    assert "probe b" in text and "y:" not in text  # shown on the default lines; the plain ok is not
    assert "\x1b[33mproved nothing" in text  # yellow, not green
    assert "[green]" not in step_verdict("ok", check) and "proved nothing" in step_verdict("ok", check)


# --- a failure in an edited model names that model -----------------------------------------------

RESHAPE = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2,6] x) => (float[3,4] y) <int64[2] s = {3, 4}> { r = Relu (x)  y = Reshape (r, s) }"""


class _BreakReshape(Pass):  # type: ignore[type-arg]
    """Gives the Reshape a shape the data never fits: the model loads and fails when it runs."""

    name = "break-reshape"

    def run(self, model: Any) -> PassResult:
        import onnx_graphsurgeon as gs

        node = next(n for n in model.graph.nodes if n.op == "Reshape")
        node.inputs[1] = gs.Constant("bad_shape", np.array([5, 7], dtype=np.int64))
        return PassResult(True)


class _LooseBatch(Pass):  # type: ignore[type-arg]
    """Marks the batch dynamic without touching the Reshape that hard-codes it, and asks for the
    batch probe: the model runs at the traced batch only."""

    name = "loose-batch"

    def run(self, model: Any) -> PassResult:
        from surgeon.verify.contract import IOContract
        from surgeon.verify.probes import BatchProbe

        x = model.graph.inputs[0]
        x.shape = ["batch", *x.shape[1:]]
        probe = BatchProbe("batch", {"x": {0: "batch"}}, {}, {"batch": 2})
        return PassResult(True, IOContract(probes=[probe], changed_axes={"x": {0}}, traced_dims={"batch": 2}))


def test_a_run_failure_of_an_edited_model_names_the_model_after_its_step() -> None:
    from onnx import parser

    from surgeon.errors import VerificationError
    from surgeon.passes.rename_io import RenameIO

    with pytest.raises(VerificationError) as info:
        Pipeline([RenameIO(inputs={"x": "img"}), _BreakReshape()], verify=CPU).run(parser.parse_model(RESHAPE))
    assert str(info.value).startswith(
        "the model after passes[1] (break-reshape) fails: onnxruntime failed to run the model: "
    )  # before: "onnxruntime failed to run the model: ..." (which one?)


def test_a_probe_failure_names_the_model_after_its_step() -> None:
    from onnx import parser

    res = Pipeline([_LooseBatch()], verify=CPU).run(parser.parse_model(RESHAPE))
    probe = next(o for o in res.steps[0].check.outputs if o.kind == "probe")
    assert not res.ok and probe.verdict == "FAIL"
    assert probe.note.startswith(
        "the model after passes[0] (loose-batch) (at the probe's inputs: x [6, 6]; x [2, 6]) fails: "
        "onnxruntime failed to run the model"
    ), probe.note


def test_localization_names_the_model_that_fails() -> None:
    from onnx import parser

    from surgeon.ir.model import load
    from surgeon.verify.localize import localize
    from surgeon.verify.runtime import Runtime

    good = load(parser.parse_model(RESHAPE).SerializeToString())
    bad = Pipeline([_BreakReshape()], verify={"mode": "off"}).run(parser.parse_model(RESHAPE)).model
    feed = {"x": np.ones((2, 6), np.float32)}
    div = localize(
        Runtime("cpu"),
        good,
        feed,
        bad,
        feed,
        Tolerance(1e-4, 1e-5),
        names=("the source", "the model after passes[0] (b)"),
    )
    assert div.line().startswith(
        "could not localize: the model after passes[0] (b) with its tensors exposed fails: onnxruntime failed"
    ), div.line()


# --- before writing: the model once at onnxruntime's default optimization level, in a child -------


def test_the_written_model_ran_in_the_runtimes_default_session(tmp_path: Path) -> None:
    from onnx import parser

    from surgeon.passes.rename_io import RenameIO

    out = tmp_path / "out.onnx"
    res = Pipeline([RenameIO(inputs={"x": "img"})], verify=CPU).apply(parser.parse_model(RESHAPE), out)
    assert res.default_session == "ran" and res.as_dict()["default_session"] == "ran" and out.exists()
    off = Pipeline([RenameIO(inputs={"x": "img"})], verify={"mode": "off"}).apply(
        parser.parse_model(RESHAPE), tmp_path / "off.onnx"
    )
    assert off.default_session == "skipped (verify.mode: off)"
    on_disk = tmp_path / "m.onnx"  # a source on disk and only proved steps: no session at all
    onnx.save(parser.parse_model(RESHAPE), str(on_disk))
    proved = Pipeline([RenameIO(inputs={"x": "img"})], verify=CPU).apply(on_disk, tmp_path / "proved.onnx")
    assert proved.default_session.startswith("skipped (every step was proved structurally"), proved.default_session
    assert proved.steps[0].check is not None and proved.steps[0].check.outputs[0].verdict.value == "proved (structural)"


def test_a_model_that_crashes_the_default_session_fails_the_last_step_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The child really dies of SIGSEGV (as onnxruntime's default session did on a to-fp16 GRU
    model): the parent says so, names the step, and writes nothing."""
    from surgeon.verify import runtime

    onnx.save(_conv_bn(TensorProto.FLOAT), str(tmp_path / "m.onnx"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: m.onnx\noutput: out.onnx\nverify: {device: cpu}\npasses:\n"
        "  - rename-io: {inputs: {x: image}}\n  - simplify: {}\n"
    )
    monkeypatch.setattr(runtime, "DEFAULT_LEVEL_CHILD", "import ctypes; ctypes.string_at(0)")
    assert main(["apply", str(recipe)]) == 1
    err = capsys.readouterr().err
    print(err)
    assert (
        "the model after recipe.yaml" not in err
        and "(simplify) fails in onnxruntime's default session (ORT_ENABLE_ALL, run once in a child process): "
        "crashed (SIGSEGV)"
        in err
    ), err
    assert not (tmp_path / "out.onnx").exists()
    assert main(["apply", str(recipe), "--force"]) == 1 and (tmp_path / "out.onnx").exists()  # --force writes it


def test_the_child_says_why_the_default_session_refuses_a_model() -> None:
    """The real child: a model its default session cannot load comes back as one line."""
    from onnx import parser

    from surgeon.ir.model import load
    from surgeon.verify.runtime import Runtime, default_level_problem

    model = load(
        parser.parse_model(
            """<ir_version: 10, opset_import: ["" : 17]>
            g (float[2] x) => (float[2] y) { y = NoSuchOp (x) }"""
        ).SerializeToString()
    )
    problem = default_level_problem(Runtime("cpu"), model, {"x": np.ones(2, np.float32)})
    assert problem.startswith("onnxruntime cannot load it: ") and "NoSuchOp" in problem


# --- an output symbol only the exporter named, made static at the size the model always gives -----

CONCAT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[{n},4] x) => (float[{n},Concathidden_out_dim_1] y) {{ y = Concat <axis=1> (x, x) }}"""


@pytest.mark.parametrize(
    ("n", "step"),
    [("N", lambda: ConvertOpset(opset=18)), ("2", lambda: MarkDynamic(inputs={"x": {0: "batch"}}))],
    ids=["convert-opset", "mark-dynamic"],
)
def test_an_exporter_output_symbol_made_static_at_the_size_it_always_has_passes(n: str, step: Any) -> None:
    from onnx import parser

    res = Pipeline([step()], verify=CPU).run(parser.parse_model(CONCAT.format(n=n)))
    assert res.model.proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 8  # re-inferred
    assert res.ok, res.failures()  # before: "axis 1 is 8, was 'Concathidden_out_dim_1' (symbolic -> static)"
    line = next(o for o in res.steps[0].check.outputs if o.name == "interface: output 'y' axis 1")
    assert line.verdict == "ok" and "the model gives 8 at every size run (2)" in line.note


class _PinRows(Pass):  # type: ignore[type-arg]
    """Declares the output's exporter-named first axis static at the size it has at N=1: wrong,
    it is 2 * N."""

    name = "pin-rows"

    def run(self, model: Any) -> PassResult:
        y = model.graph.outputs[0]
        y.shape = [2, *y.shape[1:]]
        return PassResult(True)


def test_an_exporter_output_symbol_made_static_where_the_size_varies_fails() -> None:
    from onnx import parser

    model = parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[Concaty_dim_0,4] y) { y = Concat <axis=0> (x, x) }"""
    )
    res = Pipeline([_PinRows()], verify=CPU).run(model)
    line = next(o for o in res.steps[0].check.outputs if o.name.startswith("interface: output 'y' axis 0"))
    assert not res.ok and line.verdict == "FAIL" and "but the model gives 2, 6 (symbolic -> static)" in line.note


def test_a_symbol_an_input_shares_or_a_step_named_made_static_still_fails() -> None:
    from onnx import parser

    shared = parser.parse_model(CONCAT.format(n="N"))
    res = Pipeline([ConvertOpset(opset=18), _PinN()], verify=CPU).run(shared)
    assert not res.ok and any("axis 0 is 1, was 'N' (symbolic -> static)" in f for f in res.failures())
    named = parser.parse_model(CONCAT.format(n="2"))
    steps = [MarkDynamic(inputs={"x": {0: "batch"}}, outputs={"y": {1: "hidden"}}), ConvertOpset(opset=18)]
    res = Pipeline(steps, verify=CPU).run(named)
    assert res.model.proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 8
    assert not res.ok and any("was 'hidden'" in f and "symbolic -> static" in f for f in res.failures())


class _PinN(Pass):  # type: ignore[type-arg]
    """Makes the output's batch axis (the input's symbol N) static, undeclared."""

    name = "pin-n"

    def run(self, model: Any) -> PassResult:
        y = model.graph.outputs[0]
        y.shape = [1, *y.shape[1:]]
        return PassResult(True)


def test_a_bfloat16_output_is_verified_at_a_tolerance_sized_for_bfloat16() -> None:
    """onnxruntime's Python API has no numpy type for bfloat16: the output is read through a
    float32 Cast (exact) and compared as bfloat16 (before: "the source model fails on the generated
    inputs ... No corresponding Numpy type", a ModelError for a model that runs)."""
    import ml_dtypes
    from onnx import helper

    from surgeon.passes.rename_io import RenameIO

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["m"]), helper.make_node("Cast", ["m"], ["y"], to=TensorProto.BFLOAT16)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [4])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [3.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    res = Pipeline([RenameIO(inputs={"x": "inp"})], verify={**CPU, "prove": False}).run(model.SerializeToString())
    assert res.ok, res.failures()
    [y] = res.steps[0].check.outputs
    assert y.name == "y" and y.rtol == 1e-2 and y.tolerance.startswith("bfloat16 output: rtol 0.01")
    assert [o.name for o in res.model.proto.graph.output] == ["y"]  # the Cast was for the run only
    # one bfloat16 rounding step (2**-8 of the value) passes at that size, a 5% error does not
    want = np.linspace(1, 2, 9).astype(ml_dtypes.bfloat16)
    step = (want.astype(np.float32) * (1 + 2**-8)).astype(ml_dtypes.bfloat16)
    assert compare("y", want, step, Tolerance(1e-4, 1e-5)).ok
    assert not compare("y", want, (want.astype(np.float32) * 1.05).astype(ml_dtypes.bfloat16), Tolerance(1e-4, 1e-5)).ok


def test_the_default_session_check_follows_verify_default_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto: graphs over DEFAULT_SESSION_NODES are skipped and the report says why (onnxruntime's
    full optimization took 18 s on a 30 000-node chain and ~8 minutes of a 100 000-node run);
    true runs it anyway; false never."""
    from onnx import parser

    import surgeon.verify.session as session
    from surgeon.passes.rename_io import RenameIO

    def apply(verify: dict[str, Any], name: str) -> str:
        step = RenameIO(inputs={"x": "img"})
        res = Pipeline([step], verify={**CPU, "prove": False, **verify}).apply(
            parser.parse_model(RESHAPE), tmp_path / name
        )
        assert res.ok and (tmp_path / name).exists()
        return res.default_session

    nodes = len(parser.parse_model(RESHAPE).graph.node)
    assert apply({}, "a.onnx") == "ran"
    monkeypatch.setattr(session, "DEFAULT_SESSION_NODES", nodes - 1)
    skipped = apply({}, "b.onnx")
    assert skipped.startswith(f"skipped ({nodes} nodes, over {nodes - 1}") and "default_session: true" in skipped
    assert apply({"default_session": True}, "c.onnx") == "ran"
    assert apply({"default_session": False}, "d.onnx") == "skipped (verify.default_session: false)"
