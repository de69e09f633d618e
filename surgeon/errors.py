"""Errors a user can fix, each with its documented exit code.

An ``OSError`` the CLI meets is one line (``error: <path>: <cause>``, exit 3); anything else
that is not a :class:`SurgeonError` is a bug in surgeon (exit 4, traceback with ``-v``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_BUG = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

EPILOG = (  # the exit codes, as every command's --help ends
    "exit codes: 0 ok, 1 verification failed, 2 bad recipe or usage (a tensor name the model lacks included), "
    "3 model, pass or I/O error, 4 bug in surgeon, 5 doctor: findings remain, 130 interrupted, 143 terminated (SIGTERM)"
)


class SurgeonError(Exception):
    """Base class of every error a user can fix. ``str(err)`` is its text; :attr:`lines` are the
    lines the terminal shows, each made inert there (so a name holding a newline stays in its line)."""

    exit_code = EXIT_MODEL

    @property
    def lines(self) -> list[str]:
        """The lines this error is shown as: one, its text, unless the error says otherwise."""
        return [str(self)]


class UsageError(SurgeonError):
    """Bad command line: missing file, output folder that does not exist, refused overwrite."""

    exit_code = EXIT_USAGE


class RecipeError(SurgeonError):
    """One or more problems in a recipe; ``problems`` holds every line, ``str()`` joins them."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    @property
    def lines(self) -> list[str]:
        return list(self.problems)


class ModelError(SurgeonError):
    """A model that cannot be read, parsed, or saved."""

    exit_code = EXIT_MODEL


class SaveError(ModelError, OSError):
    """Writing the output failed (disk full, permission denied, read-only file system). The text
    is ``<path>: <cause>``; nothing partial is left and the previous output is untouched. It is
    also an ``OSError`` (with ``errno``) for callers that catch those; ``path`` is the file."""

    exit_code = EXIT_MODEL
    path: str = ""


class PassError(SurgeonError):
    """A pass that cannot be applied to this model (its preconditions hold: a bug or a limit)."""

    exit_code = EXIT_MODEL


class PassPreconditionError(PassError):
    """A precondition the user can fix (a named tensor that does not exist, an unsupported opset).

    ``field`` is the path of the offending parameter inside the pass's params (for example
    ``("inputs", "inptu")``) so a recipe error can point at the line that names it.

    The user's to fix, so it exits 2 like the recipe error ``surgeon validate`` reports for the
    same name: one exit code per error class, whichever command meets it.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, field: tuple[str | int, ...] = ()) -> None:
        self.field = field
        super().__init__(message)


class VerificationError(SurgeonError):
    """The edited model does not compute what the contract promises."""

    exit_code = EXIT_VERIFY_FAILED

    def __init__(self, message: str, result: object | None = None, lines: list[str] | None = None) -> None:
        self.result = result
        """The pipeline result whose checks failed, when there is one (for reports)."""
        self._lines = (message, list(lines)) if lines is not None else None
        super().__init__(message)

    @property
    def lines(self) -> list[str]:
        """``lines`` when given (and the text is still the message they were given with); else,
        with a result whose ``failures()`` it lists, the message's first line and then each failure
        (whatever names they hold); else the message, one line."""
        given = getattr(self, "_lines", None)
        if given is not None and given[0] == str(self):
            return list(given[1])
        failures = getattr(self.result, "failures", None)
        if callable(failures) and "\n" in str(self):
            return [str(self).split("\n", 1)[0], *map(str, failures())]
        return [str(self)]


# --- message helpers ------------------------------------------------------------------------------


def suggest(name: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or nothing."""
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def listing(items: Iterable[str]) -> str:
    """Names joined for a message, ``(none)`` when there are none."""
    items = list(items)
    return ", ".join(items) if items else "(none)"


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ufffe\uffff]")


def _escaped(m: re.Match[str]) -> str:
    ch = m.group()
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def inert(text: object) -> str:
    """``text`` as a terminal (or a YAML comment) may show it: C0/C1 control characters,
    bidirectional overrides, line and paragraph separators and zero-width characters written as
    escapes (``\\x1b``, ``\\n``, ``\\0``, ``\\u202e``). Always one line."""
    return _CONTROL.sub(_escaped, str(text))


def short_error(exc: BaseException) -> str:
    """The first line of an exception's text (libraries often raise multi-line messages)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def route_warnings(say: Callable[[str], None]) -> Callable[[], None]:
    """Python warnings and the records of surgeon's loggers (WARNING and above) shown by ``say``,
    one inert line each (``warning: ...``), instead of written raw to stderr; returns the undo.
    The command line routes them through its renderer, a many-models worker to its stderr."""
    import logging
    import warnings

    class Inert(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                say(inert(f"{record.levelname.lower()}: {record.getMessage()}"))
            except Exception:  # pragma: no cover - logging never raises
                self.handleError(record)

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: object) -> None:
        say(inert(f"warning: {category.__name__}: {message}"))

    logger = logging.getLogger("surgeon")
    handler = Inert(logging.WARNING)
    logger.addHandler(handler)
    previous = warnings.showwarning
    warnings.showwarning = show  # type: ignore[assignment]

    def undo() -> None:
        warnings.showwarning = previous
        logger.removeHandler(handler)

    return undo
