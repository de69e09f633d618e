"""The one report of a run: what ``--report`` and each ``<name>.report.json`` hold, built here and
written by :func:`write_report` alone.

Every report carries ``schema_version`` (bumped when a key changes meaning or goes away; new keys
do not bump it) and ``surgeon_version``. A run's report (``kind: apply``) is the same for the Python
API, ``surgeon apply`` of one model, ``surgeon run`` and each model of a many-models run; ``kind:
many`` joins the per-model reports; ``kind: verify`` is ``surgeon verify``'s comparison.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon._version import __version__
from surgeon.errors import (
    EXIT_BUG,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VERIFY_FAILED,
    ModelError,
    PassError,
    PassPreconditionError,
    RecipeError,
    SurgeonError,
    UsageError,
    VerificationError,
)

if TYPE_CHECKING:
    from surgeon.results import PipelineResult

SCHEMA_VERSION = 1
FAILURE_CLASSES = ("usage", "model", "verification", "bug")
CLASS_EXIT = {"usage": EXIT_USAGE, "model": EXIT_MODEL, "verification": EXIT_VERIFY_FAILED, "bug": EXIT_BUG}


def failure_class(exc: BaseException) -> str:
    """Whose the failure is: the user's (usage), the model's, a failed verification, or a bug."""
    if isinstance(exc, (UsageError, RecipeError, PassPreconditionError)):
        return "usage"
    if isinstance(exc, VerificationError):
        return "verification"
    if isinstance(exc, (ModelError, PassError, SurgeonError)):
        return "model"
    return "bug"


def first_line(exc: BaseException) -> str:
    """The error's first line as the terminal shows it (a surgeon error's first line, whole, whatever
    newline a name in it holds), else the first line of its text."""
    if isinstance(exc, SurgeonError) and exc.lines and exc.lines[0].strip():
        return exc.lines[0].strip(" ")
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


@dataclass
class RunReport:
    """One model's run: where it came from and went, the pipeline's result, or why it failed."""

    input: str | None
    planned_output: str | None = None
    recipe: str | None = None
    recipe_sha256: str | None = None
    result: PipelineResult | None = None
    written: bool = False
    """The output model was written (verified, or ``--force``)."""
    failure_class: str | None = None
    message: str = ""
    seconds: float = 0.0
    traceback: str | None = None
    export: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.failure_class is None and (self.result is None or self.result.ok)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else CLASS_EXIT[self.failure_class or "verification"]

    def fail(self, exc: BaseException, tb: str | None = None) -> None:
        """Record ``exc`` as this run's failure (the result of a failed verification kept)."""
        self.failure_class = failure_class(exc)
        self.message = first_line(exc)
        res = getattr(exc, "result", None)
        if res is not None:
            self.result = res
        if self.failure_class == "bug":
            self.traceback = tb

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": "apply", "surgeon_version": __version__}
        data |= {"input": self.input, "output": self.planned_output if self.written else None}
        data |= {"planned_output": self.planned_output, "recipe": self.recipe, "recipe_sha256": self.recipe_sha256}
        if self.result is not None:
            data |= self.result.as_dict()
        data |= {"ok": self.ok, "failure_class": self.failure_class, "message": self.message}
        device_line = self.result.device if self.result is not None else ""
        data |= {"device": device_info(device_line), "device_line": device_line or None}
        data |= {"seconds": round(self.seconds, 3), "export": self.export or data.get("export")}
        if self.traceback:
            data["traceback"] = self.traceback
        return data


def many_report(recipe: str | None, recipe_sha256: str | None, reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary of a many-models run (or of merged shards): every model's report, in input
    order; the recipe is None when the reports came from different recipes."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "many",
        "surgeon_version": __version__,
        "recipe": recipe,
        "recipe_sha256": recipe_sha256,
        "ok": all(r.get("ok") for r in reports),
        "models": list(reports),
    }


def verify_report(
    ok: bool,
    device: str,
    sizes: list[str],
    values: list[str],
    outputs: list[dict[str, Any]],
    divergence: dict[str, Any] | None,
) -> dict[str, Any]:
    """``surgeon verify``'s comparison of two models."""
    data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": "verify", "surgeon_version": __version__}
    data |= {"ok": ok, "device": device, "sizes": sizes, "values": values, "outputs": outputs}
    if divergence is not None:
        data["divergence"] = divergence
    return data


def write_report(path: Path, data: Mapping[str, Any]) -> None:
    """The one writer of reports: JSON (the original strings, escaped as JSON escapes them), atomically."""
    from surgeon.ir.files import write_atomic

    write_atomic(path, (json.dumps(dict(data), indent=2, default=str) + "\n").encode())
