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
    SurgeonError,
    short_error,
)

if TYPE_CHECKING:
    from rich.console import Console


def _console(stderr: bool = False) -> Console:
    from surgeon.cli_front import make_console

    return make_console(stderr)


def _verify_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("verification")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="onnxruntime device (overrides the recipe)")
    g.add_argument("--no-verify", action="store_true", help="skip verification (verify.mode: off)")
    g.add_argument(
        "--dims",
        action="append",
        default=[],
        metavar="SYM=N",
        help="size of a symbolic dim for verification (repeatable)",
    )
    g.add_argument("--rtol", type=float, help="relative tolerance")
    g.add_argument("--atol", type=float, help="absolute tolerance")


def _out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="write the output even when verification fails (still exits 1)")
    p.add_argument("--in-place", action="store_true", help="allow overwriting the input model")
    p.add_argument("--report", type=Path, metavar="JSON", help="write the summary as JSON")
    p.add_argument(
        "--dry-run", action="store_true", help="run and verify every pass, write nothing (the --report still)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surgeon", description="Verified graph surgery for exported ONNX models.", epilog=EPILOG
    )
    parser.add_argument("--version", action="version", version=f"surgeon {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every rewrite and every output compared")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print errors only")
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print every rewrite and every output compared",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add = functools.partial(sub.add_parser, parents=[common])

    p = add("apply", help="apply a recipe to a model, verifying every pass", epilog=EPILOG)
    p.add_argument("recipe", type=Path)
    p.add_argument("-i", "--input", type=Path, help="input model (overrides the recipe's 'model')")
    p.add_argument("-o", "--output", type=Path, help="output model (overrides the recipe's 'output')")
    p.add_argument(
        "--out-dir",
        type=Path,
        metavar="DIR",
        help="many models (-i 'models/*.onnx'): write each output, and its .report.json, here",
    )
    p.add_argument(
        "-j", "--jobs", type=int, metavar="N", help="many models: parallel processes (default: the core count)"
    )
    _out_args(p)
    _verify_args(p)

    p = add("run", help="apply one pass, no recipe needed", epilog=EPILOG)
    p.add_argument("pass_name", metavar="PASS")
    p.add_argument("model", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a param (YAML value; dotted keys for mappings)"
    )
    _out_args(p)
    _verify_args(p)

    p = add("inspect", help="I/O, opsets, ops, weights, external data and Resize nodes of a model")
    p.add_argument("model", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--tensors", action="store_true", help="list every tensor: name, op, dtype, shape (intermediate ones included)"
    )
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
    p.add_argument(
        "--map", action="append", default=[], metavar="OLD=NEW", help="an input or output renamed in the candidate"
    )
    p.add_argument("--report", type=Path, metavar="JSON", help="write the comparison as JSON")
    p.add_argument(
        "--localize",
        action="store_true",
        help="name the first node whose output differs (tensors both models have, compared in topological order)",
    )
    _verify_args(p)
    from surgeon.cli_front import doctor_parser, export_parser

    doctor_parser(add)
    export_parser(add)
    return parser


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
        print(
            json.dumps(
                [
                    {"name": name, "summary": summary, "module": entries[name].module if name in entries else None}
                    for name, summary in summaries.items()
                ],
                indent=2,
            )
        )
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


def _lazy(name: str) -> Any:
    """``surgeon.cli_apply``'s command ``name``, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        from surgeon import cli_apply

        return int(getattr(cli_apply, name)(args))

    return run


cmd_apply, cmd_run, cmd_validate, cmd_verify = (
    _lazy(n) for n in ("cmd_apply", "cmd_run", "cmd_validate", "cmd_verify")
)


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
            err.print(
                f"error: {line}" if not line.startswith(("error", "verification")) else line,
                markup=False,
                highlight=False,
            )
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
