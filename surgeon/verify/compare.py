"""Comparing an output with its expected value: errors, tolerance, verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


class _Text(str, Enum):
    """A str enum that prints, formats and serializes as its value (``f"{v}"`` is ``"ok"``, not
    ``"Verdict.OK"``; ``v == "ok"`` holds)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Verdict(_Text):
    """What a check, a probe or a step concluded. Only the ``ok`` family passes; "proved nothing"
    is a probe that ran with nothing to compare (never shown as ok)."""

    OK = "ok"
    OK_NONFINITE = "ok (non-finite)"
    """Equal within tolerance, with non-finite values at the same positions."""
    OK_EMPTY = "ok (empty)"
    """An empty output: nothing to compare."""
    OK_NEW = "ok (new)"
    """An output the step added: it ran, nothing to compare it with."""
    OK_RAN = "ok (ran)"
    """A size probe: the model ran and the output axes follow their symbols."""
    PROVED = "proved (structural)"
    """The step computes what the model before it did, shown from the two graphs (no run)."""
    PROVED_NOTHING = "proved nothing"
    FAIL = "FAIL"
    UNCHANGED = "unchanged"
    """A step that did not modify the model."""
    NOT_VERIFIED = "not verified"
    """A step that modified the model and had no check of its own (``mode: end``, ``verify.skip``)."""

    @property
    def ok(self) -> bool:
        return self in (
            Verdict.OK,
            Verdict.OK_NONFINITE,
            Verdict.OK_EMPTY,
            Verdict.OK_NEW,
            Verdict.OK_RAN,
            Verdict.PROVED,
        )


class CheckKind(_Text):
    """What an :class:`OutputCheck` checked: failure lines word each kind its own way."""

    OUTPUT = "output"
    """One output's values against the expected ones (its name is the output's)."""
    INTERFACE = "interface"
    """Order, dtype or static dims of an input or output (``interface: ...``)."""
    PROBE = "probe"
    """An extra run a step's contract asked for (``probe ...``)."""
    PROOF = "proof"
    """A property shown without running the model (a structural proof, ``surgeon.verify.proof``)."""


@dataclass
class OutputCheck:
    """Comparison of one output (or one probe) with its expected value."""

    name: str
    ok: bool
    verdict: Verdict
    max_abs: float = 0.0
    max_rel: float = 0.0
    rtol: float = 0.0
    atol: float = 0.0
    shape: tuple[int, ...] = ()
    note: str = ""
    kind: CheckKind = CheckKind.OUTPUT

    def __post_init__(self) -> None:
        self.verdict = Verdict(self.verdict)
        self.kind = CheckKind(self.kind)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (the enums as their strings), one key per field."""
        return {
            k: (list(v) if isinstance(v, tuple) else v.value if isinstance(v, Enum) else v)
            for k, v in self.__dict__.items()
        }


@dataclass(frozen=True)
class Tolerance:
    """Numeric contract: ``|a - b| <= atol + rtol * |b|`` elementwise."""

    rtol: float
    atol: float

    def loosest(self, other: Tolerance | None) -> Tolerance:
        if other is None:
            return self
        return Tolerance(max(self.rtol, other.rtol), max(self.atol, other.atol))


@dataclass
class StepCheck:
    """All checks of one verification run."""

    outputs: list[OutputCheck] = field(default_factory=list)
    device: str = ""
    sizes: list[str] = field(default_factory=list)
    """The size used for each symbolic dim of the checked model, and why ("batch=2 (traced)")."""
    divergence: Any = None
    """Where a failed check first diverges (``surgeon.verify.localize.Divergence``), when localized."""

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    def failures(self) -> list[OutputCheck]:
        return [o for o in self.outputs if not o.ok]


# --- comparison ---------------------------------------------------------------------------------


def compare(
    name: str, expected: np.ndarray, actual: np.ndarray, tol: Tolerance, kind: CheckKind = CheckKind.OUTPUT
) -> OutputCheck:
    """Compare two arrays: shape, dtype, max abs / rel error, non-finite values matched by position."""
    import numpy as np

    expected, actual = np.asarray(expected), np.asarray(actual)
    base: dict[str, Any] = {
        "name": name,
        "rtol": tol.rtol,
        "atol": tol.atol,
        "shape": tuple(actual.shape),
        "kind": kind,
    }
    if expected.shape != actual.shape:
        return OutputCheck(
            **base, ok=False, verdict=Verdict.FAIL, note=f"shape {actual.shape} != expected {expected.shape}"
        )
    if expected.dtype != actual.dtype:
        return OutputCheck(
            **base, ok=False, verdict=Verdict.FAIL, note=f"dtype {actual.dtype} != expected {expected.dtype}"
        )
    if expected.size == 0:
        return OutputCheck(**base, ok=True, verdict=Verdict.OK_EMPTY, note="empty output: nothing to compare")
    if expected.dtype.kind in "OSU":
        ok = bool(np.array_equal(expected, actual))
        return OutputCheck(
            **base, ok=ok, verdict=Verdict.OK if ok else Verdict.FAIL, note="" if ok else "strings differ"
        )
    e = expected.astype(np.float64)
    a = actual.astype(np.float64)
    e_fin, a_fin = np.isfinite(e), np.isfinite(a)
    note = ""
    nonfinite_ok = np.array_equal(e_fin, a_fin) and np.array_equal(e[~e_fin], a[~a_fin], equal_nan=True)
    n_nonfinite = int((~e_fin).sum())
    both = e_fin & a_fin
    diff = np.abs(e[both] - a[both]) if both.any() else np.zeros(1)
    max_abs = float(diff.max()) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(e[both]), np.finfo(np.float64).tiny) if both.any() else np.zeros(1)
    max_rel = float(rel.max()) if rel.size else 0.0
    within = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(e[both]))) if both.any() else True
    ok = within and nonfinite_ok
    if n_nonfinite or not a_fin.all():
        if nonfinite_ok:
            note = f"{n_nonfinite} non-finite values, same positions and values in both"
        else:
            note = f"non-finite values differ: expected {n_nonfinite}, got {int((~a_fin).sum())}"
    if not both.any():
        note = note or "no finite values"
    verdict = Verdict.OK if ok else Verdict.FAIL
    if ok and n_nonfinite:
        verdict = Verdict.OK_NONFINITE
    return OutputCheck(**base, ok=ok, verdict=verdict, max_abs=max_abs, max_rel=max_rel, note=note)
