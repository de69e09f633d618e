"""Recipes: YAML files that drive a pipeline. Every problem is reported at once, each as
``file:line:column: place: what is wrong; what would be valid``."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from surgeon.errors import RecipeError, UsageError, suggest
from surgeon.export import SourceConfig
from surgeon.ir.save import SavePolicy
from surgeon.pass_api import get_pass, pass_names, registry
from surgeon.pipeline import Pipeline, Step
from surgeon.verify.config import StepVerify, VerifyConfig
from surgeon.yaml12 import MAX_BYTES

STEP_KEYWORDS = ("verify", "name")
Loc = tuple[str | int, ...]


class RecipeHeader(BaseModel):
    """Everything in a recipe but its passes."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(description="recipe format version (1)")
    model: str | None = Field(None, description="input model, relative to the recipe file (-i overrides)")
    source: SourceConfig | None = Field(
        None, description="instead of 'model': export it from torch first, verified against torch (-i overrides)"
    )
    output: str | None = Field(None, description="output model, relative to the recipe file (-o overrides)")
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="verification settings")  # type: ignore[arg-type]
    save: SavePolicy = Field(default_factory=SavePolicy, description="how the output is written")  # type: ignore[arg-type]
    provenance: bool = Field(
        True, description="record recipe, surgeon version and source sha256 in the output's metadata_props"
    )
    passes: list[Any] = Field(description="the passes, in order: each a mapping {pass-name: params}")


@dataclass
class Recipe:
    pipeline: Pipeline
    path: Path | None
    model: Path | None
    output: Path | None
    text: str
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    source: SourceConfig | None = None
    """The torch export the model comes from, when the recipe says ``source:``."""

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


# --- YAML with positions -----------------------------------------------------------------------


def _compose(text: str, name: str) -> tuple[Any, dict[Loc, tuple[int, int]]]:
    from surgeon.yaml12 import compose

    return compose(text, name)


# --- validation --------------------------------------------------------------------------------


class _Problems:
    def __init__(self, name: str, positions: dict[Loc, tuple[int, int]]) -> None:
        self.name, self.positions = name, positions
        self.lines: list[str] = []

    def where(self, loc: Loc, key: bool = False) -> str:
        if key and loc and loc[:-1] + ("__key__", loc[-1]) in self.positions:
            line, col = self.positions[loc[:-1] + ("__key__", loc[-1])]
            return f"{self.name}:{line}:{col}"
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.positions:
                line, col = self.positions[loc[:n]]
                return f"{self.name}:{line}:{col}"
        return self.name

    def add(self, loc: Loc, place: str, message: str, key: bool = False) -> None:
        self.lines.append(f"{self.where(loc, key)}: {place}: {message}")

    def pydantic(self, exc: ValidationError, base: Loc, place_prefix: str, model: type[BaseModel]) -> None:
        for err in exc.errors():
            loc = tuple(err["loc"])
            place = place_prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
            place = place.lstrip(".") or "recipe"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                parent = _model_at(model, loc[:-1])
                valid = list(parent.model_fields) if parent else []
                msg = f"unknown key '{loc[-1]}'{suggest(str(loc[-1]), valid)}; valid keys are: {', '.join(valid)}"
                self.add((*base, *loc), place, msg, key=True)
                continue
            if err["type"] == "missing":
                self.add((*base, *loc[:-1]), place, "required key is missing")
                continue
            if "input" in err and err["type"] not in ("missing",):
                msg = f"{msg} (got {err['input']!r})"
            self.add((*base, *loc), place, msg)


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    for p in loc:
        fld = model.model_fields.get(str(p))
        if fld is None:
            return None
        ann = fld.annotation
        options = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(options) == 1:  # Optional[Model]
            ann = options[0]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def parse_recipe_data(
    data: Any, name: str, positions: dict[Loc, tuple[int, int]] | None = None, path: Path | None = None, text: str = ""
) -> Recipe:
    positions = positions or {}
    problems = _Problems(name, positions)
    if not isinstance(data, Mapping):
        raise RecipeError(f"{name}:1:1: recipe: must be a mapping with 'version' and 'passes'")
    header: RecipeHeader | None = None
    try:
        header = RecipeHeader.model_validate(data)
    except ValidationError as exc:
        problems.pydantic(exc, (), "", RecipeHeader)
    raw_steps = data.get("passes")
    steps: list[Step] = []
    if isinstance(raw_steps, list):
        passes = pass_names()
        for i, raw in enumerate(raw_steps):
            step = _parse_step(raw, i, passes, problems)
            if step is not None:
                steps.append(step)
    if header is not None and header.model is not None and header.source is not None:
        problems.add(
            ("source",), "source", "a recipe takes its model from 'model' or from 'source', not both", key=True
        )
    if problems.lines:
        raise RecipeError(problems.lines)
    assert header is not None
    base = path.parent if path else Path.cwd()
    pipeline = Pipeline(steps, verify=header.verify, save=header.save, provenance=header.provenance)
    return Recipe(
        pipeline,
        path,
        base / header.model if header.model else None,
        base / header.output if header.output else None,
        text,
        positions,
        header.source,
    )


def _parse_step(raw: Any, i: int, passes: list[str], problems: _Problems) -> Step | None:
    loc: Loc = ("passes", i)
    if not isinstance(raw, Mapping):
        problems.add(loc, f"passes[{i}]", f"a step must be a mapping {{pass-name: params}}, got {type(raw).__name__}")
        return None
    names = [k for k in raw if k not in STEP_KEYWORDS]
    if len(names) != 1:
        problems.add(
            loc,
            f"passes[{i}]",
            f"a step names exactly one pass, found {len(names)}: {', '.join(map(str, names)) or 'none'}",
        )
        return None
    pname = str(names[0])
    place = f"passes[{i}] ({pname})"
    if pname not in passes:
        problems.add(
            (*loc, pname),
            f"passes[{i}]",
            f"unknown pass '{pname}'{suggest(pname, passes)} (see 'surgeon passes')",
            key=True,
        )
        return None
    cls = get_pass(pname)  # imports only this pass's module
    params = raw[pname]
    if params is None:
        params = {}
    ok = True
    inst = None
    if not isinstance(params, Mapping):
        problems.add((*loc, pname), place, f"params must be a mapping, got {params!r}")
        ok = False
    else:
        try:
            inst = cls(params)
        except ValidationError as exc:
            problems.pydantic(exc, (*loc, pname), place, cls.Params)
            ok = False
    step_verify = None
    if "verify" in raw:
        try:
            step_verify = StepVerify.model_validate(raw["verify"] or {})
        except ValidationError as exc:
            problems.pydantic(exc, (*loc, "verify"), f"{place}.verify", StepVerify)
            ok = False
    step_name = raw.get("name")
    if step_name is not None and not isinstance(step_name, str):
        problems.add((*loc, "name"), f"{place}.name", "must be a string")
        ok = False
    if not ok or inst is None:
        return None

    def locate(fld: Loc, _loc: Loc = (*loc, pname)) -> str:
        return problems.where((*_loc, *fld), key=bool(fld))

    return Step(inst, name=step_name, verify=step_verify, where=place, locate=locate)


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such recipe file")
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:  # refused before it is read: a recipe is never that big
            raise RecipeError(f"{p}:1:1: recipe is {size} bytes, more than the {MAX_BYTES >> 20} MiB limit")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p}: cannot read the recipe ({exc})") from None
    data, positions = _compose(text, str(p))
    return parse_recipe_data(data, str(p), positions, p, text)


def parse_recipe_text(text: str, name: str = "<recipe>", path: Path | None = None) -> Recipe:
    data, positions = _compose(text, name)
    return parse_recipe_data(data, name, positions, path, text)


def recipe_schema() -> dict[str, Any]:
    """JSON Schema of recipe files, every pass and its params included (for editor completion)."""
    from pydantic.json_schema import models_json_schema

    passes = registry()
    models: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (RecipeHeader, "validation"),
        (StepVerify, "validation"),
    ]
    models += [(cls.Params, "validation") for cls in passes.values()]
    refs, schema = models_json_schema(models, ref_template="#/$defs/{model}")
    defs = schema.get("$defs", {})
    top = dict(defs.pop("RecipeHeader"))
    step_verify_ref = refs[(StepVerify, "validation")]
    variants = []
    for pname, cls in passes.items():
        variants.append(
            {
                "type": "object",
                "description": cls.summary(),
                "properties": {
                    pname: {**refs[(cls.Params, "validation")], "description": cls.summary()},
                    "verify": step_verify_ref,
                    "name": {"type": "string", "description": "a label for this step in reports"},
                },
                "required": [pname],
                "additionalProperties": False,
            }
        )
    top["properties"]["passes"] = {"type": "array", "description": "the passes, in order", "items": {"oneOf": variants}}
    top["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    top["title"] = "surgeon recipe"
    top["$defs"] = defs
    return top


def model_file_kind(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file (``a FIFO (named pipe)``), from ``stat``."""
    import os
    import stat

    from surgeon.ir.files import FILE_KINDS

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in FILE_KINDS if test(mode)), "not a regular file")


def place(r: Recipe, loc: Loc) -> str:
    """``recipe.yaml:LINE:COL`` of a key path in the recipe (the file's name alone when unknown)."""
    return _Problems(str(r.path) if r.path else "<recipe>", r.positions).where(loc)


def check_recipe_paths(r: Recipe, model_from_recipe: bool, output_from_recipe: bool) -> None:
    """A ``model:`` that does not exist, or an ``output:`` whose folder does not, reported at its
    place in the recipe: ``recipe.yaml:2:8: model: nothere.onnx: no such file``."""
    where = _Problems(str(r.path) if r.path else "<recipe>", r.positions).where

    def written(p: Path) -> str:
        try:
            return str(p.relative_to(r.base_dir))
        except ValueError:
            return str(p)

    if model_from_recipe and r.model is not None:
        if not r.model.exists():
            raise UsageError(f"{where(('model',))}: model: {written(r.model)}: no such file")
        kind = model_file_kind(r.model)
        if kind is not None:  # a folder, FIFO, device or socket: refused here, at its place, before any open
            raise UsageError(f"{where(('model',))}: model: {written(r.model)}: is {kind}, not an ONNX model file")
    if output_from_recipe and r.output is not None and not r.output.parent.is_dir():
        raise UsageError(
            f"{where(('output',))}: output: {written(r.output)}: output folder "
            f"'{written(r.output.parent)}' does not exist"
        )
