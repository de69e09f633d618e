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
from surgeon.pipeline import Pipeline

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
    real = FixDims._plan

    def counting(self: FixDims, model: ModelIR) -> object:
        calls.append(1)
        return real(self, model)

    monkeypatch.setattr(FixDims, "_plan", counting)
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
