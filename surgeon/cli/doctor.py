"""``surgeon doctor``: what will bite a model at deployment, and a recipe that fixes it."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from surgeon.errors import EXIT_OK, EXIT_USAGE, UsageError


def cmd_doctor(args: argparse.Namespace) -> int:
    from surgeon.cli.render import make_console, say, show_diagnosis
    from surgeon.doctor import diagnose
    from surgeon.ir.model import load

    if args.emit_recipe is not None:
        if len(args.models) != 1:
            raise UsageError("--emit-recipe: give exactly one model")
        _check_new_file(args.emit_recipe, args.force, list(args.models))
    if len(args.models) > 1:
        from surgeon.cli.many import doctor_many

        reports = doctor_many(args)
        if args.json:
            print(json.dumps(reports, indent=2, default=str))
        elif not args.quiet:
            for r in reports:
                show_diagnosis(make_console(), r, args.verbose)
        return max(
            (r.get("exit_code", EXIT_USAGE if r.get("failure_class") == "usage" else 3) for r in reports),
            default=EXIT_OK,
        )
    diags = [diagnose(load(m), runtime_checks=not args.no_runtime, trial=args.trial) for m in args.models]
    if args.json:
        print(json.dumps(diags[0].as_dict(), indent=2, default=str))
    elif not args.quiet:
        show_diagnosis(make_console(), diags[0], args.verbose)
    if args.emit_recipe is not None:
        from surgeon.doctor.emit import recipe_text

        _write_text(args.emit_recipe, recipe_text(diags[0], args.emit_recipe, args.models[0]))
        if not args.quiet and not args.json:
            say(make_console(), f"wrote {args.emit_recipe} (check it: surgeon validate {args.emit_recipe})")
    return max(d.exit_code for d in diags)


def _check_new_file(path: Path, force: bool, reads: list[Path]) -> None:
    """``--emit-recipe``: through the one guard (a regular file or absent, its folder writable,
    never a model the run reads), and not an existing file unless ``--force``."""
    from surgeon.ir.targets import Target, guard_writes

    guard_writes([Target(path, "--emit-recipe")], reads)
    if os.path.lexists(path) and not force:
        raise UsageError(f"{path}: exists; not overwritten (--force overwrites it)")


def _write_text(path: Path, text: str) -> None:
    from surgeon.ir.files import write_atomic

    write_atomic(path, text.encode("utf-8"))
