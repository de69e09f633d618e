"""The ``surgeon`` command.

Exit codes: 0 ok; 1 verification failed; 2 bad recipe or usage (a tensor name the model lacks
included); 3 model or pass error, or an I/O error (disk full, permission denied: one line naming the
path); 4 bug in surgeon (one line, the traceback with -v); 5 doctor: findings remain; 130
interrupted (Ctrl-C); 143 terminated (SIGTERM). An interrupted save leaves the previous output and
no temporary file.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon import __version__
from surgeon.errors import (
    EPILOG,
    EXIT_BUG,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    EXIT_VERIFY_FAILED,
    ModelError,
    SurgeonError,
    UsageError,
    short_error,
)

if TYPE_CHECKING:
    from rich.console import Console

    from surgeon.results import PipelineResult



def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    # lines are never wrapped: one message, one line (tables still fit the terminal)
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _verify_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("verification")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="onnxruntime device (overrides the recipe)")
    g.add_argument("--no-verify", action="store_true", help="skip verification (verify.mode: off)")
    g.add_argument("--dims", action="append", default=[], metavar="SYM=N", help="size of a symbolic dim for verification (repeatable)")
    g.add_argument("--rtol", type=float, help="relative tolerance")
    g.add_argument("--atol", type=float, help="absolute tolerance")


def _out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="write the output even when verification fails (still exits 1)")
    p.add_argument("--in-place", action="store_true", help="allow overwriting the input model")
    p.add_argument("--report", type=Path, metavar="JSON", help="write the summary as JSON")
    p.add_argument("--dry-run", action="store_true", help="run and verify every pass, write nothing (the --report still)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surgeon", description="Verified graph surgery for exported ONNX models.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"surgeon {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every rewrite and every output compared")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print errors only")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="print every rewrite and every output compared")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add = functools.partial(sub.add_parser, parents=[common])

    p = add("apply", help="apply a recipe to a model, verifying every pass", epilog=EPILOG)
    p.add_argument("recipe", type=Path)
    p.add_argument("-i", "--input", type=Path, help="input model (overrides the recipe's 'model')")
    p.add_argument("-o", "--output", type=Path, help="output model (overrides the recipe's 'output')")
    p.add_argument("--out-dir", type=Path, metavar="DIR", help="many models (-i 'models/*.onnx'): write each output, and its .report.json, here")
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="many models: parallel processes (default: the core count)")
    _out_args(p)
    _verify_args(p)

    p = add("run", help="apply one pass, no recipe needed", epilog=EPILOG)
    p.add_argument("pass_name", metavar="PASS")
    p.add_argument("model", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a param (YAML value; dotted keys for mappings)")
    _out_args(p)
    _verify_args(p)

    p = add("inspect", help="I/O, opsets, ops, weights, external data and Resize nodes of a model")
    p.add_argument("model", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--tensors", action="store_true", help="list every tensor: name, op, dtype, shape (intermediate ones included)")
    p.add_argument("--filter", metavar="REGEX", help="with --tensors: only names this regex matches (searched)")

    p = add("passes", help="list the available passes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add("explain", help="describe a pass and its params")
    p.add_argument("pass_name", metavar="PASS")
    p.add_argument("--json", action="store_true", help="print JSON")
    add("schema", help="print the JSON Schema of recipes")

    p = add("validate", help="check a recipe (and its tensor names against a model); writes nothing", epilog=EPILOG)
    p.add_argument("recipe", type=Path)
    p.add_argument("-i", "--input", type=Path, help="model to check names against (default: the recipe's)")

    p = add("verify", help="compare two models on the same inputs", epilog=EPILOG)
    p.add_argument("reference", type=Path)
    p.add_argument("candidate", type=Path)
    p.add_argument("--map", action="append", default=[], metavar="OLD=NEW", help="an input or output renamed in the candidate")
    p.add_argument("--report", type=Path, metavar="JSON", help="write the comparison as JSON")
    p.add_argument("--localize", action="store_true", help="name the first node whose output differs (tensors both models have, compared in topological order)")
    _verify_args(p)
    from surgeon.cli_front import doctor_parser, export_parser

    doctor_parser(add)
    export_parser(add)
    return parser


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
        op_table(console, result.ops_before, result.ops_after, changed_only=not args.verbose and len(result.ops_before) > 12)
    if args.report:
        from surgeon.batch import device_info
        from surgeon.ir.files import write_atomic

        data = result.as_dict() | {"output": str(out) if out else None, "surgeon_version": __version__}
        data |= {"input": getattr(args, "_input", None), "recipe_sha256": getattr(args, "_recipe_sha256", None)}
        data |= {"device": device_info(result.device), "device_line": result.device, "failure_class": None if result.ok else "verification"}
        if exported is not None:
            data["input"] = f"source: {getattr(args, '_source', '')} ({exported.exporter})"
        write_atomic(args.report, (json.dumps(data, indent=2, default=str) + "\n").encode())
    if not result.ok:
        err = _console(stderr=True)
        for line in result.failures():
            err.print(f"verification failed: {line}", markup=False)
        err.print("nothing written" if out is None or not args.force else f"written anyway (--force): {out}", markup=False)
        return EXIT_VERIFY_FAILED
    if out is not None and not args.quiet:
        console.print(f"wrote {out}", markup=False)
    return EXIT_OK


def _apply_pipeline(pipeline: Any, model: Path, out: Path | None, args: argparse.Namespace, recipe_text: str | None, base_dir: Path | None, recipe: Path | None = None) -> int:
    from surgeon.batch import sha256_text
    from surgeon.errors import VerificationError
    from surgeon.ir.targets import check_extra_output
    from surgeon.render import progress_line

    if args.report:  # every output path is checked before the work starts
        check_extra_output(args.report, "--report", [model, out, recipe])

    console = _console()
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
        result = pipeline.apply(model, out, force=args.force, in_place=args.in_place, on_step=on_step, recipe_text=recipe_text, base_dir=base_dir, protect=protect)
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

        return apply_many(args, _verify_overrides(args), _console())
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
                    _console().print(f"source {source.factory}: {exported.line()}", markup=False)
                return _apply_pipeline(recipe.pipeline, model, out, args, recipe.text, recipe.base_dir, args.recipe)
        assert model is not None
        return _apply_pipeline(recipe.pipeline, model, out, args, recipe.text, recipe.base_dir, args.recipe)
    except SurgeonError as exc:
        if args.report:  # the report says what failed, and whose it is
            from surgeon.batch import device_info, failure_class, sha256_text, write_report

            write_report(args.report, {"ok": False, "input": str(model), "output": None, "recipe_sha256": sha256_text(recipe.text), "device": device_info(""), "failure_class": failure_class(exc), "message": str(exc).splitlines()[0] if str(exc) else type(exc).__name__, "surgeon_version": __version__})
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
    pipeline.tolerance_override = _tolerance_override(_verify_overrides(args))
    return _apply_pipeline(pipeline, args.model, args.output, args, None, None)


def cmd_inspect(args: argparse.Namespace) -> int:
    from surgeon.ir.model import load
    from surgeon.ir.summary import inspect_model
    from surgeon.render import show_inspect

    if args.tensors or args.filter:
        from surgeon.cli_front import inspect_tensors

        return inspect_tensors(args)
    info = inspect_model(load(args.model))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        show_inspect(_console(), info)
    return EXIT_OK


def cmd_passes(args: argparse.Namespace) -> int:
    from rich.table import Table

    from surgeon.catalog import catalog

    entries = catalog()
    if any(e.third_party for e in entries.values()):  # only their code knows their summaries
        from surgeon.pass_api import registry

        summaries = {name: cls.summary() for name, cls in registry().items()}
    else:
        summaries = {name: e.summary for name, e in entries.items()}

    if args.json:
        print(json.dumps([{"name": name, "summary": summary, "module": entries[name].module if name in entries else None} for name, summary in summaries.items()], indent=2))
        return EXIT_OK
    table = Table(title="passes", title_justify="left")
    table.add_column("name")
    table.add_column("what it does")
    for name, summary in summaries.items():
        table.add_row(name, summary)
    _console().print(table)
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from surgeon.explain import describe, example_yaml
    from surgeon.pass_api import get_pass

    info = describe(get_pass(args.pass_name))
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    console = _console()
    console.print(f"[bold]{escape(info['name'])}[/bold]: {escape(info['summary'])}")
    if info["doc"]:
        console.print(info["doc"], markup=False)
    table = Table(title="params", title_justify="left")
    for col in ("name", "type", "default", "description"):
        table.add_column(col)
    for p in info["params"]:
        default = "required" if p["required"] else json.dumps(p["default"])
        table.add_row(escape(p["name"]), escape(p["type"]), escape(default), escape(p["description"]))
    console.print(table)
    if info["example"] is not None:
        console.print(f"example step (for {info['example_model']}):\n  {example_yaml(info['example'])}", markup=False)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from surgeon.recipe import recipe_schema

    print(json.dumps(recipe_schema(), indent=2))
    return EXIT_OK


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
        what = f" against {model_path}" if model_path else (f", model exported from {recipe.source.factory} at apply" if recipe.source else "")
        console = _console()
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
        lines.append(f"verification will default {', '.join(defaulted)} to {cfg.default_dim} (verify.default_dim); set verify.dims: {{{keys}}} to choose")
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    from surgeon.ir.model import load
    from surgeon.render import show_outputs, show_sizes
    from surgeon.verify.compare import Tolerance
    from surgeon.verify.contract import IOContract
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
    _probe_dynamic_axes(ref, cand, contract)
    verifier = Verifier(ref, cfg)
    try:
        verifier.reference()
    except SessionLoadError as exc:  # the reference itself: a model problem, not a failed comparison
        raise ModelError(f"{ref.name}: onnxruntime cannot load the model: {exc.reason}") from None
    tol = Tolerance(cfg.rtol, cfg.atol)
    check = verifier.check(cand, [contract], tol)
    divergence = verifier.localize(ref, 0, cand, tol) if args.localize else None
    check.outputs += verifier.probe(cand, [contract], 0, tol)
    console = _console()
    if not args.quiet:
        show_outputs(console, check)
        show_sizes(console, check.sizes, verifier.values)
        if divergence is not None:
            console.print(divergence.line(), markup=False)
        console.print(f"verified on {verifier.device_line}: {'ok' if check.ok else 'FAIL'}", markup=False)
    if args.report:
        from surgeon.ir.files import write_atomic

        data = {"ok": check.ok, "device": verifier.device_line, "sizes": check.sizes, "values": verifier.values, "outputs": [o.as_dict() for o in check.outputs]}
        if divergence is not None:
            data["divergence"] = divergence.as_dict()
        write_atomic(args.report, (json.dumps(data, indent=2) + "\n").encode())
    return EXIT_OK if check.ok else EXIT_VERIFY_FAILED


def _probe_dynamic_axes(ref: Any, cand: Any, contract: Any) -> None:
    """Axes the candidate made symbolic where the reference is static are probed as mark-dynamic
    does (a batch symbol: N distinct samples against N single runs; others: a new size) and declared
    as changed; the reference's size is their traced size."""
    from surgeon.verify.interface import ports
    from surgeon.verify.probes import BatchProbe, SizeProbe

    axes: list[dict[str, dict[int, str]]] = [{}, {}]
    traced: dict[str, int] = {}
    for k, kind in enumerate(("input", "output")):
        renamed = contract.renamed_inputs if kind == "input" else contract.renamed_outputs
        new = {p.name: p for p in ports(cand.proto, kind)}
        for old in ports(ref.proto, kind):
            p = new.get(renamed.get(old.name, old.name))
            if p is None or old.dims is None or p.dims is None or len(p.dims) != len(old.dims):
                continue
            for axis, (a, b) in enumerate(zip(old.dims, p.dims)):
                if isinstance(a, int) and isinstance(b, str):
                    axes[k].setdefault(p.name, {})[axis] = b
                    contract.changed_dims.add(p.name)
                    if kind == "input":
                        traced.setdefault(b, a)
    ins, outs = axes
    contract.traced_dims.update(traced)
    for sym in sorted(traced):
        at_zero = all(a == 0 for m in (ins, outs) for axes_ in m.values() for a, s in axes_.items() if s == sym)
        probe = BatchProbe if "batch" in sym.lower() or at_zero else SizeProbe
        contract.probes.append(probe(sym, ins, outs, traced))


def cmd_doctor(args: argparse.Namespace) -> int:
    from surgeon.cli_front import cmd_doctor as run

    return run(args)


def cmd_export(args: argparse.Namespace) -> int:
    from surgeon.cli_front import cmd_export as run

    return run(args)


COMMANDS = {
    "export": cmd_export,
    "doctor": cmd_doctor,
    "apply": cmd_apply,
    "run": cmd_run,
    "inspect": cmd_inspect,
    "passes": cmd_passes,
    "explain": cmd_explain,
    "schema": cmd_schema,
    "validate": cmd_validate,
    "verify": cmd_verify,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    with _sigterm_as_interrupt() as terminated:
        try:
            return COMMANDS[args.command](args)
        except KeyboardInterrupt:  # the temporary files are gone: every writer cleans up on the way out
            return EXIT_SIGTERM if terminated else EXIT_SIGINT
        except Exception as exc:
            return _report_error(exc, args.verbose)


def _report_error(exc: Exception, verbose: bool) -> int:
    """One line on stderr for any error; a traceback only for a bug, and only with ``-v``."""
    err = _console(stderr=True)
    if isinstance(exc, SurgeonError):
        for line in str(exc).splitlines() or [type(exc).__name__]:
            err.print(f"error: {line}" if not line.startswith(("error", "verification")) else line, markup=False, highlight=False)
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):  # output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        err.print(f"error: {where}{exc.strerror or short_error(exc)}", markup=False, highlight=False)
        return EXIT_MODEL
    if verbose:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    hint = "" if verbose else "; run with -v for the traceback"
    err.print(f"error: internal error ({type(exc).__name__}: {short_error(exc)}){hint}", markup=False, highlight=False)
    return EXIT_BUG


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[list[int]]:
    """SIGTERM raises KeyboardInterrupt (so every temporary file is removed on the way out), once:
    a second SIGTERM during that cleanup is ignored. Yields a list that holds the signal once received."""
    received: list[int] = []

    def on_term(signum: int, frame: object) -> None:
        received.append(signum)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
