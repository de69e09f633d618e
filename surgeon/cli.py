"""The ``surgeon`` command.

Exit codes: 0 ok; 1 verification failed; 2 bad recipe or usage; 3 model or pass error; 5 doctor: findings remain.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon import __version__
from surgeon.errors import EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED, SurgeonError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from surgeon.results import PipelineResult

EPILOG = "exit codes: 0 ok, 1 verification failed, 2 bad recipe or usage (a tensor name the model lacks included), 3 model or pass error"


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


def _finish(result: PipelineResult, args: argparse.Namespace, out: Path | None, console: Console) -> int:
    from surgeon.render import op_table, summary_table

    if not args.quiet:
        summary_table(console, result)
        op_table(console, result.ops_before, result.ops_after, changed_only=not args.verbose and len(result.ops_before) > 12)
    if args.report:
        from surgeon.batch import device_info

        data = result.as_dict() | {"output": str(out) if out else None, "surgeon_version": __version__}
        data |= {"input": getattr(args, "_input", None), "recipe_sha256": getattr(args, "_recipe_sha256", None)}
        data |= {"device": device_info(result.device), "device_line": result.device, "failure_class": None if result.ok else "verification"}
        args.report.write_text(json.dumps(data, indent=2, default=str) + "\n")
    if not result.ok:
        err = _console(stderr=True)
        for line in result.failures():
            err.print(f"verification failed: {line}", markup=False)
        err.print("nothing written" if out is None or not args.force else f"written anyway (--force): {out}", markup=False)
        return EXIT_VERIFY_FAILED
    if out is not None and not args.quiet:
        console.print(f"wrote {out}", markup=False)
    return EXIT_OK


def _apply_pipeline(pipeline: Any, model: Path, out: Path | None, args: argparse.Namespace, recipe_text: str | None, base_dir: Path | None) -> int:
    from surgeon.batch import sha256_text
    from surgeon.errors import VerificationError
    from surgeon.render import progress_line

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
        result = pipeline.apply(model, out, force=args.force, in_place=args.in_place, on_step=on_step, recipe_text=recipe_text, base_dir=base_dir)
    except VerificationError as exc:
        if exc.result is None:
            raise
        return _finish(exc.result, args, None, console)  # type: ignore[arg-type]
    return _finish(result, args, out, console)


def cmd_apply(args: argparse.Namespace) -> int:
    import glob

    from surgeon.recipe import load_recipe

    if args.out_dir is not None or (args.input is not None and glob.has_magic(str(args.input))):
        from surgeon.cli_batch import apply_many

        return apply_many(args, _verify_overrides(args), _console())
    recipe = load_recipe(args.recipe)
    model = args.input or recipe.model
    out = args.output or recipe.output
    if model is None:
        raise UsageError(f"{args.recipe}: no model: set 'model' in the recipe or give -i")
    if out is None and not args.dry_run:
        raise UsageError(f"{args.recipe}: no output: set 'output' in the recipe or give -o (or --dry-run)")
    over = _verify_overrides(args)
    if over:
        recipe.pipeline.verify = recipe.pipeline.verify.model_copy(update=over)
    try:
        return _apply_pipeline(recipe.pipeline, model, out, args, recipe.text, recipe.base_dir)
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

    from surgeon.pass_api import catalog, registry

    if args.json:
        print(json.dumps([{"name": e.name, "summary": e.summary, "module": e.module} for e in catalog().values()], indent=2))
        return EXIT_OK
    table = Table(title="passes", title_justify="left")
    table.add_column("name")
    table.add_column("what it does")
    for name, cls in registry().items():
        table.add_row(name, cls.summary())
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
    from surgeon.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    model_path = args.input or recipe.model
    if model_path is not None:
        problems = recipe.pipeline.check_requirements(load(model_path))
        if problems:
            raise RecipeError(problems)
    if not args.quiet:
        what = f" against {model_path}" if model_path else ""
        _console().print(f"{args.recipe}: ok ({len(recipe.pipeline.steps)} passes){what}", markup=False)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from surgeon.ir.model import load
    from surgeon.render import show_outputs
    from surgeon.verify.compare import Tolerance
    from surgeon.verify.config import VerifyConfig
    from surgeon.verify.contract import IOContract
    from surgeon.verify.verifier import Verifier

    cfg = VerifyConfig.model_validate(_verify_overrides(args))
    ref, cand = load(args.reference), load(args.candidate)
    mapping = _pairs(args.map, "--map")
    in_names = {vi.name for vi in ref.proto.graph.input}
    contract = IOContract(
        renamed_inputs={k: v for k, v in mapping.items() if k in in_names},
        renamed_outputs={k: v for k, v in mapping.items() if k not in in_names},
    )
    verifier = Verifier(ref, cfg)
    check = verifier.check(cand, [contract], Tolerance(cfg.rtol, cfg.atol))
    console = _console()
    if not args.quiet:
        show_outputs(console, check)
        console.print(f"verified on {verifier.device_line}: {'ok' if check.ok else 'FAIL'}", markup=False)
    if args.report:
        args.report.write_text(json.dumps({"ok": check.ok, "device": verifier.device_line, "outputs": [o.as_dict() for o in check.outputs]}, indent=2) + "\n")
    return EXIT_OK if check.ok else EXIT_VERIFY_FAILED


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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except SurgeonError as exc:
        err = _console(stderr=True)
        for line in str(exc).splitlines() or [type(exc).__name__]:
            err.print(f"error: {line}" if not line.startswith(("error", "verification")) else line, markup=False, highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
