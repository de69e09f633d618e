"""surgeon: verified graph surgery for exported ONNX models.

The public API is ``load``, ``apply`` and ``Pipeline``. Importing ``surgeon`` is cheap: the layers
behind these names (onnx, pydantic, the verifier) load when a name is first used, so the command
line starts fast (``surgeon --help`` imports neither pydantic nor onnx).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from surgeon._version import __version__

if TYPE_CHECKING:
    from surgeon.ir.model import Model
    from surgeon.pipeline import Pipeline
    from surgeon.results import PipelineResult


def load(source: Any) -> Model:
    """Load a model from a path, bytes or ModelProto, leaving external weights on disk."""
    from surgeon.ir.model import load as _load

    return _load(source)


def apply(
    recipe: Any,
    model: Any = None,
    output: Any = None,
    *,
    force: bool = False,
    in_place: bool = False,
    trust_source: bool = False,
) -> PipelineResult:
    """Apply a recipe (path, YAML text, mapping or Recipe) to ``model`` (default: the recipe's
    ``model``); writes ``output`` (default: the recipe's) when one is known. A recipe's ``source:``
    (Python code to import and call) runs only with ``trust_source=True`` or ``SURGEON_TRUST_SOURCE=1``."""
    from surgeon.app import apply_recipe

    return apply_recipe(recipe, model, output, force=force, in_place=in_place, trust_source=trust_source)


def __getattr__(name: str) -> Any:
    # PEP 562, for the one public class: ``surgeon.Pipeline`` imports the pipeline layer on first
    # use instead of at ``import surgeon`` (which every command, ``--help`` included, pays for).
    if name == "Pipeline":
        from surgeon.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'surgeon' has no attribute '{name}'")


__all__ = ["Pipeline", "__version__", "apply", "load"]
