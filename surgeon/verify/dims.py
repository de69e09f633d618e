"""Sizes for symbolic dims: each chosen once, from the user (``verify.dims``), the data
(``verify.inputs``), the traced size a pass replaced, or ``verify.default_dim``, with the reason
reported ("batch=1 (default)", "height=64 (traced)").

A dim is a symbol when it has a ``dim_param`` that names something. Dims with ``dim_value < 0``,
with neither value nor param, or with a placeholder param (``?``, ``-1``, ``None``: converters put
these on axes that are not equal, H and W alike) are each their own symbol, keyed ``input:axis``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from surgeon.verify.specs import axis_key

if TYPE_CHECKING:
    import numpy as np

    from surgeon.verify.config import VerifyConfig
    from surgeon.verify.specs import InputSpec


@dataclass(frozen=True)
class Chosen:
    size: int
    why: str
    """verify.dims, verify.inputs, traced, default, searched, or ``from input 'x'``."""


@dataclass
class Sizes:
    """The size chosen for every symbol (or ``input:axis`` key) of some inputs, and why."""

    chosen: dict[str, Chosen] = field(default_factory=dict)

    def set(self, key: str, size: int, why: str) -> None:
        self.chosen.setdefault(key, Chosen(int(size), why))

    def dims(self) -> dict[str, int]:
        return {k: c.size for k, c in self.chosen.items()}

    def lines(self) -> list[str]:
        return [f"{k}={c.size} ({c.why})" for k, c in self.chosen.items()]

    def defaulted(self) -> list[str]:
        return [k for k, c in self.chosen.items() if c.why == "default"]

    searched_up_to: int = 0
    """The largest size :func:`search_sizes` tried when it found none the source runs at (0: no search)."""

    def hint(self) -> str:
        """What to set to choose other sizes: every size surgeon chose itself."""
        keys = [k for k, c in self.chosen.items() if c.why not in ("verify.dims", "verify.inputs")]
        return "set verify.dims: {" + ", ".join(f"{_yaml_key(k)}: N" for k in keys) + "}" if keys else ""

    def describe(self) -> str:
        """One clause for error messages: the sizes used and the key to set."""
        if not self.chosen:
            return ""
        hint = self.hint()
        return "sizes used: " + ", ".join(self.lines()) + (f"; {hint} to choose others" if hint else "")


def _yaml_key(key: str) -> str:
    return f"'{key}'" if ":" in key else key


def symbols(specs: Iterable[InputSpec]) -> list[tuple[str, str, int]]:
    """(symbol, input, axis) for every symbolic axis, in input order."""
    return [(d, s.name, a) for s in specs for a, d in enumerate(s.dims) if isinstance(d, str)]


def choose_sizes(
    specs: Sequence[InputSpec],
    config: VerifyConfig,
    observed: Mapping[str, np.ndarray] | None = None,
    observed_why: str = "traced",
    inherited: Sizes | None = None,
    traced: Mapping[str, int] | None = None,
    observed_first: bool = False,
    hints: Mapping[str, tuple[int, str]] | None = None,
) -> Sizes:
    """A size for each symbol of ``specs``: ``verify.dims`` first; then the shapes of ``observed``
    arrays (data or the feed the model got at its traced sizes), a symbol keeping the reason it
    had in ``inherited`` (the source's sizes) where it had one; then ``traced`` sizes passes
    reported; then ``inherited``; then ``verify.default_dim``. A symbol whose observed axes differ
    in size is not one symbol: each of its axes gets its own ``input:axis`` size.
    ``observed_first``: the arrays are the data the model gets (a check's feed): they win.
    ``hints``: sizes later steps will fix (``fix-dims``), by symbol or ``input:axis``, after verify.dims."""
    out = Sizes()
    found = symbols(specs)
    for sym, name, axis in [] if observed_first else found:
        key = axis_key(name, axis)
        if key in config.dims:
            out.set(key, config.dims[key], "verify.dims")
        elif sym in config.dims:
            out.set(sym, config.dims[sym], "verify.dims")
    for sym, name, axis in found:
        key = axis_key(name, axis)
        for k in (key, sym):
            if hints and k in hints and sym not in out.chosen and key not in out.chosen:
                out.set(k, *hints[k])
    seen: dict[str, set[int]] = {}
    for sym, name, axis in found:
        if observed is not None and name in observed and axis < observed[name].ndim:
            seen.setdefault(sym, set()).add(int(observed[name].shape[axis]))
    for sym, name, axis in found:
        key = axis_key(name, axis)
        if sym in out.chosen or key in out.chosen or sym not in seen or observed is None:
            continue
        size = int(observed[name].shape[axis])
        old = inherited.chosen.get(sym) if inherited is not None else None
        why = old.why if old is not None and old.size == size else observed_why
        if why == observed_why and config.dims.get(sym, size) != size:
            why = f"{observed_why}; verify.dims {sym}={config.dims[sym]} cannot apply"
        if len(seen[sym]) > 1:
            out.set(key, size, f"{observed_why}; '{sym}' differs between axes")
        else:
            out.set(sym, size, why)
    for sym, _, _ in found:
        if sym in out.chosen:
            continue
        if traced and sym in traced:
            out.set(sym, traced[sym], "traced")
        elif inherited is not None and sym in inherited.chosen:
            c = inherited.chosen[sym]
            out.set(sym, c.size, c.why)
    for sym, name, axis in found:
        if sym not in out.chosen and axis_key(name, axis) not in out.chosen:
            out.set(sym, config.default_dim, "default")
    return out


def sizes_of_data(specs: Sequence[InputSpec], data: Mapping[str, np.ndarray]) -> Sizes:
    """The sizes ``verify.inputs`` gives each symbol (per axis where its axes differ)."""
    from surgeon.verify.config import VerifyConfig

    return choose_sizes(specs, VerifyConfig(), data, "verify.inputs")


T = TypeVar("T")

SEARCH_LIMIT = 4096
""":func:`search_sizes` doubles unsized symbols up to this size."""
SEARCH_BYTES = 256 << 20
"""... and no further than random data of this many bytes for all inputs together."""
_SIZE_WORDS = re.compile(
    r"shape|dimension|\bdims?\b|size|kernel|broadcast|reshape|\bpads?\b|stride|invalid input|rank|too small|length",
    re.IGNORECASE,
)
_VALUE_WORDS = re.compile(r"indic|index|out of (range|bounds)|\bnan\b|divide by zero", re.IGNORECASE)


def search_sizes(
    specs: Sequence[InputSpec],
    sizes: Sizes,
    attempt: Callable[[dict[str, int]], T | None],
    limit: int = SEARCH_LIMIT,
) -> tuple[Sizes, T] | None:
    """Sizes the source runs at, when it fails at those chosen: the symbols nothing sized (``default``)
    are doubled together (a symbol stays one size wherever it appears, and symbols that must agree
    rise together) until ``attempt`` succeeds, then each is brought back to the smallest power of
    two above its default at which the source still runs (a batch returns to 1, ``samples`` stays
    512). ``attempt(dims)`` runs the source at ``dims`` and returns its result, or None when it fails.
    Returns the new sizes (``searched`` where they changed) and the successful attempt's result, or
    None (``sizes.searched_up_to`` then says how far it looked)."""
    free = sizes.defaulted()
    if not free:
        return None
    base = sizes.dims()
    size, found = max(base[k] for k in free), None
    while found is None and size < limit:
        size *= 2
        dims = {**base, **{k: max(base[k], size) for k in free}}
        if _bytes(specs, dims) > SEARCH_BYTES:
            break
        got = attempt(dims)
        if got is not None:
            found = (dims, got)
    if found is None:
        sizes.searched_up_to = size
        return None
    dims, got = found
    for k in free:  # each symbol as small as the source allows, the others where they are
        step = base[k]
        while step < dims[k]:
            trial = {**dims, k: step}
            res = attempt(trial)
            if res is not None:
                dims, got = trial, res
                break
            step *= 2
    out = Sizes()
    for k, c in sizes.chosen.items():
        out.chosen[k] = c if dims[k] == c.size else Chosen(dims[k], "searched")
    return out, got


def _bytes(specs: Sequence[InputSpec], dims: Mapping[str, int]) -> int:
    """Bytes of random data for ``specs`` at ``dims`` (a dim with no size counts 1)."""
    total = 0
    for s in specs:
        n = 1
        for axis, d in enumerate(s.dims):
            n *= d if isinstance(d, int) else dims.get(axis_key(s.name, axis), dims.get(d or "", 1))
        total += n * max(s.dtype.itemsize, 1)
    return total


def sizes_likely(error: str, sizes: Sizes) -> bool:
    """Whether a run's failure looks like one of sizes (a shape, a kernel larger than the input)
    rather than of values, for a model some of whose sizes surgeon chose itself."""
    chosen = any(c.why in ("default", "searched") for c in sizes.chosen.values()) or sizes.searched_up_to > 0
    return chosen and bool(_SIZE_WORDS.search(error)) and not _VALUE_WORDS.search(error)


def source_failure_tail(error: str, sizes: Sizes) -> str:
    """The end of a source-fails message for generated inputs: the sizes used, then the keys to set:
    ``verify.dims`` (with how far the search looked) when sizes are the likely cause, else
    ``verify.ranges`` / ``verify.inputs``."""
    if sizes_likely(error, sizes):
        used = "sizes used: " + ", ".join(sizes.lines())
        tried = ""
        if sizes.searched_up_to:
            tried = f"; no size up to {sizes.searched_up_to} of {', '.join(sizes.defaulted())} makes it run"
        keys = [k for k, c in sizes.chosen.items() if c.why != "verify.inputs"]
        wanted = "{" + ", ".join(f"{_yaml_key(k)}: N" for k in keys) + "}"
        return (
            f"{used}{tried}; the sizes are the likely cause: set verify.dims: {wanted} to sizes the model "
            "accepts, or give verify.inputs"
        )
    described = sizes.describe()
    other = "or set verify.ranges / verify.inputs" if sizes.hint() else "set verify.ranges or verify.inputs"
    return f"{described}; {other}" if described else other
