"""The commands that run pipelines and compare models: ``surgeon apply``, ``run``, ``validate``
and ``verify``, with the verification flags they share (the parsers are ``surgeon.cli``'s). Heavy
imports stay inside the functions so ``surgeon --help`` starts fast."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon import __version__
from surgeon.cli_front import make_console
from surgeon.errors import EXIT_OK, EXIT_VERIFY_FAILED, ModelError, SurgeonError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from surgeon.results import PipelineResult


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} '{item}': expected KEY=VALUE")
        out[key] = value
    return out


def _verify_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {}
    if args.device:
        over["device"] = args.device
    if args.no_verify:
        over["mode"] = "off"
    if args.rtol is not None:
        over["rtol"] = args.rtol
    if args.atol is not None:
        over["atol"] = args.atol
    dims = _pairs(args.dims, "--dims")
    if dims:
        try:
            over["dims"] = {k: int(v) for k, v in dims.items()}
        except ValueError:
            raise UsageError("--dims: sizes must be integers (SYM=N)") from None
    return over


FLAGS = {"device": "--device", "mode": "--no-verify", "rtol": "--rtol", "atol": "--atol", "dims": "--dims"}


def _checked_verify_config(values: dict[str, Any]) -> Any:
    """A VerifyConfig from recipe values with command-line overrides, validated like the recipe's."""
    from pydantic import ValidationError

    from surgeon.verify.config import VerifyConfig

    try:
        return VerifyConfig.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        raise UsageError(f"{FLAGS.get(field, field)} {values.get(field)!r}: {err['msg'].lower()}") from None


def _validated_verify(cfg: Any, over: dict[str, Any]) -> Any:
    """The recipe's verify settings with the command line's, checked like recipe values."""
    return _checked_verify_config({**cfg.model_dump(), **over})


def _tolerance_override(over: dict[str, Any]) -> dict[str, float]:
    """--rtol / --atol: the user's tolerance for every step (over pass defaults too)."""
    return {k: float(over[k]) for k in ("rtol", "atol") if k in over}


def _finish(result: PipelineResult, args: argparse.Namespace, out: Path | None, console: Console) -> int:
    from surgeon.render import op_table, summary_table

    exported = getattr(args, "_export", None)
    if exported is not None:
        result.export = exported.as_dict()
    if not args.quiet:
        summary_table(console, result)
        op_table(
            console, result.ops_before, result.ops_after, changed_only=not args.verbose and len(result.ops_before) > 12
        )
    if args.report:
        from surgeon.batch import device_info
        from surgeon.ir.files import write_atomic

        data = result.as_dict() | {"output": str(out) if out else None, "surgeon_version": __version__}
        data |= {"input": getattr(args, "_input", None), "recipe_sha256": getattr(args, "_recipe_sha256", None)}
        data |= {
            "device": device_info(result.device),
            "device_line": result.device,
            "failure_class": None if result.ok else "verification",
        }
        if exported is not None:
            data["input"] = f"source: {getattr(args, '_source', '')} ({exported.exporter})"
        write_atomic(args.report, (json.dumps(data, indent=2, default=str) + "\n").encode())
    if not result.ok:
        err = make_console(stderr=True)
        for line in result.failures():
            err.print(f"verification failed: {line}", markup=False)
        err.print(
            "nothing written" if out is None or not args.force else f"written anyway (--force): {out}", markup=False
        )
        return EXIT_VERIFY_FAILED
    if out is not None and not args.quiet:
        console.print(f"wrote {out}", markup=False)
    return EXIT_OK


def _apply_pipeline(
    pipeline: Any,
    model: Path,
    out: Path | None,
    args: argparse.Namespace,
    recipe_text: str | None,
    base_dir: Path | None,
    recipe: Path | None = None,
) -> int:
    from surgeon.batch import sha256_text
    from surgeon.errors import VerificationError
    from surgeon.ir.targets import check_extra_output
    from surgeon.render import progress_line

    if args.report:  # every output path is checked before the work starts
        check_extra_output(args.report, "--report", [model, out, recipe])

    console = make_console()
    total = len(pipeline.steps)
    args._input, args._recipe_sha256 = str(model), sha256_text(recipe_text) if recipe_text else None

    def on_step(step: Any) -> None:
        if not args.quiet:
            progress_line(console, step, total, args.verbose)

    if args.dry_run or out is None:
        result = pipeline.run(model, on_step=on_step, base_dir=base_dir)
        code = _finish(result, args, None, console)
        if not args.quiet:
            console.print("dry run: nothing written", markup=False)
        return code
    try:
        protect = [recipe] if recipe else []
        result = pipeline.apply(
            model,
            out,
            force=args.force,
            in_place=args.in_place,
            on_step=on_step,
            recipe_text=recipe_text,
            base_dir=base_dir,
            protect=protect,
        )
    except VerificationError as exc:
        if exc.result is None:
            raise
        return _finish(exc.result, args, None, console)  # type: ignore[arg-type]
    return _finish(result, args, out, console)


def cmd_apply(args: argparse.Namespace) -> int:
    import glob

    from surgeon.recipe import check_recipe_paths, load_recipe

    if args.out_dir is not None or (args.input is not None and glob.has_magic(str(args.input))):
        from surgeon.cli_batch import apply_many

        return apply_many(args, _verify_overrides(args), make_console())
    recipe = load_recipe(args.recipe)
    check_recipe_paths(recipe, args.input is None, args.output is None)
    model = args.input or recipe.model
    out = args.output or recipe.output
    source = recipe.source if args.input is None else None
    if model is None and source is None:
        raise UsageError(f"{args.recipe}: no model: set 'model' (or 'source') in the recipe or give -i")
    if out is None and not args.dry_run:
        raise UsageError(f"{args.recipe}: no output: set 'output' in the recipe or give -o (or --dry-run)")
    over = _verify_overrides(args)
    if over:
        recipe.pipeline.verify = _validated_verify(recipe.pipeline.verify, over)
    recipe.pipeline.tolerance_override = _tolerance_override(over)
    try:
        if source is not None:
            from surgeon.export import exported_source

            with exported_source(source, recipe.base_dir, out) as (model, exported):
                args._export, args._source = exported, source.factory
                if not args.quiet:
                    make_console().print(f"source {source.factory}: {exported.line()}", markup=False)
                return _apply_pipeline(recipe.pipeline, model, out, args, recipe.text, recipe.base_dir, args.recipe)
        assert model is not None
        return _apply_pipeline(recipe.pipeline, model, out, args, recipe.text, recipe.base_dir, args.recipe)
    except SurgeonError as exc:
        if args.report:  # the report says what failed, and whose it is
            from surgeon.batch import device_info, failure_class, sha256_text, write_report

            write_report(
                args.report,
                {
                    "ok": False,
                    "input": str(model),
                    "output": None,
                    "recipe_sha256": sha256_text(recipe.text),
                    "device": device_info(""),
                    "failure_class": failure_class(exc),
                    "message": str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    "surgeon_version": __version__,
                },
            )
        raise


def cmd_run(args: argparse.Namespace) -> int:
    from surgeon.errors import RecipeError
    from surgeon.pass_api import get_pass
    from surgeon.pipeline import Pipeline
    from surgeon.recipe import parse_recipe_data
    from surgeon.setparams import QUOTE_HINT, parse_set

    step = {args.pass_name: parse_set(get_pass(args.pass_name).Params, args.pass_name, args.set)}
    try:
        recipe = parse_recipe_data({"version": 1, "passes": [step], "verify": _verify_overrides(args)}, "--set")
    except RecipeError as exc:
        raise RecipeError([*exc.problems[:-1], f"{exc.problems[-1]} ({QUOTE_HINT})"]) from None
    pipeline: Pipeline = recipe.pipeline
    for s in pipeline.steps:  # past parsing, messages name the pass (no recipe, no --set to point at)
        s.where, s.locate = args.pass_name, None
    pipeline.tolerance_override = _tolerance_override(_verify_overrides(args))
    return _apply_pipeline(pipeline, args.model, args.output, args, None, None)


def cmd_validate(args: argparse.Namespace) -> int:
    from surgeon.errors import RecipeError
    from surgeon.ir.model import load
    from surgeon.recipe import check_recipe_paths, load_recipe

    recipe = load_recipe(args.recipe)
    check_recipe_paths(recipe, args.input is None, True)
    model_path = args.input or recipe.model
    sizes: list[str] = []
    if model_path is None and recipe.source is not None:  # the factory resolves; the export waits for apply
        from surgeon.export import load_factory

        load_factory(recipe.source.factory, recipe.base_dir, call=False)
    if model_path is not None:
        model = load(model_path)
        problems = recipe.pipeline.check_requirements(model)
        if problems:
            raise RecipeError(problems)
        sizes = _planned_sizes(model, recipe.pipeline)
    if not args.quiet:
        what = (
            f" against {model_path}"
            if model_path
            else (f", model exported from {recipe.source.factory} at apply" if recipe.source else "")
        )
        console = make_console()
        console.print(f"{args.recipe}: ok ({len(recipe.pipeline.steps)} passes){what}", markup=False)
        for line in sizes:
            console.print(line, markup=False)
    return EXIT_OK


def _planned_sizes(model: Any, pipeline: Any) -> list[str]:
    """What verification will use for the source's symbolic dims: sizes it defaults are named
    with the key that chooses them (nothing when verification is off or data is given)."""
    from surgeon.pipeline import size_hints
    from surgeon.verify.dims import choose_sizes
    from surgeon.verify.specs import graph_inputs

    cfg = pipeline.verify
    if cfg.mode == "off" or cfg.inputs:
        return []
    sizes = choose_sizes(graph_inputs(model.proto), cfg, hints=size_hints(pipeline.steps))
    lines = [f"verification sizes: {', '.join(sizes.lines())}"] if sizes.chosen else []
    defaulted = sizes.defaulted()
    if defaulted:
        keys = ", ".join(f"'{k}': N" if ":" in k else f"{k}: N" for k in defaulted)
        lines.append(
            f"verification will default {', '.join(defaulted)} to {cfg.default_dim} (verify.default_dim); set verify.dims: {{{keys}}} to choose"
        )
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    from surgeon.ir.model import load
    from surgeon.render import show_outputs, show_sizes
    from surgeon.verify.compare import Tolerance
    from surgeon.verify.contract import IOContract
    from surgeon.verify.probes import probe_dynamic_axes
    from surgeon.verify.runtime import SessionLoadError
    from surgeon.verify.verifier import Verifier

    cfg = _checked_verify_config(_verify_overrides(args))
    if args.report:
        from surgeon.ir.targets import check_extra_output

        check_extra_output(args.report, "--report", [args.reference, args.candidate])
    ref, cand = load(args.reference), load(args.candidate)
    mapping = _pairs(args.map, "--map")
    in_names = {vi.name for vi in ref.proto.graph.input}
    contract = IOContract(
        renamed_inputs={k: v for k, v in mapping.items() if k in in_names},
        renamed_outputs={k: v for k, v in mapping.items() if k not in in_names},
    )
    probe_dynamic_axes(ref, cand, contract)
    verifier = Verifier(ref, cfg)
    try:
        verifier.reference()
    except SessionLoadError as exc:  # the reference itself: a model problem, not a failed comparison
        raise ModelError(f"{ref.name}: onnxruntime cannot load the model: {exc.reason}") from None
    tol = Tolerance(cfg.rtol, cfg.atol)
    check = verifier.check(cand, [contract], tol)
    divergence = verifier.localize(ref, 0, cand, tol) if args.localize else None
    check.outputs += verifier.probe(cand, [contract], 0, tol)
    console = make_console()
    if not args.quiet:
        show_outputs(console, check)
        show_sizes(console, check.sizes, verifier.values)
        if divergence is not None:
            console.print(divergence.line(), markup=False)
        console.print(f"verified on {verifier.device_line}: {'ok' if check.ok else 'FAIL'}", markup=False)
    if args.report:
        from surgeon.ir.files import write_atomic

        data = {
            "ok": check.ok,
            "device": verifier.device_line,
            "sizes": check.sizes,
            "values": verifier.values,
            "outputs": [o.as_dict() for o in check.outputs],
        }
        if divergence is not None:
            data["divergence"] = divergence.as_dict()
        write_atomic(args.report, (json.dumps(data, indent=2) + "\n").encode())
    return EXIT_OK if check.ok else EXIT_VERIFY_FAILED
