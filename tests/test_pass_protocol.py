"""The pass protocol in one place (Pass.__call__): preconditions, then the rewrite; errors keep their
class; a plan is computed once; notes live on PassResult; command-line overrides are validated."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import parser

from surgeon import pass_api
from surgeon.cli import main
from surgeon.errors import EXIT_USAGE, PassPreconditionError, UsageError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import Model, load
from surgeon.pass_api import Pass, PassResult, register_pass
from surgeon.passes.fix_dims import FixDims
from surgeon.passes.rename_io import RenameIO
from surgeon.pipeline import Pipeline, Step
from surgeon.verify.compare import Tolerance
from surgeon.verify.config import StepVerify
from surgeon.verify.contract import IOContract

TEXT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }"""


def _model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(parser.parse_model(TEXT), path)
    return path


def test_a_pass_error_keeps_its_class_and_gains_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pass_api, "_REGISTRY", dict(pass_api._REGISTRY))  # the test pass goes with the test

    @register_pass("test-usage-error")
    class _UsageErrorPass(Pass):
        """Raise a usage error (a bad path named in the params, say)."""

        def run(self, model: ModelIR) -> PassResult:
            raise UsageError("labels.txt: no such file")

    with pytest.raises(UsageError) as info:
        Pipeline([_UsageErrorPass()], verify={"mode": "off"}).run(_model(tmp_path))
    assert info.value.exit_code == EXIT_USAGE
    assert str(info.value) == "passes[0] (test-usage-error): labels.txt: no such file"


def test_a_precondition_error_keeps_its_field(tmp_path: Path) -> None:
    with pytest.raises(PassPreconditionError) as info:
        Pipeline([RenameIO(inputs={"nope": "a"})], verify={"mode": "off"}).run(_model(tmp_path))
    assert info.value.field == ("inputs", "nope")
    assert str(info.value).startswith("passes[0] (rename-io): unknown input 'nope'")


def test_the_plan_is_computed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = FixDims.plan

    def counting(self: FixDims, model: ModelIR) -> object:
        calls.append(1)
        return real(self, model)

    monkeypatch.setattr(FixDims, "plan", counting)
    res = Pipeline([FixDims(dims={"N": 2})], verify={"mode": "off"}).run(_model(tmp_path))
    assert res.steps[0].modified and len(calls) == 1
    assert res.steps[0].notes == ["input 'x': [N, 4] -> [2, 4]"]


def test_validate_leaves_the_model_it_is_given_alone(tmp_path: Path) -> None:
    model = load(parser.parse_model(TEXT))
    before = model.proto.SerializeToString()
    pipeline = Pipeline([RenameIO(inputs={"x": "image"}), RenameIO(inputs={"image": "pixels"})])
    assert pipeline.check_requirements(model) == []
    assert model.proto.SerializeToString() == before
    assert isinstance(model, Model) and [i.name for i in model.proto.graph.input] == ["x"]


@pytest.mark.parametrize(("flag", "value"), [("--rtol", "-1"), ("--atol", "-0.5")])
def test_command_line_tolerances_are_validated_like_recipe_values(
    tmp_path: Path, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npasses:\n  - cleanup: {}\n")
    out = tmp_path / "out.onnx"
    assert (
        main(["apply", str(recipe), "-i", str(_model(tmp_path)), "-o", str(out), "--dims", "N=2", flag, value])
        == EXIT_USAGE
    )
    assert f"{flag} {float(value)!r}: input should be greater than or equal to 0" in capsys.readouterr().err
    assert not out.exists()


class _Counted(Pass[list[str]]):
    """Plan: the graph's input names; records every plan made and what requires and run got."""

    def __init__(self) -> None:
        super().__init__()
        self.planned: list[list[str]] = []
        self.required: list[list[str] | None] = []
        self.ran: list[list[str] | None] = []

    def plan(self, model: ModelIR) -> list[str]:
        made = [t.name for t in model.graph.inputs]
        self.planned.append(made)
        return made

    def requires(self, model: ModelIR, plan: list[str] | None = None) -> None:
        self.required.append(plan)

    def run(self, model: ModelIR, plan: list[str] | None = None) -> PassResult:
        self.ran.append(plan)
        return PassResult(False, notes=[",".join(self.plan_of(model, plan))])


def _ir(inputs: str = "x") -> ModelIR:
    return ModelIR.from_model(load(parser.parse_model(TEXT.replace("x", inputs))))


def test_one_plan_per_call_is_handed_to_requires_and_run() -> None:
    step = _Counted()
    order: list[str] = []
    res = step(_ir(), before_edit=lambda: order.append(f"reference after {len(step.required)} requires"))
    assert len(step.planned) == 1
    assert step.required == step.planned and step.ran == step.planned
    assert step.required[0] is step.planned[0] and step.ran[0] is step.planned[0]  # the same object, not a copy
    assert order == ["reference after 1 requires"] and res.notes == ["x"]


def test_each_model_gets_its_own_plan_and_the_pass_keeps_no_state() -> None:
    step = _Counted()
    before = dict(vars(step))
    for name in ("a", "b", "c"):  # each model dropped after its call: id() may be reused, plans are not
        assert step(_ir(name)).notes == [name]
    assert [p[0] for p in step.planned] == ["a", "b", "c"] and [p[0] for p in step.ran] == ["a", "b", "c"]
    assert set(vars(step)) == set(before)  # no cache left on the instance
    fixed = FixDims(dims={"N": 2})
    for size in (3, 5):  # the same instance on two models: each planned from its own graph
        ir = _ir()
        ir.graph.inputs[0].shape = ["N", size]
        fixed(ir)
        assert list(ir.graph.inputs[0].shape) == [2, size]
    assert set(vars(fixed)) == {"params"}


def test_a_direct_run_without_a_plan_makes_its_own() -> None:
    step = _Counted()
    assert step.run(_ir("q")).notes == ["q"] and step.ran == [None] and len(step.planned) == 1
    ir = _ir()
    ir.graph.inputs[0].shape = ["N", 4]
    assert FixDims(dims={"N": 2}).run(ir).modified and list(ir.graph.inputs[0].shape) == [2, 4]


def test_a_pass_with_the_older_signature_still_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pass_api, "_REGISTRY", dict(pass_api._REGISTRY))
    seen: list[str] = []

    @register_pass("test-legacy")
    class _Legacy(Pass):
        """A third-party pass written before plans were handed over: requires(model), run(model)."""

        def requires(self, model):  # type: ignore[no-untyped-def]
            seen.append("requires")

        def run(self, model):  # type: ignore[no-untyped-def]
            seen.append("run")
            model.graph.outputs[0].name = "out"
            return PassResult(True, IOContract(renamed_outputs={"y": "out"}))

    res = Pipeline([_Legacy()], verify={"device": "cpu", "dims": {"N": 2}}).run(_model(tmp_path))
    assert res.ok, res.failures()
    assert seen == ["requires", "run"] and res.steps[0].modified
    assert [o.name for o in res.model.proto.graph.output] == ["out"]


def test_a_pass_default_tolerance_comes_through_one_channel() -> None:
    from surgeon.passes.append_op import AppendOp
    from surgeon.passes.cleanup import Cleanup
    from surgeon.passes.to_fp16 import ToFP16

    fp16 = ToFP16()
    fp16(_ir())
    assert fp16.default_tolerance(_ir()) == ToFP16.tolerance == Tolerance(1e-2, 1e-2)
    assert not hasattr(IOContract(), "tolerance")  # the contract is not a second channel
    assert Cleanup().default_tolerance(_ir()) is None
    for dtype, tol in (("float", Tolerance(1e-5, 1e-6)), ("double", Tolerance(1e-12, 1e-12))):
        ir = ModelIR.from_model(load(parser.parse_model(TEXT.replace("float", dtype))))
        step = AppendOp(output="y", op="Softmax")
        step(ir)
        assert step.default_tolerance(ir) == tol  # follows the output's dtype
    assert AppendOp(output="y", op="Clip", min=0.0).default_tolerance(_ir()) is None  # exact ops: none


class _Leaky(Pass):
    """Relu -> LeakyRelu(0.01): outputs differ by up to 0.01 (inputs are in [-1, 1))."""

    def run(self, model: ModelIR) -> PassResult:
        node = model.graph.nodes[0]
        node.op, node.attrs = "LeakyRelu", {"alpha": 0.01}
        return PassResult(True)


class _LeakyWithDefault(_Leaky):
    def default_tolerance(self, model: ModelIR) -> Tolerance | None:
        return Tolerance(0.0, 0.02)


def test_the_pipeline_applies_the_pass_default_unless_the_step_sets_one(tmp_path: Path) -> None:
    cfg = {"device": "cpu", "dims": {"N": 8}}
    assert not Pipeline([_Leaky()], verify=cfg).run(_model(tmp_path)).ok  # no default: the pipeline's 1e-5
    assert Pipeline([_LeakyWithDefault()], verify=cfg).run(_model(tmp_path)).ok
    step = Step(_LeakyWithDefault(), verify=StepVerify(atol=1e-6))
    assert not Pipeline([step], verify=cfg).run(_model(tmp_path)).ok  # the step's own tolerance wins


def test_a_session_load_error_in_a_pass_keeps_its_class_fields_and_exit_code() -> None:
    """A pass that runs onnxruntime (to-fp16's budget search) and gets a model it cannot load: the
    error is re-worded with the pass's name, not turned into a TypeError (an exit-4 traceback)."""
    from pathlib import Path

    from surgeon.pass_api import with_message
    from surgeon.verify.runtime import SessionLoadError

    exc = SessionLoadError(Path("m.onnx"), "opset 99 is newer than this onnxruntime supports")
    new = with_message(exc, f"to-fp16: {exc}")
    assert type(new) is SessionLoadError and new.reason == exc.reason and new.path == Path("m.onnx")
    assert (
        str(new)
        == "to-fp16: m.onnx: onnxruntime cannot load the model: opset 99 is newer than this onnxruntime supports"
    )
    assert new.exit_code == exc.exit_code and str(exc).startswith("m.onnx:")  # the original is left as it was
