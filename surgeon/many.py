"""Many models at once: one recipe applied to every model a glob finds (or ``surgeon doctor`` over
several models), in parallel processes. One model's failure never stops the others; nothing is
written for a model that failed; every model gets a JSON report with its failure class."""

from __future__ import annotations

import glob
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgeon.app import Overrides, Request
from surgeon.app import apply as app_apply
from surgeon.errors import UsageError
from surgeon.report import RunReport, failure_class, first_line


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` is a glob to expand: it holds ``*``, ``?`` or ``[`` and names no existing
    file as it is (a model named ``m[1].onnx`` is that model)."""
    return glob.has_magic(pattern) and not os.path.lexists(pattern)


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Model files the patterns name (globs expanded, ``**`` recursive), sorted, deduplicated. A
    pattern that names an existing file is that file, whatever ``[``, ``*`` or ``?`` it holds."""
    found: dict[str, Path] = {}
    for pat in patterns:
        magic = is_glob(pat)
        matches = sorted(glob.glob(pat, recursive=True)) if magic else [pat]
        if not matches:
            raise UsageError(f"-i '{pat}': matches no file")
        for m in matches:
            p = Path(m)
            if p.is_file():
                found.setdefault(str(p.resolve()), p)
            elif not magic:
                raise UsageError(f"{p}: no such file")
    if not found:
        raise UsageError(f"-i {' '.join(patterns)}: matches no model file")
    return list(found.values())


@dataclass
class ApplyJob:
    """One model of a many-models run, as a worker receives it (picklable)."""

    recipe: str
    model: str
    output: str
    overrides: Overrides = field(default_factory=Overrides)
    force: bool = False
    dry_run: bool = False
    in_place: bool = False


def apply_one(job: ApplyJob) -> dict[str, Any]:
    """Apply the recipe to one model (in a worker process) through the one apply path; never
    raises: the report says."""
    from surgeon.recipe import load_recipe

    try:
        recipe = load_recipe(job.recipe)
    except Exception as exc:  # checked in the parent before any worker; a file changed since
        rep = RunReport(input=job.model, planned_output=job.output, recipe=job.recipe)
        rep.fail(exc, traceback.format_exc(limit=8))
        return rep.as_dict()
    req = Request(
        model=Path(job.model),
        output=Path(job.output),
        force=job.force,
        in_place=job.in_place,
        dry_run=job.dry_run,
        overrides=job.overrides,
    )
    return app_apply(recipe, req).report.as_dict()


def doctor_one(path: str, runtime_checks: bool = True) -> dict[str, Any]:
    from surgeon.doctor import diagnose
    from surgeon.ir.model import load

    try:
        diag = diagnose(load(path), runtime_checks=runtime_checks)
        return diag.as_dict() | {"exit_code": diag.exit_code, "failure_class": None}
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return {
            "model": path,
            "findings": [],
            "failure_class": failure_class(exc),
            "message": first_line(exc),
        }


def run_parallel(
    fn: Callable[[Any], dict[str, Any]],
    jobs: Sequence[Any],
    workers: int,
    on_done: Callable[[int, dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """``fn`` over ``jobs`` in ``workers`` processes (forkserver where there is one, else spawn:
    never fork a process that may hold onnxruntime threads). Results in job order; a worker
    that dies is that job's 'bug' report."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers <= 1 or len(jobs) == 1:
        for i, job in enumerate(jobs):
            results[i] = fn(job)
            on_done(i, results[i])  # type: ignore[arg-type]
        return [r for r in results if r is not None]
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    n = min(workers, len(jobs))
    threads = max(1, default_workers() // n)  # the cores shared out: no worker's onnxruntime takes them all
    with ProcessPoolExecutor(
        max_workers=n, mp_context=mp.get_context(method), initializer=_worker_init, initargs=(threads,)
    ) as pool:
        futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except Exception as exc:  # the worker process died (killed, out of memory)
                results[i] = _crashed(jobs[i], exc)
            on_done(i, results[i])  # type: ignore[arg-type]
    return [r for r in results if r is not None]


def _crashed(job: Any, exc: BaseException) -> dict[str, Any]:
    """The report of a job whose worker process died (killed, out of memory): a bug, that job's only."""
    message = f"worker process failed: {type(exc).__name__}: {exc}"
    if isinstance(job, ApplyJob):
        rep = RunReport(input=job.model, planned_output=job.output, recipe=job.recipe)
        rep.failure_class, rep.message = "bug", message
        return rep.as_dict()
    return {"model": str(job), "input": str(job), "ok": False, "failure_class": "bug", "message": message}


def _worker_init(threads: int) -> None:
    import sys

    from surgeon.errors import route_warnings

    os.environ.setdefault("SURGEON_ORT_THREADS", str(threads))
    route_warnings(lambda line: print(line, file=sys.stderr, flush=True))  # inert, as the command line's


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
