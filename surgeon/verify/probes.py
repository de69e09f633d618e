"""Probes of an axis made dynamic (``mark-dynamic``, and ``surgeon verify a b`` where ``b`` has axes
``a`` has static): a batch axis is checked for batch consistency, another axis at a new size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from surgeon.verify.compare import OutputCheck
    from surgeon.verify.contract import ProbeEnv

Axes = dict[str, dict[int, str]]
"""``{tensor: {axis: symbol}}``."""


class _SymbolProbe:
    def __init__(self, symbol: str, ins: Axes, outs: Axes, traced: Mapping[str, int]) -> None:
        self.symbol, self.ins, self.outs, self.traced = symbol, ins, outs, dict(traced)

    def _dims(self, env: ProbeEnv, size: int) -> dict[str, int]:
        """Every symbol of the step at its traced size (or verify.dims), this one at ``size``; the
        model's other symbols as the check chose them (``env.make_feed``)."""
        dims = {s: env.config.dims.get(s, v) for s, v in self.traced.items()}
        dims[self.symbol] = size
        return dims

    def _base(self, env: ProbeEnv) -> int:
        from surgeon.errors import UsageError

        base: int | None = self.traced.get(self.symbol, env.config.dims.get(self.symbol, env.sizes.get(self.symbol)))
        if base is None:
            raise UsageError(f"no size known for '{self.symbol}'; set verify.dims: {{{self.symbol}: N}}")
        return base


class BatchProbe(_SymbolProbe):
    """A batch of N distinct samples must give the outputs of N runs of the model before the step,
    one sample (of the traced batch size) each, stacked along each output's batch axis."""

    @property
    def name(self) -> str:
        return f"batch consistency ({self.symbol})"

    def run(self, env: ProbeEnv) -> list[OutputCheck]:
        import numpy as np

        from surgeon.verify.compare import compare

        base, n = self._base(env), env.config.probe_batch
        feed = env.make_feed(self._dims(env, base * n))
        chunks = []
        for k in range(n):
            chunk = dict(feed)
            for name, axes in self.ins.items():
                for axis, sym in axes.items():
                    if sym == self.symbol and name in chunk:
                        chunk[name] = np.take(chunk[name], range(k * base, (k + 1) * base), axis=axis)
            chunks.append(chunk)
        actual = env.run_after([feed])[0]
        singles = env.run_before(chunks)
        checks = []
        for name, axes in self.outs.items():
            out_axis = next((a for a, s in axes.items() if s == self.symbol), None)
            if out_axis is None or name not in actual:
                continue
            expected = np.concatenate([o[name] for o in singles], axis=out_axis)
            checks.append(
                compare(
                    f"probe {self.symbol}={base * n}: {name} vs {n} runs of {self.symbol}={base}",
                    expected,
                    actual[name],
                    env.tol,
                )
            )
        return checks or [_nothing(self.name, self.symbol)]


class SizeProbe(_SymbolProbe):
    """At another size the model must run and each output axis named by an input symbol must
    have the size fed for it."""

    @property
    def name(self) -> str:
        return f"size ({self.symbol})"

    def run(self, env: ProbeEnv) -> list[OutputCheck]:
        from surgeon.verify.compare import OutputCheck

        base = self._base(env)
        size = 2 * base if base > 1 else 3
        dims = self._dims(env, size)
        actual = env.run_after([env.make_feed(dims)])[0]
        checks = []
        for name, value in actual.items():
            bad = [
                f"axis {a} is {value.shape[a]}, '{s}' is {dims[s]}"
                for a, s in self.outs.get(name, {}).items()
                if s in dims and a < value.ndim and value.shape[a] != dims[s]
            ]
            checks.append(
                OutputCheck(
                    f"probe {self.symbol}={size}: {name}",
                    not bad,
                    "FAIL" if bad else "ok (ran)",
                    shape=tuple(value.shape),
                    note="; ".join(bad),
                )
            )
        if not any(self.symbol in axes.values() for axes in self.outs.values()):
            checks.append(_nothing(self.name, self.symbol))
        return checks


def _nothing(probe: str, symbol: str) -> OutputCheck:
    """A probe with nothing to compare says so (never a plain ok)."""
    from surgeon.verify.compare import OutputCheck

    note = f"no output axis is '{symbol}': only that the model runs at another size; name an output axis (outputs: {{y: {{0: {symbol}}}}}) to compare"
    return OutputCheck(f"probe {probe}", True, "proved nothing", note=note)
