"""The one apply path. The Python API (``surgeon.apply``), ``surgeon apply`` of one model,
``surgeon run`` and each worker of a many-models run all call :func:`apply`: the recipe's model and
output resolved (``source:`` exported first), the command line's :class:`Overrides` applied (parsed
and validated once, like recipe values), every file the run writes checked before any work, the
pipeline run and saved, and one :class:`~surgeon.report.RunReport` built — and written to
``--report`` only when that target passed the check."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.errors import SurgeonError, UsageError, VerificationError
from surgeon.report import RunReport, sha256_text, write_report

if TYPE_CHECKING:
    from surgeon.ir.model import Model
    from surgeon.pipeline import Pipeline
    from surgeon.recipe import Recipe
    from surgeon.results import PipelineResult, StepReport
    from surgeon.verify.config import VerifyConfig

FLAGS = {
    "device": "--device",
    "mode": "--no-verify",
    "prove": "--no-proof",
    "rtol": "--rtol",
    "atol": "--atol",
    "dims": "--dims",
    "inputs": "--inputs",
}


def pairs(items: Sequence[str], what: str) -> dict[str, str]:
    """``KEY=VALUE`` items (``--dims``, ``--map``) as a mapping; a malformed one is a usage error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} '{item}': expected KEY=VALUE")
        out[key] = value
    return out


@dataclass(frozen=True)
class Overrides:
    """What the command line sets over a recipe's ``verify:`` (``--device``, ``--no-verify``,
    ``--rtol``, ``--atol``, ``--dims``, ``--inputs``), validated once by :meth:`parse` as recipe values are. The
    tolerances are the user's for every step: they win over step keywords and pass defaults."""

    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(
        cls,
        device: str | None = None,
        no_verify: bool = False,
        rtol: float | None = None,
        atol: float | None = None,
        dims: Sequence[str] = (),
        inputs: Path | None = None,
        proof_only: bool = False,
        no_proof: bool = False,
    ) -> Overrides:
        values: dict[str, Any] = {}
        if no_verify and proof_only:
            raise UsageError("--no-verify and --proof-only: choose one (no verification, or proofs only)")
        if inputs is not None:  # relative to where the user is, not to the recipe
            if not inputs.is_file():
                raise UsageError(f"--inputs {inputs}: no such file")
            values["inputs"] = str(inputs.resolve())
        if device:
            values["device"] = device
        if no_verify:
            values["mode"] = "off"
        if proof_only:
            values["mode"] = "proof"
        if no_proof:
            if proof_only:
                raise UsageError("--proof-only and --no-proof: choose one")
            values["prove"] = False
        if rtol is not None:
            values["rtol"] = rtol
        if atol is not None:
            values["atol"] = atol
        sizes = pairs(dims, "--dims")
        if sizes:
            try:
                values["dims"] = {k: int(v) for k, v in sizes.items()}
            except ValueError:
                raise UsageError("--dims: sizes must be integers (SYM=N)") from None
        over = cls(values)
        over.verify_config()  # every flag checked now, before any model or worker
        return over

    def verify_config(self, base: VerifyConfig | None = None) -> VerifyConfig:
        """``base`` (default: the defaults) with these overrides, validated like a recipe's."""
        from pydantic import ValidationError

        from surgeon.verify.config import VerifyConfig

        merged = {**(base.model_dump(exclude_unset=True) if base is not None else {}), **self.values}
        try:
            return VerifyConfig.model_validate(merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = str(err["loc"][0]) if err["loc"] else ""
            raise UsageError(f"{FLAGS.get(key, key)} {merged.get(key)!r}: {err['msg'].lower()}") from None

    def tolerance(self) -> dict[str, float]:
        return {k: float(self.values[k]) for k in ("rtol", "atol") if k in self.values}

    def apply_to(self, pipeline: Pipeline) -> None:
        if self.values:
            pipeline.verify = self.verify_config(pipeline.verify)
        pipeline.tolerance_override = self.tolerance()


@dataclass
class Request:
    """One run: the model and output (None: the recipe's), what may be written, and the report."""

    model: Any = None
    """A path (None: the recipe's model), or for the Python API a model in memory (bytes, a
    ModelProto or a loaded Model)."""
    output: Path | None = None
    force: bool = False
    in_place: bool = False
    dry_run: bool = False
    overrides: Overrides = field(default_factory=Overrides)
    report: Path | None = None
    html: Path | None = None
    """``--html``: the run's page (:mod:`surgeon.html_report`), written with the report."""
    node_data: Path | None = None
    """``--node-data``: the per-node error (and marks) as Model Explorer node data."""
    on_step: Callable[[StepReport], None] | None = None
    on_source: Callable[[str], None] | None = None
    """Called with a line once a recipe's ``source:`` is exported."""
    trust_source: bool = False
    """Run the Python code a recipe's ``source:`` names (``--trust-source``; also ``SURGEON_TRUST_SOURCE=1``)."""
    raise_errors: bool = False
    """Raise a failure (the Python API) instead of recording it in the report (the command line)."""
    structure: bool = False
    """Each step's structural diff in the result even without ``report``/``html`` (the many-models
    worker, whose report the parent writes). The Python API (``raise_errors``) always gets them."""


@dataclass
class Outcome:
    report: RunReport
    result: PipelineResult | None
    error: BaseException | None = None
    """The failure, kept for the caller to show (the report already says it)."""

    @property
    def exit_code(self) -> int:
        return self.report.exit_code


def apply(recipe: Recipe, req: Request) -> Outcome:
    """Apply ``recipe`` as ``req`` says. Failures are the report's (class and first line) and the
    outcome's ``error``; only Ctrl-C/SIGTERM propagate (and, with ``raise_errors``, the failure)."""
    t0 = time.perf_counter()
    model = req.model if req.model is not None else recipe.model
    source = recipe.source if req.model is None else None
    out = None if req.dry_run else (req.output if req.output is not None else recipe.output)
    rep = RunReport(
        input=str(model) if isinstance(model, (str, Path)) else (None if model is None else "<in memory>"),
        planned_output=str(out) if out is not None else None,
        recipe=str(recipe.path) if recipe.path else None,
        recipe_sha256=sha256_text(recipe.text) if recipe.text else None,
    )
    checked = False  # every target passed the guard: the report may be written
    error: BaseException | None = None
    where = str(recipe.path) if recipe.path else "<recipe>"
    try:
        from surgeon.recipe import check_recipe_paths

        check_recipe_paths(recipe, req.model is None, req.output is None)
        if model is None and source is None:
            raise UsageError(f"{where}: no model: set 'model' (or 'source') in the recipe or give -i")
        if out is None and not req.dry_run:
            raise UsageError(f"{where}: no output: set 'output' in the recipe or give -o (or --dry-run)")
        if source is not None:
            check_trusted(recipe, req.trust_source)
        req.overrides.apply_to(recipe.pipeline)
        loaded, load_error, guarded = _guard(recipe, model, out, req)
        checked = True
        if load_error is not None:
            raise load_error
        with _source_model(recipe, loaded, out, req, rep) as src:
            rep.result = _run(recipe, src, out, req, guarded if src is loaded else None)
            rep.written = out is not None and (rep.result.ok or req.force)
        if not rep.result.ok:
            failures = rep.result.failures()
            rep.failure_class = "verification"
            rep.message = failures[0] if failures else "verification failed"
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        rep.fail(exc, traceback.format_exc(limit=8))
        error = exc
    rep.seconds = time.perf_counter() - t0
    if rep.result is not None and rep.export is not None:
        rep.result.export = rep.export
    if checked:
        write_outputs(req, rep)
    if error is not None and req.raise_errors:
        raise error
    return Outcome(rep, rep.result, error)


def write_outputs(req: Request, rep: RunReport) -> None:
    """What the run reports, each where it was asked for: ``--report`` (JSON), ``--html`` (the
    page), ``--node-data`` (Model Explorer's node data)."""
    if req.report is None and req.html is None and req.node_data is None:
        return
    data = rep.as_dict()
    if req.report is not None:
        write_report(req.report, data)
    if req.html is not None or req.node_data is not None:
        from surgeon.html_report import node_data, render_run, write_node_data, write_page

        if req.html is not None:
            write_page(req.html, render_run(data))
        if req.node_data is not None:
            proto = rep.result.model.proto if rep.result is not None else None
            write_node_data(req.node_data, node_data(data, proto))


def report_targets(req: Request) -> list[Any]:
    """The report files a run writes, as targets for the guard (each refused if it names an
    input, the recipe or another output)."""
    from surgeon.ir.targets import Target

    named = [(req.report, "--report"), (req.html, "--html"), (req.node_data, "--node-data")]
    return [Target(path, flag) for path, flag in named if path is not None]


TRUST_ENV = "SURGEON_TRUST_SOURCE"
"""Set to ``1`` to run the code of recipes' ``source:`` blocks without ``--trust-source``."""


def source_trusted(flag: bool = False) -> bool:
    return flag or os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def check_trusted(recipe: Recipe, flag: bool) -> None:
    """A recipe is data; its ``source:`` block names Python code (a module of the recipe's folder,
    imported, and a factory, called). It runs only when the user says so: else a usage error naming
    the module and the file that would run (found by path search: nothing is imported)."""
    if recipe.source is None or source_trusted(flag):
        return
    from surgeon.export import factory_file
    from surgeon.recipe import place

    spec = recipe.source.factory
    path = factory_file(spec, recipe.base_dir)
    what = f"module {spec.split(':')[0]} ({path})" if path is not None else f"module {spec.split(':')[0]}"
    raise UsageError(
        f"{place(recipe, ('source', 'factory'))}: source.factory: {spec}: applying this recipe would import {what} "
        f"and call {spec.split(':')[1]}(); not run without --trust-source (or {TRUST_ENV}=1)"
    )


def _guard(
    recipe: Recipe, model: Any, out: Path | None, req: Request
) -> tuple[Model | None, SurgeonError | None, list[Path]]:
    """Every file the run writes (output model, its data, ``--report``) checked together before
    any work: exit 2 and nothing written when one may not be. Returns the source model (loaded
    without its weights) or the error loading it met (raised once the report may be written), and
    the files the save must never write (handed to the save, which then checks nothing twice)."""
    from surgeon.ir.model import load

    source, error = None, None
    if model is not None:
        try:
            source = load(model)
        except SurgeonError as exc:
            error = exc
    extra = report_targets(req)
    protect = [recipe.path] if recipe.path else []
    if source is None and isinstance(model, (str, Path)):
        protect.append(Path(model))
    guarded = recipe.pipeline.check_targets(source, out, in_place=req.in_place, protect=protect, extra=extra)
    return source, error, guarded


@contextmanager
def _source_model(recipe: Recipe, model: Model | None, out: Path | None, req: Request, rep: RunReport) -> Iterator[Any]:
    """The model the pipeline reads: ``model``, or the recipe's ``source:`` exported (the export,
    verified against torch, is step 0 of the report)."""
    source = recipe.source if req.model is None else None
    if model is not None or source is None:
        assert model is not None
        yield model
        return
    from surgeon.export import exported_source

    with exported_source(source, recipe.base_dir, out) as (path, exported):
        rep.export = exported.as_dict()
        rep.input = f"source: {source.factory} ({exported.exporter})"
        if req.on_source is not None:
            req.on_source(f"source {source.factory}: {exported.line()}")
        yield path


def _run(recipe: Recipe, model: Any, out: Path | None, req: Request, guarded: list[Path] | None) -> PipelineResult:
    """Run (no output) or apply; ``guarded``: what :func:`_guard` found the save must never
    write (None for a model exported from ``source:``, whose file the save checks itself)."""
    pipeline = recipe.pipeline
    structure = req.structure or req.raise_errors or req.report is not None or req.html is not None
    if out is None:
        return pipeline.run(model, on_step=req.on_step, base_dir=recipe.base_dir, structure=structure)
    protect = [recipe.path] if recipe.path else []
    try:
        return pipeline.apply(
            model,
            out,
            force=req.force,
            in_place=req.in_place,
            on_step=req.on_step,
            recipe_text=recipe.text or None,
            base_dir=recipe.base_dir,
            protect=protect,
            guarded=guarded,
            structure=structure,
        )
    except VerificationError as exc:
        if exc.result is None or req.raise_errors:
            raise
        return exc.result  # type: ignore[return-value]


def apply_recipe(
    recipe: Any,
    model: Any = None,
    output: Any = None,
    *,
    force: bool = False,
    in_place: bool = False,
    trust_source: bool = False,
) -> PipelineResult:
    """``surgeon.apply``: a recipe (path, YAML text, mapping or Recipe) applied to ``model``
    (default: the recipe's ``model``); writes ``output`` (default: the recipe's) when one is known.
    Raises what failed (a failed verification with an output: VerificationError). A recipe whose
    ``source:`` names Python code runs it only with ``trust_source=True`` (or
    ``SURGEON_TRUST_SOURCE=1``): a recipe read from a file may come from anyone."""
    from surgeon.recipe import Recipe, load_recipe, parse_recipe_data, parse_recipe_text

    if isinstance(recipe, Recipe):
        r = recipe
    elif isinstance(recipe, dict):
        r = parse_recipe_data(recipe, "<recipe>")
    elif isinstance(recipe, Path) or (
        isinstance(recipe, str) and "\n" not in recipe and recipe.endswith((".yaml", ".yml"))
    ):
        r = load_recipe(recipe)
    else:
        r = parse_recipe_text(str(recipe))
    req = Request(
        model=Path(model) if isinstance(model, (str, Path)) else model,
        output=Path(output) if output is not None else None,
        force=force,
        in_place=in_place,
        raise_errors=True,
        trust_source=trust_source,
    )
    if req.output is None and r.output is None:
        req.dry_run = True
    outcome = apply(r, req)
    assert outcome.result is not None
    return outcome.result


def failure_lines(outcome: Outcome) -> list[str]:
    """What the terminal says of a failed verification: each failing check, then what was written."""
    if outcome.result is None or outcome.result.ok:
        return []
    return [f"verification failed: {line}" for line in outcome.result.failures()]


__all__ = ["Outcome", "Overrides", "Request", "SurgeonError", "apply", "apply_recipe", "pairs"]
