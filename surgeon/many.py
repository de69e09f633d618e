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
from typing import TYPE_CHECKING, Any

from surgeon.app import Overrides, Request
from surgeon.app import apply as app_apply
from surgeon.errors import UsageError
from surgeon.report import RunReport, failure_class, first_line

if TYPE_CHECKING:
    from surgeon.doctor.trial import Trial


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
    trust_source: bool = False


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
        trust_source=job.trust_source,
        structure=True,  # the parent writes this model's report (and page)
    )
    return app_apply(recipe, req).report.as_dict()


def doctor_one(path: str, runtime_checks: bool = True, trial: Trial = "verify") -> dict[str, Any]:
    from surgeon.doctor import diagnose
    from surgeon.ir.model import load

    try:
        diag = diagnose(load(path), runtime_checks=runtime_checks, trial=trial)
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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a many-models run: no model started after it, the running ones
    were stopped (their temporary files removed, nothing committed), and ``results`` holds the
    reports of the models that finished before it (None for the others)."""

    def __init__(self, results: list[dict[str, Any] | None]) -> None:
        super().__init__()
        self.results = results


def run_parallel(
    fn: Callable[[Any], dict[str, Any]],
    jobs: Sequence[Any],
    workers: int,
    on_done: Callable[[int, dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """``fn`` over ``jobs``, at most ``workers`` at a time, each job in a process of its own
    (forkserver where there is one, else spawn: never fork a process that may hold onnxruntime
    threads). Results in job order; ``on_done`` is called as each finishes.

    A worker that dies (killed, out of memory) costs only its own job: that job's 'bug' report
    names the signal, the others go on. Ctrl-C or SIGTERM (KeyboardInterrupt here) starts no
    further job, stops the running ones and raises :class:`Interrupted`. Each worker holds a
    lifeline to this process: when this process dies (even by SIGKILL) its workers stop, and
    commit nothing more."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    results: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers <= 1 or len(jobs) == 1:
        try:
            for i, job in enumerate(jobs):
                results[i] = fn(job)
                on_done(i, results[i])  # type: ignore[arg-type]
        except KeyboardInterrupt:
            raise Interrupted(results) from None
        return [r for r in results if r is not None]
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["surgeon.many", "surgeon.recipe", "surgeon.pipeline"])
    n = min(workers, len(jobs))
    threads = max(1, default_workers() // n)  # the cores shared out: no worker's onnxruntime takes them all
    queue = list(enumerate(jobs))[::-1]
    running: dict[Any, _Worker] = {}
    try:
        while queue or running:
            while queue and len(running) < n:
                i, job = queue.pop()
                w = _Worker.start(ctx, fn, i, job, threads)
                running[w.conn] = w
            for conn in wait(list(running)):
                w = running.pop(conn)
                results[w.index] = w.result(jobs[w.index])
                on_done(w.index, results[w.index])  # type: ignore[arg-type]
    except KeyboardInterrupt:
        for w in running.values():
            w.stop()
        for w in running.values():
            w.reap()
        raise Interrupted(results) from None
    return [r for r in results if r is not None]


@dataclass
class _Worker:
    """One job's process: ``conn`` brings its result; ``lifeline`` is held open by this process
    alone, so the worker sees it close when this process ends, however it ends."""

    index: int
    process: Any
    conn: Any
    lifeline: Any

    @classmethod
    def start(cls, ctx: Any, fn: Callable[[Any], dict[str, Any]], index: int, job: Any, threads: int) -> _Worker:
        recv, send = ctx.Pipe(duplex=False)
        life_r, life_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker_main, args=(fn, job, send, life_r, threads), daemon=True)
        proc.start()
        send.close()
        life_r.close()
        return cls(index, proc, recv, life_w)

    def result(self, job: Any) -> dict[str, Any]:
        try:
            data = self.conn.recv()
        except (EOFError, OSError):
            data = None
        self.reap()
        if isinstance(data, dict):
            return data
        code = self.process.exitcode
        how = _signal_name(-code) if code is not None and code < 0 else f"exit code {code}"
        return _crashed(job, f"the worker process died ({how}) before it reported")

    def stop(self) -> None:
        """Ask the worker to stop: no commit from now on, its temporary files removed."""
        self.lifeline.close()
        if self.process.is_alive():
            self.process.terminate()

    def reap(self) -> None:
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        if not self.lifeline.closed:
            self.lifeline.close()


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _worker_main(fn: Callable[[Any], dict[str, Any]], job: Any, conn: Any, lifeline: Any, threads: int) -> None:
    """A worker: SIGTERM and SIGINT stop it as they stop surgeon (temporary files removed); a
    closed lifeline (the parent stopped the run, or died) stops it too, and from then on it
    commits nothing. Its report goes back through ``conn``."""
    import signal
    import threading

    from surgeon.ir.files import stop_commits

    _worker_init(threads)

    def on_term(signum: int, frame: object) -> None:
        stop_commits()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    def watch() -> None:
        try:
            lifeline.recv_bytes()
        except (EOFError, OSError):
            pass
        stop_commits()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    try:
        result = fn(job)
        conn.send(result)
    except KeyboardInterrupt:
        os._exit(143)
    conn.close()


def _worker_init(threads: int) -> None:
    """A worker's set-up: its share of the cores for onnxruntime, warnings shown inert."""
    import sys

    from surgeon.errors import route_warnings

    os.environ.setdefault("SURGEON_ORT_THREADS", str(threads))
    route_warnings(lambda line: print(line, file=sys.stderr, flush=True))  # inert, as the command line's


def _crashed(job: Any, message: str) -> dict[str, Any]:
    """The report of a job whose worker process died (killed, out of memory): a bug, that job's only."""
    if isinstance(job, ApplyJob):
        rep = RunReport(input=job.model, planned_output=job.output, recipe=job.recipe)
        rep.failure_class, rep.message = "bug", message
        return rep.as_dict()
    return {"model": str(job), "input": str(job), "ok": False, "failure_class": "bug", "message": message}


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
