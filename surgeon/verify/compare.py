"""Comparing an output with its expected value: errors, tolerance, verdict."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    tolerance: str = ""
    """Where the tolerance came from when it is not the step's ("float16 output": sized for the
    output's precision, as no tolerance was set)."""

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
    """Numeric contract: ``|a - b| <= atol + rtol * |b|`` elementwise. ``explicit``: the user set
    it (a step's ``verify:``, ``--rtol``/``--atol``, the recipe's ``verify.rtol``/``atol``), so it
    applies as written; otherwise a float16 or bfloat16 output is compared at least at the
    tolerance its precision allows (:data:`PRECISION`)."""

    rtol: float
    atol: float
    explicit: bool = False

    def loosest(self, other: Tolerance | None) -> Tolerance:
        if other is None:
            return self
        return Tolerance(max(self.rtol, other.rtol), max(self.atol, other.atol), self.explicit and other.explicit)

    def for_dtype(self, dtype: Any, magnitude: float) -> tuple[Tolerance, str]:
        """The tolerance for an output of ``dtype`` whose expected values reach ``magnitude`` and,
        when it is sized for that precision, why ("float16 output")."""
        name = getattr(dtype, "name", str(dtype))
        eps = PRECISION.get(name)
        if self.explicit or eps is None:
            return self, ""
        sized = Tolerance(max(self.rtol, eps), max(self.atol, eps * magnitude))
        if sized == Tolerance(self.rtol, self.atol):
            return self, ""
        return sized, f"{name} output: rtol {eps:g}, atol {eps:g} x max |expected|"


PRECISION: dict[str, float] = {"float16": 1e-3, "bfloat16": 1e-2}
"""Relative precision of the half types, rounded up: one unit in the last place is at most 2**-10
(float16) and 2**-7 (bfloat16) of a value. Where the user set no tolerance, an output of such a
type is compared at ``rtol`` this and ``atol`` this times the output's largest expected
magnitude: one rounding step of an intermediate as large as the output (a folded constant, a
BatchNormalization fused into a Conv, another order of the same sums) passes, as in every peer
tool, and an error that size is not hidden by near-zero values."""


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
    def proved(self) -> bool:
        """Whether this is a structural proof that holds (no run: :mod:`surgeon.verify.proof`)."""
        return bool(self.outputs) and all(o.verdict == Verdict.PROVED for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    def failures(self) -> list[OutputCheck]:
        return [o for o in self.outputs if not o.ok]


# --- comparison ---------------------------------------------------------------------------------


def compare(
    name: str, expected: np.ndarray, actual: np.ndarray, tol: Tolerance, kind: CheckKind = CheckKind.OUTPUT
) -> OutputCheck:
    """Compare two arrays: shape, dtype, max abs / rel error, non-finite values matched by position.
    Non-tensor outputs (onnxruntime's lists for sequences, dicts for maps, None for an absent
    optional) are compared element by element (:func:`compare_values`)."""
    import numpy as np

    if _structured(expected) or _structured(actual):
        return compare_values(name, expected, actual, tol, kind)
    expected, actual = np.asarray(expected), np.asarray(actual)
    if actual.dtype.name in PRECISION and expected.dtype == actual.dtype and expected.size:
        tol, why = tol.for_dtype(actual.dtype, max_finite_abs(expected))
    else:
        why = ""
    base: dict[str, Any] = {
        "name": name,
        "rtol": tol.rtol,
        "atol": tol.atol,
        "shape": tuple(actual.shape),
        "kind": kind,
        "tolerance": why,
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
    stats = error_stats([(expected, actual)], tol)
    note = ""
    if stats.nonfinite_expected or stats.nonfinite_actual:
        if stats.nonfinite_ok:
            note = f"{stats.nonfinite_expected} non-finite values, same positions and values in both"
        else:
            note = f"non-finite values differ: expected {stats.nonfinite_expected}, got {stats.nonfinite_actual}"
    if not stats.finite_pairs:
        note = note or "no finite values"
    ok = stats.ok
    verdict = Verdict.OK if ok else Verdict.FAIL
    if ok and stats.nonfinite_expected:
        verdict = Verdict.OK_NONFINITE
    max_abs, max_rel = stats.max_abs, stats.max_rel
    return OutputCheck(**base, ok=ok, verdict=verdict, max_abs=max_abs, max_rel=max_rel, note=note)


CHUNK = 1 << 16
"""Elements compared at a time: a comparison's float64 copies and masks stay a few MiB whatever the
output's size (GPT-2's logits over 1024 tokens are 200 MiB in float32; compared whole, in float64,
with their masks, several samples of them took gigabytes). Small outputs of several samples are
compared together, in one chunk."""


@dataclass
class ErrorStats:
    """The elementwise error of actual values against expected ones, gathered a chunk at a time:
    ``|a - e| <= atol + rtol * |e|`` over the pairs finite on both sides, non-finite values matched
    by position and value, and the sums a cosine similarity needs (over the finite pairs)."""

    within: bool = True
    nonfinite_ok: bool = True
    """Non-finite values at the same positions in both, with the same values (NaN matches NaN)."""
    max_abs: float = 0.0
    max_rel: float = 0.0
    nonfinite_expected: int = 0
    nonfinite_actual: int = 0
    finite_pairs: int = 0
    dot: float = 0.0
    norm_expected: float = 0.0
    """Sum of squares of the expected finite pairs' values (``norm_actual`` the actual ones')."""
    norm_actual: float = 0.0

    @property
    def ok(self) -> bool:
        return self.within and self.nonfinite_ok

    @property
    def cosine(self) -> float:
        """Cosine similarity of the finite pairs: 1 where both sides are all zero, 0 where one is."""
        import math

        if self.norm_expected == self.norm_actual == 0:
            return 1.0
        if not (self.norm_expected and self.norm_actual):
            return 0.0
        return self.dot / math.sqrt(self.norm_expected * self.norm_actual)

    def _add(self, expected: np.ndarray, actual: np.ndarray, tol: Tolerance, scratch: _Scratch) -> None:
        """One chunk: flat float64 arrays of the same size, ``scratch``'s own (overwritten). The
        work is done in ``scratch``'s buffers: a chunk allocates nothing (an allocation of this
        size is a fresh mapping from the system, its pages faulted in each time: 3x slower)."""
        import numpy as np

        n = expected.size
        e_fin, a_fin = np.isfinite(expected, out=scratch.flags[:n]), np.isfinite(actual, out=scratch.more[:n])
        spare, flags = scratch.spare[:n], scratch.flags[:n]
        if not (e_fin.all() and a_fin.all()):
            self.nonfinite_expected += int(n - np.count_nonzero(e_fin))
            self.nonfinite_actual += int(n - np.count_nonzero(a_fin))
            self.nonfinite_ok = (
                self.nonfinite_ok
                and np.array_equal(e_fin, a_fin)
                and np.array_equal(expected[~e_fin], actual[~a_fin], equal_nan=True)
            )
            both = e_fin & a_fin
            expected, actual = expected[both], actual[both]
            spare, flags = np.empty_like(expected), np.empty(expected.size, dtype=bool)
        if not expected.size:
            return
        self.finite_pairs += int(expected.size)
        self.dot += float(expected @ actual)
        self.norm_expected += float(expected @ expected)
        self.norm_actual += float(actual @ actual)
        diff = np.subtract(expected, actual, out=actual)
        np.abs(diff, out=diff)
        magnitude = np.abs(expected, out=expected)
        self.max_abs = max(self.max_abs, float(diff.max()))
        bound = np.multiply(magnitude, tol.rtol, out=spare)
        bound += tol.atol
        self.within = self.within and bool(np.less_equal(diff, bound, out=flags).all())
        # a difference against an expected ~0: the relative error is inf
        rel = np.maximum(magnitude, np.finfo(np.float64).tiny, out=spare)
        with np.errstate(over="ignore"):
            np.divide(diff, rel, out=rel)
        self.max_rel = max(self.max_rel, float(rel.max()))


class _Scratch:
    """The buffers one comparison works in, ``size`` values each (at most :data:`CHUNK`)."""

    def __init__(self, size: int) -> None:
        import numpy as np

        self.expected, self.actual, self.spare = (np.empty(size) for _ in range(3))
        self.flags, self.more = np.empty(size, dtype=bool), np.empty(size, dtype=bool)


def error_stats(pairs: Iterable[tuple[np.ndarray, np.ndarray]], tol: Tolerance, total: int | None = None) -> ErrorStats:
    """:class:`ErrorStats` of ``(expected, actual)`` pairs of arrays (each pair the same size;
    compared as float64, :data:`CHUNK` elements at a time, so memory stays bounded whatever their
    size; ``pairs`` may be a generator, each pair taken when its turn comes). ``total``: the
    values of all pairs, where a generator's caller knows it (a list's is counted): a small
    comparison gets buffers its size, not a chunk's."""
    import numpy as np

    stats = ErrorStats()
    scratch: _Scratch | None = None
    size = 0
    if total is None and isinstance(pairs, Sequence):
        total = sum(int(np.size(e)) for e, _ in pairs)
    room = max(1, min(CHUNK, total)) if total is not None else CHUNK

    def take(expected: np.ndarray, actual: np.ndarray) -> None:
        """Copies a piece into the chunk being filled (as float64); compares a full chunk."""
        nonlocal scratch, size
        if scratch is None:
            scratch = _Scratch(room)
        end = size + expected.size
        np.copyto(scratch.expected[size:end], expected, casting="unsafe")
        np.copyto(scratch.actual[size:end], actual, casting="unsafe")
        size = end
        if size == room:
            flush()

    def flush() -> None:
        nonlocal size
        if size and scratch is not None:
            stats._add(scratch.expected[:size], scratch.actual[:size], tol, scratch)
            size = 0

    for expected, actual in pairs:
        fe, fa = np.asarray(expected).reshape(-1), np.asarray(actual).reshape(-1)
        start = 0
        while start < fe.size:  # pieces that fill the chunk being filled, then whole chunks
            stop = min(fe.size, start + room - size)
            take(fe[start:stop], fa[start:stop])
            start = stop
    flush()
    return stats


def max_finite_abs(values: np.ndarray) -> float:
    """The largest finite magnitude in ``values`` (0 where none), a chunk at a time."""
    import numpy as np

    flat, top = np.asarray(values).reshape(-1), 0.0
    for start in range(0, flat.size, CHUNK):
        chunk = np.abs(flat[start : start + CHUNK].astype(np.float64))
        top = max(top, float(chunk[np.isfinite(chunk)].max(initial=0.0)))
    return top


# --- non-tensor values (sequences, maps, optionals) ------------------------------------------------


def _structured(value: Any) -> bool:
    """A sequence, map or absent optional as onnxruntime returns it (a list, a dict, None)."""
    import numpy as np

    if value is None or isinstance(value, dict):
        return True
    return isinstance(value, list) and any(e is None or isinstance(e, (dict, list, np.ndarray)) for e in value)


def compare_values(
    name: str, expected: Any, actual: Any, tol: Tolerance, kind: CheckKind = CheckKind.OUTPUT
) -> OutputCheck:
    """Compare a non-tensor output: the same structure (sequence lengths, map keys, present or
    absent optionals) and every value within ``tol`` (tensors as :func:`compare` compares them;
    the numbers of maps together). The note names the first place that differs (``[3][1]``)."""
    import numpy as np

    scalars: list[tuple[str, Any, Any]] = []
    arrays: list[tuple[str, Any, Any]] = []
    problem = _walk(expected, actual, "", scalars, arrays)
    count = len(expected) if isinstance(expected, (list, dict)) else 0
    base: dict[str, Any] = {"name": name, "rtol": tol.rtol, "atol": tol.atol, "shape": (count,), "kind": kind}
    if problem:
        return OutputCheck(**base, ok=False, verdict=Verdict.FAIL, note=problem)
    checks: list[tuple[str, OutputCheck]] = [(path, compare(name, e, a, tol, kind)) for path, e, a in arrays]
    if scalars:
        e_all = np.array([e for _, e, _ in scalars])
        a_all = np.array([a for _, _, a in scalars])
        whole = compare(name, e_all, a_all, tol, kind)
        where = "" if whole.ok else _first_scalar_failure(scalars, tol)
        checks.append((where, whole))
    max_abs = max((c.max_abs for _, c in checks), default=0.0)
    max_rel = max((c.max_rel for _, c in checks), default=0.0)
    bad = next(((path, c) for path, c in checks if not c.ok), None)
    what = f"{_kind_of(expected)}, compared element-wise"
    if bad is not None:
        path, c = bad
        note = f"{what}: at {path or '[?]'}: {c.note or 'values differ'}"
        return OutputCheck(**base, ok=False, verdict=Verdict.FAIL, max_abs=max_abs, max_rel=max_rel, note=note)
    return OutputCheck(**base, ok=True, verdict=Verdict.OK, max_abs=max_abs, max_rel=max_rel, note=what)


def _kind_of(value: Any) -> str:
    if value is None:
        return "absent optional"
    if isinstance(value, dict):
        return f"map of {len(value)}"
    inner = {_kind_of(e).split(" ")[0] if isinstance(e, (dict, list)) or e is None else "tensor" for e in value}
    return f"sequence of {len(value)} {'/'.join(sorted(inner)) or 'element'}(s)"


def _walk(e: Any, a: Any, path: str, scalars: list[tuple[str, Any, Any]], arrays: list[tuple[str, Any, Any]]) -> str:
    """Pair up the leaves of two values; the first structural difference, or ''."""
    import numpy as np

    at = path or "the output"
    if e is None or a is None:
        return (
            ""
            if e is None and a is None
            else f"at {at}: {'absent' if a is None else 'present'}, expected {'absent' if e is None else 'present'}"
        )
    if isinstance(e, dict) or isinstance(a, dict):
        if not (isinstance(e, dict) and isinstance(a, dict)):
            return f"at {at}: a {type(a).__name__}, expected a map"
        if set(e) != set(a):
            extra, missing = sorted(map(str, set(a) - set(e))), sorted(map(str, set(e) - set(a)))
            return f"at {at}: map keys differ (missing {', '.join(missing) or '-'}; extra {', '.join(extra) or '-'})"
        for k in e:
            problem = _walk(e[k], a[k], f"{path}[{k!r}]", scalars, arrays)
            if problem:
                return problem
        return ""
    if isinstance(e, list) or isinstance(a, list):
        if not (isinstance(e, list) and isinstance(a, list)):
            return f"at {at}: a {type(a).__name__}, expected a sequence"
        if len(e) != len(a):
            return f"at {at}: sequence of {len(a)}, expected {len(e)}"
        for i, (ei, ai) in enumerate(zip(e, a)):
            problem = _walk(ei, ai, f"{path}[{i}]", scalars, arrays)
            if problem:
                return problem
        return ""
    if isinstance(e, np.ndarray) or isinstance(a, np.ndarray):
        arrays.append((path, e, a))
    else:
        scalars.append((path, e, a))
    return ""


def _first_scalar_failure(scalars: list[tuple[str, Any, Any]], tol: Tolerance) -> str:
    import numpy as np

    for path, e, a in scalars:
        if not compare("", np.asarray(e), np.asarray(a), tol).ok:
            return path
    return ""
