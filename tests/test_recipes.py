"""Every recipe in recipes/ validates and applies with verification on, on models built here."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from surgeon.cli import main
from surgeon.examples import build_all

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("recipes")
    build_all(folder)
    for recipe in RECIPES:
        shutil.copy(recipe, folder / recipe.name)
    return folder


def test_there_are_recipes() -> None:
    assert RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_validates_and_applies(recipe: Path, example_dir: Path) -> None:
    path = example_dir / recipe.name
    assert main(["validate", str(path)]) == 0
    report = example_dir / f"{recipe.stem}.json"
    assert main(["apply", str(path), "--report", str(report), "--device", "cpu", "-q"]) == 0
    import json

    data = json.loads(report.read_text())
    assert data["ok"] is True
    assert any(s["modified"] for s in data["steps"])
    verified = [s for s in data["steps"] if s["verdict"] == "ok"] or [data["final_check"]]
    assert verified, "no step was verified"
    out = Path(data["output"])
    onnx.checker.check_model(str(out))
