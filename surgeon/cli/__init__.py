"""The ``surgeon`` command: a package with one module per command or family of commands
(``apply``: apply and run; ``check``: validate and verify; ``doctor``, ``export``, ``inspect``;
``passes``: passes, explain and schema; ``many``: many models at once), the parser (``parser``)
and the one renderer (``render``) every line shown goes through.

Exit codes: 0 ok; 1 verification failed; 2 bad recipe or usage (a tensor name the model lacks
included); 3 model or pass error, or an I/O error (disk full, permission denied: one line naming the
path); 4 bug in surgeon (one line, the traceback with -v); 5 doctor: findings remain; 130
interrupted (Ctrl-C); 143 terminated (SIGTERM). An interrupted save leaves the previous output and
no temporary file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from surgeon.errors import (
    EXIT_BUG,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    SurgeonError,
    short_error,
)

COMMANDS = {
    "export": "export",
    "doctor": "doctor",
    "apply": "apply",
    "run": "apply",
    "inspect": "inspect",
    "passes": "passes",
    "explain": "passes",
    "schema": "passes",
    "rules": "rules",
    "validate": "check",
    "verify": "check",
    "report": "many",
}
"""Each command and the module of ``surgeon.cli`` that runs it (``cmd_<command>``), imported when it runs."""


def run_command(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"surgeon.cli.{COMMANDS[args.command]}")
    return int(getattr(module, f"cmd_{args.command}")(args))


def main(argv: Sequence[str] | None = None) -> int:
    from surgeon.cli.parser import build_parser

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    with _sigterm_as_interrupt() as terminated, _inert_warnings():
        try:
            return run_command(args)
        except KeyboardInterrupt:  # the temporary files are gone: every writer cleans up on the way out
            return EXIT_SIGTERM if terminated else EXIT_SIGINT
        except Exception as exc:
            return _report_error(exc, args.verbose)


def _report_error(exc: Exception, verbose: bool) -> int:
    """One line on stderr for any error; a traceback only for a bug, and only with ``-v``."""
    from surgeon.cli.render import error_line

    if isinstance(exc, SurgeonError):
        for line in exc.lines or [type(exc).__name__]:  # each line inert: a name holding a newline stays in it
            error_line(line if line.startswith(("error", "verification")) else f"error: {line}")
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):  # output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        error_line(f"error: {where}{exc.strerror or short_error(exc)}")
        return EXIT_MODEL
    if verbose:
        import traceback

        for block in traceback.format_exception(exc):  # the exception's text may hold model names
            for line in block.rstrip("\n").split("\n"):
                error_line(line)
    hint = "" if verbose else "; run with -v for the traceback"
    error_line(f"error: internal error ({type(exc).__name__}: {short_error(exc)}){hint}")
    return EXIT_BUG


@contextlib.contextmanager
def _inert_warnings() -> Iterator[None]:
    """Python warnings and surgeon's own log records reach stderr through the renderer: one inert
    line each (a warning naming a node cannot move the cursor or split its line)."""
    from surgeon.cli.render import error_line
    from surgeon.errors import route_warnings

    undo = route_warnings(error_line)
    try:
        yield
    finally:
        undo()


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
