"""Verification as a session: the reference run (start), the check of each step (after_step) and
the end-of-pipeline check (finish); check kinds; verdicts as an enum that reads and serializes as
the strings it always was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from surgeon import Pipeline
from surgeon.errors import ModelError, UsageError, VerificationError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import load
from surgeon.pass_api import Pass, PassResult
from surgeon.passes.mark_dynamic import MarkDynamic
from surgeon.passes.rename_io import RenameIO
from surgeon.pipeline import Step
from surgeon.verify.compare import CheckKind, OutputCheck, Tolerance, Verdict
from surgeon.verify.config import StepVerify, VerifyConfig
from surgeon.verify.contract import IOContract, ProbeEnv
from surgeon.verify.probes import BatchProbe, probe_dynamic_axes
from surgeon.verify.runtime import SessionLoadError
from surgeon.verify.session import VerificationSession
from surgeon.verify.verifier import Verifier

CPU = {"device": "cpu", "prove": False}  # these tests are about runs: no structural proofs


def _chain(op: str = "Relu", out: str = "y", domain: str = "") -> onnx.ModelProto:
    """x[2,8] -> op -> Mul 2 -> Add 1 -> Identity -> ``out``, nodes named /relu, /mul, /add, /out."""
    nodes = [
        helper.make_node(op, ["x"], ["r"], name="/relu", domain=domain),
        helper.make_node("Mul", ["r", "two"], ["m"], name="/mul"),
        helper.make_node("Add", ["m", "one"], ["a"], name="/add"),
        helper.make_node("Identity", ["a"], [out], name="/out"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, 8])],
        [
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


class _MulToAdd(RenameIO):
    """Renames as asked, and turns the Mul into an Add (a buggy pass: the first wrong tensor is 'm')."""

    def run(self, ir: ModelIR) -> PassResult:
        res = super().run(ir)
        next(n for n in ir.graph.nodes if n.name == "/mul").op = "Add"
        return res


class _Symbolic(RenameIO):
    """Renames as asked, and makes the input's static batch axis symbolic without declaring it."""

    def run(self, ir: ModelIR) -> PassResult:
        res = super().run(ir)
        ir.graph.inputs[0].shape = ["n", 8]
        return res


class _Noop(Pass):
    """Changes nothing."""

    name = "noop"

    def run(self, model: ModelIR) -> PassResult:
        return PassResult(False)


class _BreakOp(Pass):
    """Turns the first node into an op onnxruntime does not know."""

    name = "break-op"

    def run(self, model: ModelIR) -> PassResult:
        model.graph.nodes[0].op = "NoSuchOp"
        return PassResult(True)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many contracts each ``Verifier.check`` call covered, in order."""
    calls: list[int] = []
    real = Verifier.check

    def spy(self: Verifier, candidate: Any, contracts: Any, tol: Tolerance, *rest: Any) -> Any:
        calls.append(len(contracts))
        return real(self, candidate, contracts, tol, *rest)

    monkeypatch.setattr(Verifier, "check", spy)
    return calls


# --- the three calls ---------------------------------------------------------------------------


def test_the_three_calls_by_hand() -> None:
    source = load(_chain())
    session = VerificationSession(source, VerifyConfig(**CPU))
    assert session.verifier is None and session.device == "" and session.sizes == []
    session.start()
    verifier = session.verifier
    assert verifier is not None and session.device.startswith("CPU")
    session.start()  # the reference runs once: later calls keep the same verifier
    assert session.verifier is verifier

    ir = ModelIR.from_model(source)
    first = RenameIO(outputs={"y": "out"})(ir)
    made: list[Any] = []

    def candidate() -> Any:
        made.append(ir.to_model())
        return made[-1]

    check = session.after_step(first.contract, first.modified, candidate, who="passes[0] (rename-io)")
    assert check is not None and check.ok and [(o.name, o.kind) for o in check.outputs] == [("out", CheckKind.OUTPUT)]
    assert session.good == (made[0], 1) and session.checked is made[0] and not session.unverified

    # a step that changed nothing is not checked and builds no model
    same = session.after_step(IOContract(), False, candidate, who="passes[1] (noop)")
    assert same is None and len(made) == 1 and session.checked is None and not session.unverified

    final, end = session.finish(ir.to_model)
    assert end is None and final is not made[0]  # the last step was not checked: the model as it is now
    assert len(session.contracts) == 2 and session.contracts[0] is first.contract


def test_a_skipped_step_is_covered_by_the_next_check_or_by_finish(checks: list[int]) -> None:
    steps = [Step(RenameIO(inputs={"x": "inp"}), verify=StepVerify(skip=True)), Step(RenameIO(outputs={"y": "out"}))]
    res = Pipeline(steps, verify=CPU).run(_chain())
    assert [s.verdict for s in res.steps] == ["not verified", "ok"] and res.final_check is None
    assert checks == [2]  # one check, after step 2, through both contracts

    checks.clear()
    steps = [Step(RenameIO(inputs={"x": "inp"})), Step(RenameIO(outputs={"y": "out"}), verify=StepVerify(skip=True))]
    res = Pipeline(steps, verify=CPU).run(_chain())
    assert [s.verdict for s in res.steps] == ["ok", "not verified"]
    assert res.final_check is not None and res.final_check.ok and checks == [1, 2]  # finish covers step 2
    assert [o.name for o in res.final_check.outputs] == ["out"]


def test_mode_each_checks_every_modifying_step_end_checks_once_off_never(checks: list[int]) -> None:
    steps = [RenameIO(inputs={"x": "inp"}), _Noop(), RenameIO(outputs={"y": "out"})]
    each = Pipeline(steps, verify=CPU).run(_chain())
    assert checks == [1, 3] and [s.verdict for s in each.steps] == ["ok", "unchanged", "ok"]
    assert each.final_check is None and each.ok and each.device.startswith("CPU")

    checks.clear()
    end = Pipeline(steps, verify={**CPU, "mode": "end"}).run(_chain())
    assert checks == [3] and [s.verdict for s in end.steps] == ["not verified", "unchanged", "not verified"]
    assert end.final_check is not None and end.final_check.ok and [o.name for o in end.final_check.outputs] == ["out"]

    checks.clear()
    off = Pipeline(steps, verify={"mode": "off"}).run(_chain())
    assert checks == [] and off.final_check is None and (off.device, off.sizes, off.values) == ("", [], [])


def test_a_failing_step_is_localized_from_the_last_model_that_passed() -> None:
    steps = [RenameIO(outputs={"y": "out"}), _MulToAdd(inputs={"x": "inp"})]
    res = Pipeline(steps, verify=CPU).run(_chain())
    assert res.steps[0].check.ok and not res.steps[1].check.ok and not res.ok
    d = res.steps[1].check.divergence
    assert d is not None and (d.tensor, d.node, d.op) == ("m", "/mul", "Add")
    assert res.failures()[0].startswith("passes[1] (rename-io): output 'out': max abs error")

    end = Pipeline(steps, verify={**CPU, "mode": "end"}).run(_chain())
    assert not end.ok and end.final_check.divergence is not None and end.final_check.divergence.node == "/mul"
    assert any(f.startswith("end of pipeline: output 'out'") for f in end.failures())


def test_the_source_onnxruntime_refuses_is_a_model_error_an_edited_one_blames_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = _chain("NoSuchOp", domain="no.such.domain")
    with pytest.raises(ModelError, match=r"the source model fails .*onnxruntime cannot load the model: .*NoSuchOp"):
        Pipeline([RenameIO(outputs={"y": "out"})], verify=CPU).run(bad)

    steps = [RenameIO(inputs={"x": "inp"}), _BreakOp()]
    for mode in ("each", "end"):
        with pytest.raises(
            VerificationError,
            match=r"^the model after passes\[1\] \(break-op\) fails: onnxruntime cannot load the edited",
        ):
            Pipeline(steps, verify={**CPU, "mode": mode}).run(_chain())

    # a load failure of the source during start is the source's, said as it is (no step named)
    def refuses(self: Verifier) -> None:
        raise SessionLoadError(Path("m.onnx"), "no kernel")

    monkeypatch.setattr(Verifier, "reference", refuses)
    source = load(_chain())
    with pytest.raises(ModelError) as info:
        Pipeline(steps, verify=CPU).run(source)
    assert str(info.value) == f"{source.name}: onnxruntime cannot load the model: no kernel"
    assert not isinstance(info.value, VerificationError)


def test_tolerances_per_step_the_user_wins_and_the_loosest_carries() -> None:
    class Loose(RenameIO):
        tolerance = Tolerance(1e-2, 1e-3)

    steps = [Step(Loose(inputs={"x": "inp"})), Step(RenameIO(outputs={"y": "out"}))]
    res = Pipeline(steps, verify=CPU).run(_chain())
    assert [(o.rtol, o.atol) for s in res.steps for o in s.check.outputs] == [(1e-2, 1e-3), (1e-2, 1e-3)]

    steps[1] = Step(RenameIO(outputs={"y": "out"}), verify=StepVerify(rtol=0.0))
    res = Pipeline(steps, verify=CPU).run(_chain())
    later = res.steps[1].check.outputs[0]  # exactly what the user wrote; the pass default is not carried
    assert (later.rtol, later.atol) == (0.0, VerifyConfig().atol)

    pipe = Pipeline(steps, verify=CPU)
    pipe.tolerance_override = {"rtol": 0.5, "atol": 0.25}
    res = pipe.run(_chain())
    assert {(o.rtol, o.atol) for s in res.steps for o in s.check.outputs} == {(0.5, 0.25)}


# --- check kinds -------------------------------------------------------------------------------


def test_an_interface_failure_is_of_kind_interface_and_worded_by_kind() -> None:
    res = Pipeline([_Symbolic(inputs={"x": "inp"})], verify={**CPU, "dims": {"n": 2}}).run(_chain(out="interface_y"))
    kinds = {o.name: (o.kind, o.ok) for o in res.steps[0].check.outputs}
    assert kinds == {
        "interface: input 'inp' (was 'x')": (CheckKind.INTERFACE, False),
        "interface_y": (CheckKind.OUTPUT, True),
    }
    assert res.failures()[0] == (
        "passes[0] (rename-io): interface: input 'inp' (was 'x'): axis 0 is 'n', was 2 (static -> symbolic); "
        "no contract declares it"
    )

    # an output whose name starts like another kind's is still an output: the wording follows the kind
    broken = Pipeline([_MulToAdd(inputs={"x": "inp"})], verify=CPU).run(_chain(out="interface_y"))
    assert broken.failures()[0].startswith("passes[0] (rename-io): output 'interface_y': max abs error")
    assert broken.steps[0].check.outputs[0].as_dict()["kind"] == "output"


def test_probe_checks_are_of_kind_probe() -> None:
    model = _chain()
    res = Pipeline([MarkDynamic(inputs={"x": {0: "batch"}}, outputs={"y": {0: "batch"}})], verify=CPU).run(model)
    assert res.ok, res.failures()
    probes = [o for o in res.steps[0].check.outputs if o.kind is CheckKind.PROBE]
    assert probes and all(o.name.startswith("probe ") for o in probes)
    assert [o.kind for o in res.steps[0].check.outputs if o not in probes] == [CheckKind.OUTPUT]


class _Raises:
    name = "raiser"

    def run(self, env: ProbeEnv) -> list[OutputCheck]:
        raise UsageError(f"cannot size it at step {env.step}")


class _Unlabelled:
    """A probe that forgets to say its checks are probes: they are, since a probe made them."""

    name = "unlabelled"

    def run(self, env: ProbeEnv) -> list[OutputCheck]:
        (out,) = env.run_after([env.make_feed({})])
        return [OutputCheck("probe unlabelled", all(np.isfinite(v).all() for v in out.values()), Verdict.OK)]


class _ProbingRename(RenameIO):
    def run(self, ir: ModelIR) -> PassResult:
        res = super().run(ir)
        res.contract.probes += [_Raises(), _Unlabelled()]
        return res


def test_a_probe_that_fails_to_run_is_a_failed_probe_check() -> None:
    res = Pipeline([_ProbingRename(inputs={"x": "inp"})], verify=CPU).run(_chain())
    by_name = {o.name: o for o in res.steps[0].check.outputs}
    raised, ran = by_name["probe raiser"], by_name["probe unlabelled"]
    assert (raised.kind, raised.verdict, raised.ok) == (CheckKind.PROBE, Verdict.FAIL, False)
    assert raised.note == "cannot size it at step 0"
    assert (ran.kind, ran.verdict, ran.ok) == (CheckKind.PROBE, "ok", True)
    assert res.failures() == ["passes[0] (rename-io): probe raiser: cannot size it at step 0"]


def test_probe_dynamic_axes_declares_and_probes_what_the_candidate_made_symbolic() -> None:
    ref, cand = _chain(), _chain()
    for vi in (cand.graph.input[0], cand.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    contract = IOContract()
    probe_dynamic_axes(load(ref), load(cand), contract)
    assert contract.traced_dims == {"batch": 2} and contract.changed_axes == {"x": {0}, "y": {0}}
    assert [type(p) for p in contract.probes] == [BatchProbe]
    res = Pipeline([_Declares(contract)], verify=CPU).run(ref)  # the same contract, checked in a pipeline
    probes = [o for o in res.steps[0].check.outputs if o.kind is CheckKind.PROBE]
    assert res.ok and [o.name for o in probes] == ["probe batch=6: y vs 3 runs of batch=2"], probes  # probe_batch: 3


class _Declares(Pass):
    """Makes axis 0 of x and y the symbol 'batch' and returns a contract made elsewhere."""

    name = "declares"

    def __init__(self, contract: IOContract) -> None:
        super().__init__()
        self.contract = contract

    def run(self, model: ModelIR) -> PassResult:
        model.graph.inputs[0].shape = ["batch", 8]
        model.graph.outputs[0].shape = ["batch", 8]
        return PassResult(True, self.contract)


# --- verdicts ----------------------------------------------------------------------------------


def test_verdicts_are_an_enum_of_the_strings_they_always_were() -> None:
    assert {v.value for v in Verdict} == {
        "ok",
        "ok (non-finite)",
        "ok (empty)",
        "ok (new)",
        "ok (ran)",
        "proved nothing",
        "proved (structural)",
        "FAIL",
        "unchanged",
        "not verified",
    }
    assert all(isinstance(v, str) and v == v.value and f"[{v}]" == f"[{v.value}]" for v in Verdict)
    assert str(Verdict.PROVED_NOTHING) == "proved nothing" and f"{Verdict.FAIL:>6}" == "  FAIL"
    assert {"ok": "green", "FAIL": "red"}.get(Verdict.OK) == "green"  # terminal styles look verdicts up by string
    assert not Verdict.PROVED_NOTHING.ok and not Verdict.FAIL.ok and not Verdict.NOT_VERIFIED.ok
    assert Verdict.OK.ok and Verdict.OK_RAN.ok and Verdict.OK_NEW.ok
    assert OutputCheck("y", True, "proved nothing").verdict is Verdict.PROVED_NOTHING  # strings are read in
    assert {k.value for k in CheckKind} == {"output", "interface", "probe", "proof"}


def test_reports_serialize_verdicts_and_kinds_as_plain_strings() -> None:
    steps = [RenameIO(inputs={"x": "inp"}), _Noop(), _ProbingRename(outputs={"y": "out"})]
    res = Pipeline(steps, verify=CPU).run(_chain())
    data = res.as_dict()
    assert [s["verdict"] for s in data["steps"]] == ["ok", "unchanged", "FAIL"]
    assert all(type(s["verdict"]) is str for s in data["steps"])
    outputs = data["steps"][2]["outputs"]
    assert [(o["name"], o["kind"], o["verdict"]) for o in outputs] == [
        ("out", "output", "ok"),
        ("probe raiser", "probe", "FAIL"),
        ("probe unlabelled", "probe", "ok"),
    ]
    assert all(type(o["kind"]) is str and type(o["verdict"]) is str for o in outputs)
    assert list(outputs[0]) == [
        "name",
        "ok",
        "verdict",
        "max_abs",
        "max_rel",
        "rtol",
        "atol",
        "shape",
        "note",
        "kind",
        "tolerance",
    ]
    text = json.dumps(data)
    assert '"verdict": "unchanged"' in text and "Verdict." not in text and "CheckKind." not in text
    end = Pipeline(steps[:1], verify={**CPU, "mode": "end"}).run(_chain()).as_dict()
    assert end["steps"][0]["verdict"] == "not verified" and end["final_check"][0]["kind"] == "output"
