"""Many models from the command line: ``surgeon apply recipe.yaml -i 'models/*.onnx' --out-dir
fixed/ -j 4`` and ``surgeon doctor a.onnx b.onnx -j 4``: every file the run writes checked before
any model is touched, a progress bar over models, one JSON report per model, a summary table, and
the highest per-model exit code."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from surgeon.app import Overrides


def _progress(what: str, quiet: bool) -> Any:
    """A progress bar over models, on stderr (stdout keeps the table, or the JSON)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from surgeon.cli.render import make_console

    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(
        *columns,
        TextColumn("{task.description}", markup=False),
        console=make_console(stderr=True),
        disable=quiet,
        transient=False,
    )


def report_path(output: Path) -> Path:
    """Each model's report: ``<out-dir>/<name>.report.json`` beside its output."""
    return output.with_name(output.stem + ".report.json")


def page_path(output: Path) -> Path:
    """Each model's page (``--html``): ``<out-dir>/<name>.report.html`` beside its output."""
    return output.with_name(output.stem + ".report.html")


def plan_outputs(args: argparse.Namespace, models: list[Path], recipe_path: Path) -> list[Path]:
    """Each model's output in ``--out-dir`` (created when missing; its parent must exist), with
    every file the run writes — outputs, per-model reports, ``--report`` — checked together
    against each other and against what the run reads (models, their weights, the recipe)
    before any work: exit 2 and nothing written (nor the folder left behind) when one may not be."""
    from surgeon.ir.targets import Target, guard_writes, referenced_files, same_file

    out_dir: Path = args.out_dir
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise UsageError(f"--out-dir {out_dir}: is not a folder")
    outs = [out_dir / m.name for m in models]
    seen: dict[Path, Path] = {}
    for m, o in zip(models, outs):
        if o in seen:
            raise UsageError(f"{m} and {seen[o]} would both be written to {o}; give models with distinct file names")
        seen[o] = m
    created = not out_dir.exists()
    if created:
        if not out_dir.parent.is_dir():
            raise UsageError(f"--out-dir {out_dir}: its parent folder '{out_dir.parent}' does not exist")
        try:
            out_dir.mkdir()
        except OSError as exc:
            raise UsageError(f"--out-dir {out_dir}: cannot create it ({exc.strerror})") from None
    try:
        targets: list[Target] = []
        for m, o in zip(models, outs):
            same = same_file(o, m)
            if same and not args.in_place:
                raise UsageError(f"{o}: is the input model; refusing to overwrite it without --in-place")
            if not args.dry_run:
                targets.append(Target(o, "output", replaces=m if same else None))
            targets.append(Target(report_path(o), "report"))
            if args.html is not None:
                targets.append(Target(page_path(o), "page"))
        if args.report is not None:
            targets.append(Target(args.report, "--report"))
        if args.html is not None:
            targets.append(Target(args.html, "--html"))
        reads: list[Path] = [recipe_path, *models]
        folders = {t.path.parent.resolve() for t in targets}
        for m in models:  # a model's weights lie in its folder or below: only there can a target be one
            if any(f.is_relative_to(m.parent.resolve()) for f in folders):
                reads += sorted(referenced_files(m))
        guard_writes(targets, reads)
    except BaseException:
        if created:
            out_dir.rmdir()
        raise
    return outs


def apply_many(args: argparse.Namespace, over: Overrides) -> int:
    """One recipe over every model ``-i`` names, in ``-j`` processes, through the one apply path."""
    from surgeon.cli.render import inert, make_console
    from surgeon.many import ApplyJob, Interrupted, apply_one, default_workers, expand_inputs, run_parallel
    from surgeon.recipe import load_recipe
    from surgeon.report import many_report, sha256_text, write_report

    recipe = load_recipe(args.recipe)  # every recipe problem before any model is touched
    if args.output is not None:
        raise UsageError("-o names one output; with several models give --out-dir")
    if args.node_data is not None:
        raise UsageError(
            "--node-data names one model's file; with several models run `surgeon verify --localize "
            "--node-data` on the model to look at"
        )
    pattern = str(args.input) if args.input is not None else (str(recipe.model) if recipe.model else None)
    if pattern is None:
        raise UsageError(f"{args.recipe}: no model: set 'model' in the recipe or give -i")
    models = shard(expand_inputs([pattern]), args.shard)
    if args.out_dir is None:
        raise UsageError(f"-i '{pattern}' names {len(models)} models: give --out-dir")
    outs = plan_outputs(args, models, args.recipe)
    jobs = [
        ApplyJob(str(args.recipe), str(m), str(o), over, args.force, args.dry_run, args.in_place, args.trust_source)
        for m, o in zip(models, outs)
    ]
    workers = args.jobs or default_workers()
    with _progress("models", args.quiet) as bar:
        task = bar.add_task("", total=len(jobs))

        def done(i: int, rep: dict[str, Any]) -> None:
            write_report(report_path(outs[i]), rep)  # as each model finishes: nothing is written after a signal
            if args.html is not None:
                _write_model_page(rep, page_path(outs[i]), args.html)
            state = "ok" if rep.get("ok") else rep.get("failure_class")
            bar.update(task, advance=1, description=f"{inert(Path(rep['input']).name)}: {state}")

        try:
            reports = run_parallel(apply_one, jobs, workers, done)
        except Interrupted as stop:
            _interrupted(stop.results, models)
            raise
    if not args.quiet:
        make_console().print(summary_table(reports))
    if args.report:
        write_report(args.report, many_report(str(args.recipe), sha256_text(recipe.text), reports))
    if args.html is not None:
        _write_index(args.html, reports, [page_path(o) for o in outs], str(args.recipe))
    return many_exit_code(reports)


def _href(target: Path, page: Path) -> str:
    """``target`` as a link from ``page`` (relative: the pages move together, as a CI artifact)."""
    from urllib.parse import quote

    return quote(Path(os.path.relpath(target.resolve(), page.resolve().parent)).as_posix())


def _write_model_page(rep: Mapping[str, Any], page: Path, index: Path) -> None:
    from surgeon.html_report import render_run, write_page

    write_page(page, render_run(rep, index_href=_href(index, page)))


def _write_index(index: Path, reports: Sequence[Mapping[str, Any]], pages: Sequence[Path], recipe: str) -> None:
    """The index page: every model's verdict, linking to its page."""
    from surgeon.html_report import render_index, write_page

    entries = [(rep, _href(page, index) if page.exists() else None) for rep, page in zip(reports, pages)]
    write_page(index, render_index(entries, recipe))


def shard(models: list[Path], spec: str | None) -> list[Path]:
    """``--shard K/N``: the K-th (1-based) of N slices of the models, dealt round-robin from their
    sorted paths — the same slice for the same set of files wherever the file system lists them —
    so N machines (a CI matrix, a Slurm array, a Kubernetes indexed job) split a zoo, no model twice."""
    if spec is None:
        return models
    k_text, sep, n_text = spec.partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = 0
    if not sep or n < 1 or not 1 <= k <= n:
        raise UsageError(f"--shard {spec}: expected K/N with 1 <= K <= N (e.g. --shard 2/4)")
    return sorted(models, key=str)[k - 1 :: n]


def cmd_report(args: argparse.Namespace) -> int:
    """``surgeon report merge fixed/*.report.json -o summary.json``: the per-model reports of one
    or several runs (shards) joined into one summary, with the table and exit code of one run."""
    import json

    from surgeon.cli.render import make_console
    from surgeon.ir.targets import Target, guard_writes
    from surgeon.report import many_report, write_report

    if args.output is not None:
        guard_writes([Target(args.output, "-o")], list(args.reports))
    reports: list[dict[str, Any]] = []
    for path in args.reports:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: not a surgeon report ({exc})") from None
        if not isinstance(data, dict) or data.get("kind", "apply") != "apply" or "input" not in data:
            raise UsageError(f"{path}: not a per-model surgeon report (kind 'apply', with 'input')")
        reports.append(data)
    reports.sort(key=lambda r: str(r.get("input")))
    recipes = {(r.get("recipe"), r.get("recipe_sha256")) for r in reports}
    recipe, sha = next(iter(recipes)) if len(recipes) == 1 else (None, None)
    if not args.quiet:
        make_console().print(summary_table(reports))
    if args.output is not None:
        write_report(args.output, many_report(recipe, sha, reports))
    return many_exit_code(reports)


def many_exit_code(reports: Sequence[Mapping[str, Any]]) -> int:
    """The highest exit code of the failed models (0 when all passed)."""
    from surgeon.report import CLASS_EXIT

    codes = [
        CLASS_EXIT[r["failure_class"]] for r in reports if not r.get("ok") and r.get("failure_class") in CLASS_EXIT
    ]
    return max(codes, default=EXIT_OK)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _passes_cell(report: Mapping[str, Any]) -> str:
    """What the passes did: how many changed the model, and how many of those were verified."""
    steps = report.get("steps") or []
    if not steps:
        return "-"
    modified = sum(1 for s in steps if s.get("modified"))
    verified = sum(1 for s in steps if s.get("verdict") == "ok")
    failed = sum(1 for s in steps if s.get("verdict") == "FAIL")
    cell = f"{_plural(len(steps), 'pass')}: {modified} modified"
    if verified or failed:
        cell += f", {verified} verified" + (f", {failed} failed" if failed else "")
    return cell


def summary_table(reports: Sequence[Mapping[str, Any]]) -> Any:
    """The many-models table: each model's result, what its passes did, its time, and its output
    or the first thing that failed."""
    from rich.table import Table

    from surgeon.cli.render import markup

    failed = sum(not r.get("ok") for r in reports)
    table = Table(title=f"{_plural(len(reports), 'model')}, {failed} failed", title_justify="left")
    for col in ("model", "result", "passes", "time", "output or why"):
        table.add_column(col)
    for r in reports:
        ok = bool(r.get("ok"))
        table.add_row(
            markup(Path(str(r.get("input"))).name),
            "[green]ok[/green]" if ok else f"[bold red]{markup(r.get('failure_class'))}[/bold red]",
            _passes_cell(r),
            f"{r.get('seconds', 0):.1f}s",
            markup(r.get("output") or ("dry run" if ok else r.get("message", ""))),
        )
    return table


def _interrupted(results: Sequence[Mapping[str, Any] | None], models: Sequence[Path]) -> None:
    """What a signal left: the outputs committed before it, the models stopped or never started."""
    from surgeon.cli.render import error_line

    written = [r["output"] for r in results if r is not None and r.get("output")]
    finished = sum(r is not None for r in results)
    error_line(
        f"interrupted: {_plural(len(written), 'output')} committed before the signal, "
        f"{len(models) - finished} of {_plural(len(models), 'model')} not finished (nothing written for them)"
    )
    for out in written:
        error_line(f"  committed: {out}")


def doctor_many(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``surgeon doctor`` over several models in ``-j`` processes; reports in argument order."""
    import functools

    from surgeon.many import default_workers, doctor_one, expand_inputs, run_parallel

    paths = [str(p) for p in expand_inputs([str(m) for m in args.models])]
    workers = args.jobs or default_workers()
    fn = functools.partial(doctor_one, runtime_checks=not args.no_runtime, trial=args.trial)
    with _progress("models", args.quiet or args.json) as bar:
        task = bar.add_task("", total=len(paths))
        return run_parallel(fn, paths, workers, lambda i, rep: bar.update(task, advance=1))
