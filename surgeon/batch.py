"""Many models at once: one recipe applied to every model a glob finds (or ``surgeon doctor`` over
several models), in parallel processes. One model's failure never stops the others; nothing is
written for a model that failed; every model gets a JSON report with its failure class."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgeon.errors import (
    ModelError,
    PassError,
    PassPreconditionError,
    RecipeError,
    SurgeonError,
    UsageError,
    VerificationError,
)

FailureClass = str  # "usage" | "model" | "verification" | "bug"


def failure_class(exc: BaseException) -> FailureClass:
    """Whose the failure is: the user's (usage), the model's, a failed verification, or a bug."""
    if isinstance(exc, (UsageError, RecipeError, PassPreconditionError)):
        return "usage"
    if isinstance(exc, VerificationError):
        return "verification"
    if isinstance(exc, (ModelError, PassError, SurgeonError)):
        return "model"
    return "bug"


def device_info(line: str) -> dict[str, Any]:
    """``CPU (CUDAExecutionProvider is listed but did not load: ...)`` as a structured object."""
    m = re.match(r"^(\w+) \((.*)\)$", line or "")
    if not m:
        return {"provider": None, "execution_provider": None, "reason": line or "not run", "cuda_error": None}
    provider, reason = m.groups()
    return {
        "provider": provider,
        "execution_provider": f"{provider}ExecutionProvider",
        "reason": reason,
        "cuda_error": reason if provider != "CUDA" and reason != "device: cpu" else None,
    }


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Model files the patterns name (globs expanded, ``**`` recursive), sorted, deduplicated."""
    found: dict[str, Path] = {}
    for pat in patterns:
        matches = sorted(glob.glob(pat, recursive=True)) if glob.has_magic(pat) else [pat]
        if not matches:
            raise UsageError(f"-i '{pat}': matches no file")
        for m in matches:
            p = Path(m)
            if p.is_file():
                found.setdefault(str(p.resolve()), p)
            elif not glob.has_magic(pat):
                raise UsageError(f"{p}: no such file")
    if not found:
        raise UsageError(f"-i {' '.join(patterns)}: matches no model file")
    return list(found.values())


@dataclass
class ApplyJob:
    recipe: str
    model: str
    output: str
    verify: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    dry_run: bool = False


def apply_one(job: ApplyJob) -> dict[str, Any]:
    """Apply the recipe to one model (in a worker process); never raises: the report says."""
    from surgeon._version import __version__
    from surgeon.recipe import load_recipe

    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "input": job.model,
        "output": None,
        "planned_output": job.output,
        "ok": False,
        "failure_class": None,
        "message": "",
        "surgeon_version": __version__,
    }
    try:
        recipe = load_recipe(job.recipe)
        report["recipe"] = job.recipe
        report["recipe_sha256"] = sha256_text(recipe.text)
        if job.verify:
            recipe.pipeline.verify = recipe.pipeline.verify.model_copy(update=job.verify)
        if job.dry_run:
            result = recipe.pipeline.run(job.model, base_dir=recipe.base_dir)
        else:
            result = recipe.pipeline.apply(
                job.model, job.output, force=job.force, recipe_text=recipe.text, base_dir=recipe.base_dir
            )
        report |= result.as_dict()
        report["device"], report["device_line"] = device_info(result.device), result.device
        report["output"] = None if job.dry_run or not (result.ok or job.force) else job.output
        if not result.ok:
            report["failure_class"], report["message"] = "verification", "; ".join(result.failures())
    except BaseException as exc:  # one model's failure, whatever it is, is that model's report
        if isinstance(exc, KeyboardInterrupt):
            raise
        report["failure_class"] = failure_class(exc)
        report["message"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        res = getattr(exc, "result", None)
        if res is not None:
            report |= res.as_dict() | {"ok": False}
            report["device"] = device_info(res.device)
        if report["failure_class"] == "bug":
            report["traceback"] = traceback.format_exc(limit=8)
    report.setdefault("device", device_info(""))
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


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
            "message": str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
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
                results[i] = {
                    "input": str(getattr(jobs[i], "model", jobs[i])),
                    "ok": False,
                    "failure_class": "bug",
                    "message": f"worker process failed: {type(exc).__name__}: {exc}",
                }
            on_done(i, results[i])  # type: ignore[arg-type]
    return [r for r in results if r is not None]


def _worker_init(threads: int) -> None:
    os.environ.setdefault("SURGEON_ORT_THREADS", str(threads))


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def write_report(path: Path, data: Any) -> None:
    from surgeon.ir.files import write_atomic

    write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())
