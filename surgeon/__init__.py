"""surgeon: verified graph surgery for exported ONNX models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from surgeon.model import Model
    from surgeon.pipeline import PipelineResult


def load(source: Any) -> Model:
    """Load a model from a path, bytes or ModelProto, leaving external weights on disk."""
    from surgeon.model import load as _load

    return _load(source)


def apply(recipe: Any, model: Any = None, output: Any = None, *, force: bool = False, in_place: bool = False) -> PipelineResult:
    """Apply a recipe (path, YAML text, mapping or Recipe) to ``model`` (default: the recipe's
    ``model``); writes ``output`` (default: the recipe's) when one is known."""
    from pathlib import Path

    from surgeon.recipe import Recipe, load_recipe, parse_recipe_data, parse_recipe_text

    if isinstance(recipe, Recipe):
        r = recipe
    elif isinstance(recipe, dict):
        r = parse_recipe_data(recipe, "<recipe>")
    elif isinstance(recipe, Path) or (isinstance(recipe, str) and "\n" not in recipe and recipe.endswith((".yaml", ".yml"))):
        r = load_recipe(recipe)
    else:
        r = parse_recipe_text(str(recipe))
    src = model if model is not None else r.model
    if src is None:
        from surgeon.errors import UsageError

        raise UsageError("no model: give one or set 'model' in the recipe")
    out = output if output is not None else r.output
    if out is None:
        return r.pipeline.run(src, base_dir=r.base_dir)
    return r.pipeline.apply(src, out, force=force, in_place=in_place, recipe_text=r.text or None, base_dir=r.base_dir)


from surgeon.pipeline import Pipeline  # noqa: E402

__all__ = ["Pipeline", "__version__", "apply", "load"]
