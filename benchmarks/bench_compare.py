"""Comparing large outputs: the verifier's ``compare`` (one sample) and to-fp16's budget ``judge``
(several samples, with the cosine) against ``numpy.allclose`` on the same arrays (what the peers
call), measured in the same session: wall time and the most memory held at once above the inputs
(numpy reports its buffers to tracemalloc).

The outputs are a language model's logits, ``1 x TOKENS x 50257`` float32 (GPT-2's vocabulary;
200 MiB each at 1024 tokens), the candidate off by a small error. Before the comparison went a
chunk at a time, ``judge`` on 4 such samples held 12.6 GiB more and took 38 s::

    python benchmarks/bench_compare.py --tokens 1024 --samples 4
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

VOCAB = 50257


def measure(fn: Callable[[], Any]) -> tuple[float, int]:
    """Seconds and peak traced bytes above what was held before the call."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        return seconds, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def best(fn: Callable[[], Any], runs: int = 3) -> tuple[float, int]:
    """The fastest of ``runs`` measurements, and the largest peak."""
    got = [measure(fn) for _ in range(runs)]
    return min(t for t, _ in got), max(m for _, m in got)


def main() -> int:
    from surgeon.passes._fp16_budget import judge
    from surgeon.verify.compare import Tolerance, compare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256, help="sequence length of the logits (default 256)")
    ap.add_argument("--samples", type=int, default=4, help="samples the budget judges at once (default 4)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    shape = (1, args.tokens, VOCAB)
    refs = [{"logits": rng.standard_normal(shape, dtype=np.float32)} for _ in range(args.samples)]
    gots = [{"logits": r["logits"] + np.float32(1e-4)} for r in refs]
    size = refs[0]["logits"].nbytes
    budget = type("Budget", (), {"rtol": 1e-3, "atol": 1e-3, "cosine": 0.999, "outputs": {}})()
    tol = Tolerance(1e-3, 1e-3)
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        (
            "compare, 1 sample",
            lambda: compare("logits", refs[0]["logits"], gots[0]["logits"], tol),
            lambda: np.allclose(gots[0]["logits"], refs[0]["logits"], rtol=1e-3, atol=1e-3),
        ),
        (
            f"judge, {args.samples} samples",
            lambda: judge(budget, refs, gots),
            lambda: [np.allclose(g["logits"], r["logits"], rtol=1e-3, atol=1e-3) for r, g in zip(refs, gots)],
        ),
    ]
    print(f"logits {shape} float32, {size / 2**20:.0f} MiB a sample")
    print("| what               | surgeon         | numpy.allclose  | time ratio | memory ratio |")
    for name, ours, theirs in cases:
        ours(), theirs()  # warm-up: the first touch of the pages
        (t_ours, m_ours), (t_peer, m_peer) = best(ours), best(theirs)
        print(
            f"| {name:<18} | {t_ours:5.2f} s {m_ours / 2**20:5.0f} MiB | {t_peer:5.2f} s {m_peer / 2**20:5.0f} MiB "
            f"| {t_ours / t_peer:9.2f}x | {m_ours / max(m_peer, 1):11.3f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
