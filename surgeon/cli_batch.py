"""The many-model side of the command line: ``surgeon apply recipe.yaml -i 'models/*.onnx'
--out-dir fixed/ -j 4`` and ``surgeon doctor a.onnx b.onnx -j 4``: a progress bar over models,
one JSON report per model, a summary table, and the highest per-model exit code."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.batch import (
    ApplyJob,
    apply_one,
    default_workers,
    doctor_one,
    expand_inputs,
    run_parallel,
    sha256_text,
    write_report,
)
from surgeon.errors import EXIT_MODEL, EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED, UsageError

if TYPE_CHECKING:
    from rich.console import Console

CLASS_EXIT = {"verification": EXIT_VERIFY_FAILED, "usage": EXIT_USAGE, "model": EXIT_MODEL, "bug": EXIT_MODEL}


def _progress(total: int, what: str, quiet: bool) -> Any:
    """A progress bar over models, on stderr (stdout keeps the table, or the JSON)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True, highlight=False)
    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err,
        disable=quiet,
        transient=False,
    )


def _outputs(models: list[Path], out_dir: Path, in_place: bool) -> list[Path]:
    if not out_dir.is_dir():
        raise UsageError(f"--out-dir {out_dir}: no such folder")
    outs = [out_dir / m.name for m in models]
    seen: dict[Path, Path] = {}
    for m, o in zip(models, outs):
        if o in seen:
            raise UsageError(f"{m} and {seen[o]} would both be written to {o}; give models with distinct file names")
        seen[o] = m
        if o.exists() and os.path.samefile(o, m) and not in_place:
            raise UsageError(f"{o}: is the input model; refusing to overwrite it without --in-place")
    return outs


def apply_many(args: argparse.Namespace, verify: dict[str, Any], console: Console) -> int:
    """One recipe over every model ``-i`` names, in ``-j`` processes."""
    from rich.markup import escape
    from rich.table import Table

    from surgeon.recipe import load_recipe

    recipe = load_recipe(args.recipe)  # every recipe problem before any model is touched
    if args.output is not None:
        raise UsageError("-o names one output; with several models give --out-dir")
    pattern = str(args.input) if args.input is not None else (str(recipe.model) if recipe.model else None)
    if pattern is None:
        raise UsageError(f"{args.recipe}: no model: set 'model' in the recipe or give -i")
    models = expand_inputs([pattern])
    if args.out_dir is None:
        raise UsageError(f"-i '{pattern}' names {len(models)} models: give --out-dir")
    outs = _outputs(models, args.out_dir, args.in_place)
    jobs = [ApplyJob(str(args.recipe), str(m), str(o), verify, args.force, args.dry_run) for m, o in zip(models, outs)]
    workers = args.jobs or default_workers()
    with _progress(len(jobs), "models", args.quiet) as bar:
        task = bar.add_task("", total=len(jobs))

        def done(i: int, rep: dict[str, Any]) -> None:
            bar.update(
                task,
                advance=1,
                description=f"{Path(rep['input']).name}: {'ok' if rep.get('ok') else rep.get('failure_class')}",
            )

        reports = run_parallel(apply_one, jobs, workers, done)
    for rep, o in zip(reports, outs):
        write_report(o.with_name(o.stem + ".report.json"), rep)
    table = Table(title=f"{len(reports)} models, {sum(not r.get('ok') for r in reports)} failed", title_justify="left")
    for col in ("model", "result", "passes", "time", "output or why"):
        table.add_column(col)
    for r in reports:
        ok = bool(r.get("ok"))
        verdicts = [s.get("verdict") for s in r.get("steps", [])]
        table.add_row(
            escape(Path(r["input"]).name),
            "[green]ok[/green]" if ok else f"[bold red]{r.get('failure_class')}[/bold red]",
            f"{verdicts.count('ok')}/{len(verdicts)} verified" if verdicts else "-",
            f"{r.get('seconds', 0):.1f}s",
            escape(str(r.get("output") or ("dry run" if ok else r.get("message", "")))),
        )
    if not args.quiet:
        console.print(table)
    if args.report:
        summary = {
            "recipe": str(args.recipe),
            "recipe_sha256": sha256_text(recipe.text),
            "ok": all(r.get("ok") for r in reports),
            "models": reports,
        }
        write_report(args.report, summary)
    codes = [
        CLASS_EXIT[r["failure_class"]] for r in reports if not r.get("ok") and r.get("failure_class") in CLASS_EXIT
    ]
    return max(codes, default=EXIT_OK)


def doctor_many(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``surgeon doctor`` over several models in ``-j`` processes; reports in argument order."""
    paths = [str(p) for p in expand_inputs([str(m) for m in args.models])]
    workers = args.jobs or default_workers()
    import functools

    fn = functools.partial(doctor_one, runtime_checks=not args.no_runtime)
    with _progress(len(paths), "models", args.quiet or args.json) as bar:
        task = bar.add_task("", total=len(paths))
        return run_parallel(fn, paths, workers, lambda i, rep: bar.update(task, advance=1))
