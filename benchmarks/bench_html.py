"""The HTML report of a large model stays small and opens fast (issue 20: at most 10 MB, open in
under 3 s for a 10 000-node model).

Builds a chain model of ``--nodes`` nodes (Add/Mul/Relu on a [1, 16] float tensor, with dead
branches), applies rename-io, cleanup (drops the dead branches) and to-fp16 (touches every node:
the changed region is capped) with every pass verified and ``--html``, then renders the page once
more with a per-tensor error trace over every tensor (the worst case: a localized failure at the
last node). Each page is opened in headless Chromium (network off) and timed to its load event;
a 5-node model's page, opened in the same browser the same way, is the baseline of the ratio.

    python benchmarks/bench_html.py --nodes 10000 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import open_page  # noqa: E402

MAX_BYTES = 10 << 20
MAX_OPEN_S = 3.0


def chain_model(path: Path, nodes: int, dead_every: int = 200) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ops = ("Add", "Mul", "Relu")
    made, inits, t = [], [], "x"
    for i in range(nodes):
        op = ops[i % 3]
        out = f"t{i}"
        if op == "Relu":
            made.append(helper.make_node(op, [t], [out], name=f"n{i}"))
        else:
            c = f"c{i}"
            value = np.full((16,), 1.0 if op == "Mul" else 0.0, np.float32)  # exact in float16: passes
            inits.append(numpy_helper.from_array(value, c))
            made.append(helper.make_node(op, [t, c], [out], name=f"n{i}"))
        if i % dead_every == dead_every - 1:
            made.append(helper.make_node("Identity", [out], [f"dead{i}"], name=f"dead{i}"))
        t = out
    graph = helper.make_graph(
        made,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, [1, 16])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))


RECIPE = """version: 1
verify: {mode: each, seed: 0}
passes:
  - rename-io: {inputs: {x: image}}
  - cleanup: {}
  - to-fp16: {keep_io_types: true}
    verify: {rtol: 1.0e-2, atol: 1.0e-2}
"""


def run(nodes: int, work: Path) -> dict[str, object]:
    from surgeon.html_report import render_run, write_page

    rows = []
    for label, n in (("baseline (5 nodes)", 5), (f"{nodes} nodes", nodes)):
        model, recipe = work / f"m{n}.onnx", work / "recipe.yaml"
        chain_model(model, n)
        recipe.write_text(RECIPE)
        page, report = work / f"m{n}.html", work / f"m{n}.json"
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "surgeon", "apply", str(recipe), "-i", str(model), "--dry-run", "-q"]
        res = subprocess.run([*cmd, "--html", str(page), "--report", str(report)], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"apply failed ({res.returncode}): {res.stderr}")
        apply_s = time.perf_counter() - t0
        pages = [(label, page)]
        if n > 5:  # the worst case: every tensor's error plotted (a localized failure at the last node)
            data = json.loads(report.read_text())
            trace = [
                {"tensor": f"t{i}", "node": f"n{i}", "op": "Add", "max_abs": 1e-6 * (1 + i), "max_rel": 0.0}
                | {"ok": i < n - 1}
                for i in range(n)
            ]
            div = {"tensor": f"t{n - 1}", "node": f"n{n - 1}", "op": "Add", "trace": trace, "compared": n}
            data["steps"][-1]["divergence"] = data["final_divergence"] = div
            t1 = time.perf_counter()
            worst = work / f"m{n}-trace.html"
            write_page(worst, render_run(data))
            pages.append((f"{label} + error plot of {n} tensors", worst))
            render_s = time.perf_counter() - t1
        else:
            render_s = 0.0
        for what, p in pages:
            loads = [open_page(p, width=1280, height=1600).load_seconds for _ in range(3)]
            loaded = open_page(p, width=1280, height=1600)
            rows.append(
                {
                    "page": what,
                    "bytes": p.stat().st_size,
                    "open_s": sorted(loads)[1],
                    "errors": loaded.errors,
                    "requests": loaded.requests,
                    "apply_s": apply_s,
                    "render_s": render_s,
                }
            )
    base = rows[0]["open_s"]
    for r in rows:
        r["open_ratio"] = r["open_s"] / base if base else float("nan")  # type: ignore[operator]
        r["ok"] = (
            r["bytes"] <= MAX_BYTES and r["open_s"] <= MAX_OPEN_S and not r["errors"] and not r["requests"]  # type: ignore[operator]
        )
    return {"nodes": nodes, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--work", type=Path, help="folder for the models and pages (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run(args.nodes, work)
    print(f"{'page':48} {'size':>10} {'open (median of 3)':>19} {'ratio':>7}  target (<= 10 MB, < 3 s)")
    for r in result["rows"]:  # type: ignore[attr-defined]
        size = f"{r['bytes'] / 1e6:.2f} MB"
        print(
            f"{r['page']:48} {size:>10} {r['open_s']:>18.3f}s {r['open_ratio']:>6.2f}x  "
            + ("met" if r["ok"] else "NOT MET")
        )
    if args.json:
        args.json.write_text(json.dumps([result], indent=1))
    return 0 if all(r["ok"] for r in result["rows"]) else 1  # type: ignore[attr-defined]


if __name__ == "__main__":
    raise SystemExit(main())
