"""``surgeon apply`` (one model, or many with ``-i GLOB --out-dir``) and ``surgeon run`` (one pass,
no recipe): both go through :func:`surgeon.app.apply`, the one apply path."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from surgeon.errors import EXIT_OK, EXIT_VERIFY_FAILED

if TYPE_CHECKING:
    from rich.console import Console

    from surgeon.app import Outcome, Overrides
    from surgeon.recipe import Recipe


def overrides(args: argparse.Namespace) -> Overrides:
    """The verification flags, parsed and validated once (``--rtol -1`` is a usage error)."""
    from surgeon.app import Overrides

    no_verify = getattr(args, "no_verify", False)  # surgeon verify always verifies
    proof_only = getattr(args, "proof_only", False)
    no_proof = getattr(args, "no_proof", False)
    return Overrides.parse(
        args.device, no_verify, args.rtol, args.atol, args.dims, args.inputs, proof_only=proof_only, no_proof=no_proof
    )


def cmd_apply(args: argparse.Namespace) -> int:
    from surgeon.many import is_glob
    from surgeon.recipe import load_recipe

    over = overrides(args)
    if args.out_dir is not None or (args.input is not None and is_glob(str(args.input))):
        from surgeon.cli.many import apply_many

        return apply_many(args, over)
    return _apply(load_recipe(args.recipe), args, over)


def cmd_run(args: argparse.Namespace) -> int:
    from surgeon.cli.setparams import QUOTE_HINT, parse_set
    from surgeon.errors import RecipeError, UsageError
    from surgeon.pass_api import get_pass
    from surgeon.recipe import parse_recipe_data

    if args.output is None and not args.dry_run:
        raise UsageError("surgeon run: -o/--output is required (or --dry-run: run and verify, write nothing)")
    over = overrides(args)
    step = {args.pass_name: parse_set(get_pass(args.pass_name).Params, args.pass_name, args.set)}
    try:
        recipe = parse_recipe_data({"version": 1, "passes": [step]}, "--set")
    except RecipeError as exc:
        raise RecipeError([*exc.problems[:-1], f"{exc.problems[-1]} ({QUOTE_HINT})"]) from None
    for s in recipe.pipeline.steps:  # past parsing, messages name the pass (no recipe, no --set to point at)
        s.where, s.locate = args.pass_name, None
    args.input = args.model
    return _apply(recipe, args, over)


def _apply(recipe: Recipe, args: argparse.Namespace, over: Overrides) -> int:
    from surgeon.app import Request, apply
    from surgeon.cli.render import make_console, progress_line, say

    console = make_console()
    total = len(recipe.pipeline.steps)

    def on_step(step: Any) -> None:
        if not args.quiet:
            progress_line(console, step, total, args.verbose)

    def on_source(line: str) -> None:
        if not args.quiet:
            say(console, line)

    req = Request(
        model=args.input,
        output=args.output,
        force=args.force,
        in_place=args.in_place,
        dry_run=args.dry_run,
        overrides=over,
        report=args.report,
        html=args.html,
        node_data=args.node_data,
        on_step=on_step,
        on_source=on_source,
        trust_source=getattr(args, "trust_source", False),
    )
    outcome = apply(recipe, req)
    if outcome.result is None or (outcome.error is not None and outcome.report.failure_class != "verification"):
        assert outcome.error is not None
        raise outcome.error  # one line, the error's exit code (the report, if asked for, says it too)
    return _finish(outcome, args, console)


def _finish(outcome: Outcome, args: argparse.Namespace, console: Console) -> int:
    from surgeon.app import failure_lines
    from surgeon.cli.render import error_line, op_table, say, summary_table

    result = outcome.result
    assert result is not None
    if not args.quiet:
        summary_table(console, result)
        changed_only = not args.verbose and len(result.ops_before) > 12
        op_table(console, result.ops_before, result.ops_after, changed_only=changed_only)
    out = outcome.report.planned_output
    if not result.ok:
        for line in failure_lines(outcome):
            error_line(line)
        error_line(f"written anyway (--force): {out}" if outcome.report.written else "nothing written")
        return EXIT_VERIFY_FAILED
    if not args.quiet:
        say(console, f"wrote {out}" if outcome.report.written else "dry run: nothing written")
    return EXIT_OK
