"""Big graphs, tiny weights: surgeon against the protobuf floor and onnx-graphsurgeon (issue 21).

Generates, in a temporary folder, a chain (``Add``/``Mul``/``Relu`` on ``[1, 8]``, each with its own
8-float weight) and a transformer-like graph (blocks of 16 nodes: Q/K/V MatMuls, Transpose, scaled
scores, Softmax, residual Add, a LayerNorm written out), with ``--nodes`` nodes each, plus a dead
branch (one node in 64) for cleanup. Each method runs in its own process (wall time, peak RSS from
``wait4``, as in bench_large.py):

- floor: ``onnx.load``, rename the input and output in the protobuf, ``onnx.save``
- graphsurgeon: ``onnx.load``, ``gs.import_onnx``, ``gs.export_onnx``, ``onnx.save``
- interface --no-verify: ``surgeon apply`` of rename-io + set-metadata + strip-doc, verification off
- interface proved: the same recipe verified (every step proved structurally, no onnxruntime)
- cleanup --no-verify: ``surgeon run cleanup``, verification off
- cleanup by execution: the same, verified by running it (``verify.prove: false``)
- ort x2: two onnxruntime sessions (source and result) built and run once, with the verifier's
  options (graph optimizations off)
- ort default (graphs up to 20,000 nodes, where surgeon's ``verify.default_session: auto`` runs it):
  the result in onnxruntime's default session (full optimization), loaded and run once in a process
  of its own, as surgeon's last check before writing does

and prints the ratios and whether each target holds: interface recipes at most 2x the floor in time
and peak RSS; cleanup at most 1.5x onnx-graphsurgeon's import + export; verification by execution at
most 1.2x (cleanup unverified + the two sessions; and, where surgeon runs it, + the default-level
session)::

    python benchmarks/bench_graph.py                 # 10k nodes, both shapes (about a minute)
    python benchmarks/bench_graph.py --all           # 10k, 100k and 200k nodes (several minutes)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_large import Row, measure  # noqa: E402

DIM = 8
IN_NAME, OUT_NAME = "x", "y"
INTERFACE_RATIO = 2.0
CLEANUP_RATIO = 1.5
EXEC_RATIO = 1.2


# --- the models ----------------------------------------------------------------------------------


def build_chain(path: Path, nodes: int) -> None:
    import numpy as np
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    ns, inits = [], []
    prev = IN_NAME
    for i in range(nodes):
        op = ("Add", "Mul", "Relu")[i % 3]
        out = OUT_NAME if i == nodes - 1 else f"t{i}"
        if op == "Relu":
            ns.append(helper.make_node("Relu", [prev], [out], name=f"n{i}"))
        else:
            w = (rng.standard_normal((1, DIM)) * 0.1 + (1.0 if op == "Mul" else 0.0)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            ns.append(helper.make_node(op, [prev, f"w{i}"], [out], name=f"n{i}"))
        if i % 64 == 63 and i != nodes - 1:  # a dead branch for cleanup
            ns.append(helper.make_node("Neg", [out], [f"dead{i}"], name=f"dead{i}"))
        prev = out
    _save(path, ns, inits)


def build_transformer(path: Path, nodes: int) -> None:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ns, inits = [], []
    scale = numpy_helper.from_array(np.array(DIM**-0.5, np.float32), "scale")
    eps = numpy_helper.from_array(np.array(1e-5, np.float32), "eps")
    inits += [scale, eps]
    prev = IN_NAME
    blocks = max(1, nodes // 16)
    for b in range(blocks):
        p = f"b{b}_"
        for w in ("q", "k", "v", "o"):
            inits.append(numpy_helper.from_array((rng.standard_normal((DIM, DIM)) * 0.3).astype(np.float32), p + w))
        out = OUT_NAME if b == blocks - 1 else p + "out"
        mk = helper.make_node
        ns += [
            mk("MatMul", [prev, p + "q"], [p + "Q"]),
            mk("MatMul", [prev, p + "k"], [p + "K"]),
            mk("MatMul", [prev, p + "v"], [p + "V"]),
            mk("Transpose", [p + "K"], [p + "Kt"], perm=[1, 0]),
            mk("MatMul", [p + "Q", p + "Kt"], [p + "S"]),
            mk("Mul", [p + "S", "scale"], [p + "Ss"]),
            mk("Softmax", [p + "Ss"], [p + "A"], axis=-1),
            mk("MatMul", [p + "A", p + "V"], [p + "AV"]),
            mk("MatMul", [p + "AV", p + "o"], [p + "O"]),
            mk("Add", [prev, p + "O"], [p + "R"]),
            mk("ReduceMean", [p + "R"], [p + "mu"], axes=[-1], keepdims=1),
            mk("Sub", [p + "R", p + "mu"], [p + "c"]),
            mk("Mul", [p + "c", p + "c"], [p + "c2"]),
            mk("ReduceMean", [p + "c2"], [p + "var"], axes=[-1], keepdims=1),
            mk("Add", [p + "var", "eps"], [p + "ve"]),
            mk("Sqrt", [p + "ve"], [p + "sd"]),
            mk("Div", [p + "c", p + "sd"], [out]),
        ]
        if b % 4 == 3 and b != blocks - 1:
            ns.append(mk("Neg", [out], [p + "dead"]))
        prev = out
    for i, n in enumerate(ns):
        n.name = f"n{i}"
    _save(path, ns, inits)
    del TensorProto


def _save(path: Path, nodes: list[Any], inits: list[Any]) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info(IN_NAME, TensorProto.FLOAT, [1, DIM])],
        [helper.make_tensor_value_info(OUT_NAME, TensorProto.FLOAT, [1, DIM])],
        inits,
    )
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


# --- the methods (each in its own process: `bench_graph.py --method NAME SRC OUT`) ----------------


def method_floor(src: Path, out: Path) -> None:
    import onnx

    model = onnx.load(str(src))
    g = model.graph
    mapping = {IN_NAME: "input", OUT_NAME: "output"}
    for node in g.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name in mapping:
                    field[i] = mapping[name]
    for vi in [*g.input, *g.output]:
        vi.name = mapping.get(vi.name, vi.name)
    onnx.save(model, str(out))


def method_graphsurgeon(src: Path, out: Path) -> None:
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(onnx.load(str(src)))
    onnx.save(gs.export_onnx(graph), str(out))


def method_ort2(src: Path, out: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    feed = {IN_NAME: np.ones((1, DIM), np.float32)}
    opts = ort.SessionOptions()  # the verifier's options: the graph as written, no optimization
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for _ in range(2):
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"]).run(None, feed)


def method_ort_default(src: Path, out: Path) -> None:
    """What surgeon's last check before writing runs (issue 17, ``verify.default_session``): the
    model in onnxruntime's default session (full graph optimization), loaded and run once, in a
    process of its own."""
    import numpy as np
    import onnxruntime as ort

    feed = {IN_NAME: np.ones((1, DIM), np.float32)}
    ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feed)


METHODS = {
    "floor": method_floor,
    "graphsurgeon": method_graphsurgeon,
    "ort x2": method_ort2,
    "ort default": method_ort_default,
}
DEFAULT_SESSION_NODES = 20_000
"""surgeon's ``verify.default_session: auto`` runs the default-level check up to this many nodes."""
INTERFACE = (
    "version: 1\nverify: {{device: cpu, mode: {mode}}}\npasses:\n"
    "  - rename-io: {{inputs: {{x: input}}, outputs: {{y: output}}}}\n"
    "  - set-metadata: {{producer_name: bench}}\n"
    "  - strip-doc: {{}}\n"
)


def _surgeon() -> list[str]:
    exe = Path(sys.executable).with_name("surgeon")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "surgeon.cli"]


def run_one(work: Path, shape: str, nodes: int) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    src, out, log = work / "model.onnx", work / "out.onnx", work / "log.txt"
    (build_chain if shape == "chain" else build_transformer)(src, nodes)
    recipes = {}
    for mode in ("off", "each"):
        recipes[mode] = work / f"interface-{mode}.yaml"
        recipes[mode].write_text(INTERFACE.format(mode=mode))
    noprove = work / "cleanup-exec.yaml"
    noprove.write_text("version: 1\nverify: {device: cpu, prove: false}\npasses:\n  - cleanup: {}\n")
    me = [sys.executable, str(Path(__file__).resolve()), "--method"]
    s = _surgeon()
    cmds = {
        "floor": [*me, "floor", str(src), str(out)],
        "graphsurgeon": [*me, "graphsurgeon", str(src), str(out)],
        "interface --no-verify": [*s, "apply", str(recipes["off"]), "-i", str(src), "-o", str(out), "-q"],
        "interface proved": [*s, "apply", str(recipes["each"]), "-i", str(src), "-o", str(out), "-q"],
        "cleanup --no-verify": [*s, "run", "cleanup", str(src), "-o", str(out), "--no-verify", "-q"],
        "cleanup by execution": [*s, "apply", str(noprove), "-i", str(src), "-o", str(out), "-q"],
        "ort x2": [*me, "ort x2", str(src), str(out)],
    }
    if nodes <= DEFAULT_SESSION_NODES:  # above it surgeon skips that session (and it takes minutes)
        cmds["ort default"] = [*me, "ort default", str(src), str(out)]
    rows = []
    for name, cmd in cmds.items():
        out.unlink(missing_ok=True)
        rows.append(measure(name, cmd, log))
    return rows


def verdicts(rows: list[Row]) -> list[tuple[str, float, float, bool]]:
    by = {r.name: r for r in rows}
    floor, gs = by["floor"], by["graphsurgeon"]
    out = []
    for name in ("interface --no-verify", "interface proved"):
        r = by[name]
        t, m = r.seconds / floor.seconds, r.rss_mb / floor.rss_mb
        out.append(
            (f"{name} <= {INTERFACE_RATIO}x floor (time, RSS)", t, m, t <= INTERFACE_RATIO and m <= INTERFACE_RATIO)
        )
    c = by["cleanup --no-verify"].seconds / gs.seconds
    out.append((f"cleanup <= {CLEANUP_RATIO}x graphsurgeon import+export", c, 0.0, c <= CLEANUP_RATIO))
    budget = by["cleanup --no-verify"].seconds + by["ort x2"].seconds
    e = by["cleanup by execution"].seconds / budget
    out.append((f"execution <= {EXEC_RATIO}x (unverified + 2 sessions)", e, 0.0, e <= EXEC_RATIO))
    if "ort default" in by:  # the third session surgeon runs below DEFAULT_SESSION_NODES
        e3 = by["cleanup by execution"].seconds / (budget + by["ort default"].seconds)
        what = f"execution <= {EXEC_RATIO}x (unverified + 2 sessions + the default-level session)"
        out.append((what, e3, 0.0, e3 <= EXEC_RATIO))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--nodes", type=int, nargs="+", default=[10_000], help="graph sizes (default 10000)")
    p.add_argument("--all", action="store_true", help="10k, 100k and 200k nodes")
    p.add_argument("--shapes", nargs="+", default=["chain", "transformer"], choices=["chain", "transformer"])
    p.add_argument("--json", type=Path, help="write the measurements as JSON")
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.method:
        METHODS[args.method](Path(args.paths[0]), Path(args.paths[1]))
        return 0
    sizes = [10_000, 100_000, 200_000] if args.all else args.nodes
    work = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    results: list[dict[str, Any]] = []
    ok = True
    try:
        for shape in args.shapes:
            for n in sizes:
                rows = run_one(work / f"{shape}-{n}", shape, n)
                shutil.rmtree(work / f"{shape}-{n}", ignore_errors=True)
                print(f"\n{shape}, {n} nodes")
                print("| method | wall s | peak RSS MB | x floor time | x floor RSS |\n|---|---:|---:|---:|---:|")
                floor = rows[0]
                for r in rows:
                    bad = f" (exit {r.rc}: {r.note})" if r.rc else ""
                    print(
                        f"| {r.name}{bad} | {r.seconds:.2f} | {r.rss_mb:.0f} | "
                        f"{r.seconds / floor.seconds:.2f} | {r.rss_mb / floor.rss_mb:.2f} |"
                    )
                checks = verdicts(rows)
                for what, a, b, met in checks:
                    print(f"  {what}: {a:.2f}" + (f", {b:.2f}" if b else "") + f" -> {'met' if met else 'NOT met'}")
                ok &= all(r.rc == 0 for r in rows)
                results.append(
                    {
                        "shape": shape,
                        "nodes": n,
                        "rows": [asdict(r) for r in rows],
                        "targets": [{"target": w, "ratio": a, "rss_ratio": b, "met": m} for w, a, b, m in checks],
                    }
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
