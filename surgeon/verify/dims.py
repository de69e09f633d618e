"""Sizes for symbolic dims: each chosen once, from the user (``verify.dims``), the data
(``verify.inputs``), the traced size a pass replaced, or ``verify.default_dim``, with the reason
reported ("batch=1 (default)", "height=64 (traced)").

A dim is a symbol when it has a ``dim_param`` that names something. Dims with ``dim_value < 0``,
with neither value nor param, or with a placeholder param (``?``, ``-1``, ``None``: converters put
these on axes that are not equal, H and W alike) are each their own symbol, keyed ``input:axis``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from surgeon.verify.specs import axis_key

if TYPE_CHECKING:
    import numpy as np

    from surgeon.verify.config import VerifyConfig
    from surgeon.verify.specs import InputSpec


@dataclass(frozen=True)
class Chosen:
    size: int
    why: str
    """verify.dims, verify.inputs, traced, default, or ``from input 'x'``."""


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
