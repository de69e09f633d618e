"""Recipes: parsing, every problem reported at once with file:line:column, schema, parity."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from surgeon import Pipeline
from surgeon.errors import RecipeError, UsageError
from surgeon.passes.cleanup import Cleanup
from surgeon.passes.rename_io import RenameIO
from surgeon.recipe import load_recipe, parse_recipe_data, parse_recipe_text, recipe_schema
from tests.conftest import write_recipe

GOOD = """\
version: 1
model: model.onnx
output: out.onnx
verify: {device: cpu, mode: each, rtol: 1.0e-4, atol: 1.0e-5, seed: 0, dims: {batch: 2}}
passes:
  - rename-io: {inputs: {"onnx::MatMul_0": x}, outputs: {"/relu/Relu_output_0": y}}
  - cleanup: {}
    verify: {rtol: 1.0e-2}
    name: tidy
"""


def test_good_recipe_builds_pipeline(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, GOOD))
    assert recipe.model == tmp_path / "model.onnx"
    assert recipe.output == tmp_path / "out.onnx"
    steps = recipe.pipeline.steps
    assert [s.pass_.name for s in steps] == ["rename-io", "cleanup"]
    assert steps[1].name == "tidy" and steps[1].verify is not None and steps[1].verify.rtol == 1e-2
    assert recipe.pipeline.verify.dims == {"batch": 2}
    assert recipe.pipeline.verify.device == "cpu"


def test_all_problems_reported_at_once_with_positions(tmp_path: Path) -> None:
    text = """\
version: 1
verify: {device: gpu, dimz: {}}
passes:
  - rename-io: {inputs: {a: b}, outptus: {}}
  - clenaup: {}
  - cleanup: {toposort: maybe}
    verify: {foo: 1}
  - 3
  - rename-io: {}
    cleanup: {}
"""
    path = write_recipe(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    lines = info.value.problems
    name = str(path)
    assert f"{name}:2:18: verify.device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')" in lines
    assert any(line.startswith(f"{name}:2:23: verify.dimz: unknown key 'dimz'; did you mean 'dims'?") for line in lines)
    assert any(
        line.startswith(f"{name}:4:33: passes[0] (rename-io).outptus: unknown key 'outptus'; did you mean 'outputs'?")
        for line in lines
    )
    assert f"{name}:5:5: passes[1]: unknown pass 'clenaup'; did you mean 'cleanup'? (see 'surgeon passes')" in lines
    assert any(line.startswith(f"{name}:6:25: passes[2] (cleanup).toposort:") for line in lines)
    assert any(line.startswith(f"{name}:7:14: passes[2] (cleanup).verify.foo: unknown key 'foo'") for line in lines)
    assert f"{name}:8:5: passes[3]: a step must be a mapping {{pass-name: params}}, got int" in lines
    assert f"{name}:9:5: passes[4]: a step names exactly one pass, found 2: rename-io, cleanup" in lines
    assert len(lines) == 8


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, "version: 1\npasses: [\n  - a: b\n")
    with pytest.raises(RecipeError, match=rf"^{path}:3:3: YAML syntax error"):
        load_recipe(path)


def test_duplicate_keys_and_missing_fields(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, "version: 1\nversion: 1\n")
    with pytest.raises(RecipeError, match="duplicate key 'version'"):
        load_recipe(path)
    path = write_recipe(tmp_path, "passes: []\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert any("version: required key is missing" in p for p in info.value.problems)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_tensor_names_checked_against_model(tmp_path: Path, model_path: Path) -> None:
    text = "version: 1\npasses:\n  - rename-io:\n      inputs: {inptu: image}\n"
    recipe = load_recipe(write_recipe(tmp_path, text))
    from surgeon.ir.model import load

    problems = recipe.pipeline.check_requirements(load(model_path))
    assert problems == [
        f"{tmp_path / 'recipe.yaml'}:4:16: passes[0] (rename-io).inputs: unknown input 'inptu'; "
        "graph inputs are: onnx::MatMul_0"
    ]


def test_pipeline_dumps_back_to_the_same_recipe(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, GOOD))
    dumped = recipe.pipeline.to_recipe()
    again = parse_recipe_data(dumped, "<recipe>").pipeline
    assert again.to_recipe() == dumped
    original = yaml.safe_load(GOOD)
    assert dumped["passes"] == original["passes"]
    assert dumped["verify"]["dims"] == {"batch": 2}


def test_python_pipeline_matches_recipe() -> None:
    p = Pipeline([RenameIO(inputs={"a": "b"}), Cleanup()], verify={"dims": {"batch": 2}})
    text = yaml.safe_dump(p.to_recipe())
    again = parse_recipe_text(text).pipeline
    assert again.to_recipe() == p.to_recipe()


def test_schema_lists_every_pass_and_rejects_extra_keys() -> None:
    from surgeon.pass_api import registry

    schema = recipe_schema()
    variants = schema["properties"]["passes"]["items"]["oneOf"]
    names = {next(iter(v["required"])) for v in variants}
    assert names == set(registry())
    assert all(v["additionalProperties"] is False for v in variants)
    assert schema["properties"]["verify"]
    # every param of every pass carries a description in the schema
    for cls in registry().values():
        for fname, fld in cls.Params.model_fields.items():
            assert fld.description, f"{cls.name}.{fname} has no description"
