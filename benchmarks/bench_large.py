"""Large external-data models: surgeon against the floor, plain onnx, onnx-graphsurgeon and onnxruntime.

Builds a synthetic model (``layers`` MatMuls of ``dim x dim`` fp32 weights, all in one external data
file), then measures, each in its own process (peak RSS from ``wait4``), renaming the input and
marking the batch dim dynamic:

- floor: the proto edited without loading weights, the data file copied
- onnx: plain ``onnx.load`` / edit / ``onnx.save`` with external data
- graphsurgeon: an onnx-graphsurgeon script (import, edit, export, save with external data)
- surgeon apply, verification off; with ``save: {share_weights: true}`` beside the source;
  verification on (CPU)
- onnxruntime alone running the model once (the verifier's session options, and the defaults)

and prints wall time, peak RSS, the ratios and whether each target of issue 5 is met::

    python benchmarks/bench_large.py --size-mb 50           # CI-sized
    python benchmarks/bench_large.py --size-mb 400 1600     # and the memory growth between sizes
    python benchmarks/bench_large.py --layers 24 --dim 4096 # the issue's 1.6 GB model
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HAS_MARK_DYNAMIC = (REPO / "passes" / "mark_dynamic.py").is_file()
IN_NAME, NEW_IN_NAME, OUT_NAME, BATCH = "x", "input_ids", "y", "batch"
ALIGN = 4096

# targets of issue 5
FLOOR_RATIO = 1.5
MAX_RSS_MB = 150.0
ORT_RATIO = 1.3
GROWTH_MB = 30.0
"""'memory must not grow with model size': verify-off peak RSS may differ by at most this between sizes."""


# --- the model -----------------------------------------------------------------------------------


def dims_for(size_mb: float, layers: int) -> int:
    """The square weight size giving about ``size_mb`` MiB over ``layers`` fp32 layers (a multiple of 16)."""
    dim = math.sqrt(size_mb * 2**20 / 4 / layers)
    return max(16, int(round(dim / 16)) * 16)


def build_model(folder: Path, layers: int, dim: int, seed: int = 0) -> Path:
    """Write ``folder/model.onnx`` and ``model.onnx.data`` one layer at a time (bounded memory).
    ``y = x @ w0 @ ... @ w{layers-1}``, ``x: [1, dim]``, weights scaled to keep values near 1."""
    import numpy as np
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    path, data = folder / "model.onnx", folder / "model.onnx.data"
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = IN_NAME
    with open(data, "wb") as f:
        for i in range(layers):
            w = rng.standard_normal((dim, dim), dtype=np.float32)
            w *= np.float32(1 / math.sqrt(dim))
            offset = f.seek(0, os.SEEK_END)
            if offset % ALIGN:
                f.write(b"\0" * (ALIGN - offset % ALIGN))
                offset = f.tell()
            f.write(w.tobytes())
            init = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[dim, dim])
            init.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data.name), ("offset", str(offset)), ("length", str(w.nbytes))):
                init.external_data.add(key=k, value=v)
            inits.append(init)
            del w
            out = OUT_NAME if i == layers - 1 else f"h{i}"
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"layer{i}"))
            prev = out
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info(IN_NAME, TensorProto.FLOAT, [1, dim])],
        [helper.make_tensor_value_info(OUT_NAME, TensorProto.FLOAT, [1, dim])],
        inits,
    )
    model = helper.make_model(
        graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_large"
    )
    path.write_bytes(model.SerializeToString())
    return path


def write_recipe(folder: Path, share: bool = False) -> Path:
    lines = ["version: 1", "verify: {device: cpu, mode: each}"]
    if share:
        lines.append("save: {share_weights: true}")
    lines += ["passes:", f"  - rename-io: {{inputs: {{{IN_NAME}: {NEW_IN_NAME}}}}}"]
    if HAS_MARK_DYNAMIC:
        lines.append(f"  - mark-dynamic: {{batch: {BATCH}}}")
    path = folder / ("recipe-share.yaml" if share else "recipe.yaml")
    path.write_text("\n".join(lines) + "\n")
    return path


INTERFACE_RECIPE = (
    "version: 1\nverify: {{device: cpu, mode: {mode}}}\n{save}passes:\n"
    f"  - rename-io: {{{{inputs: {{{{{IN_NAME}: {NEW_IN_NAME}}}}}}}}}\n"
    "  - set-metadata: {{producer_name: bench}}\n"
    "  - strip-doc: {{}}\n"
)
"""The interface-only recipe of issue 21 (every step proved structurally when verified)."""
PROOF_RATIO = 1.2
PROOF_RSS_MB = 300.0


def write_interface_recipe(folder: Path, mode: str, share: bool = False) -> Path:
    path = folder / f"interface-{mode}{'-share' if share else ''}.yaml"
    path.write_text(INTERFACE_RECIPE.format(mode=mode, save="save: {share_weights: true}\n" if share else ""))
    return path


def run_proofs(work: Path, layers: int, dim: int, share: bool, repeat: int = 1) -> tuple[list[Row], dict[str, Any]]:
    """Issue 21: the interface-only recipe verified (structural proofs, no onnxruntime) against the
    same recipe with verification off. ``share``: the output next to the source, sharing its data
    file (the 6 GB run: nothing copied); else the output in another folder (weights copied)."""
    src_dir, out_dir = work / "src", work / "out"
    _clean(src_dir)
    src = build_model(src_dir, layers, dim)
    os.sync()
    size_mb = (src_dir / "model.onnx.data").stat().st_size / 2**20
    out = (src_dir / "edited.onnx") if share else (out_dir / "model.onnx")
    rows = []
    for name, mode in (("interface verify=off", "off"), ("interface proved", "each")):
        recipe = write_interface_recipe(work, mode, share)
        runs = []
        for _ in range(repeat):
            _clean(out_dir)
            out.unlink(missing_ok=True)
            os.sync()
            runs.append(
                measure(name, [*_surgeon(), "apply", str(recipe), "-i", str(src), "-o", str(out), "-q"], work / "log")
            )
        runs.sort(key=lambda r: r.seconds)
        best = runs[len(runs) // 2]
        rows.append(Row(name, best.seconds, max(r.rss_mb for r in runs), best.rc, best.note))
    extra = {"size_mb": round(size_mb, 1), "layers": layers, "dim": dim, "share_weights": share}
    return rows, extra


def print_proofs(rows: list[Row], extra: dict[str, Any]) -> bool:
    off, proved = rows
    ratio = proved.seconds / off.seconds
    print(f"\n{extra['size_mb']:.0f} MiB, interface-only recipe (rename-io, set-metadata, strip-doc)")
    print("| method | wall s | peak RSS MB |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r.name}{f' (exit {r.rc}: {r.note})' if r.rc else ''} | {r.seconds:.2f} | {r.rss_mb:.0f} |")
    met = ratio <= PROOF_RATIO and proved.rss_mb < PROOF_RSS_MB
    print(
        f"  verified <= {PROOF_RATIO}x unverified: {ratio:.2f}x; peak RSS {proved.rss_mb:.0f} MB "
        f"(< {PROOF_RSS_MB:.0f} MB) -> {'met' if met else 'NOT met'}"
    )
    return met and all(r.rc == 0 for r in rows)


def free_gb(folder: Path) -> float:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize / 2**30


# --- the methods (each runs in its own process: `bench_large.py --method NAME MODEL OUT`) ---------


def _edit_proto(model: object) -> None:
    """Rename the input and make axis 0 of the input and output the symbol 'batch' (onnx protos)."""
    g = model.graph  # type: ignore[attr-defined]
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == IN_NAME:
                node.input[i] = NEW_IN_NAME
    g.input[0].name = NEW_IN_NAME
    if HAS_MARK_DYNAMIC:
        for vi in (g.input[0], g.output[0]):
            vi.type.tensor_type.shape.dim[0].dim_param = BATCH


def method_floor(src: Path, out: Path) -> None:
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    _edit_proto(model)
    shutil.copyfile(src.parent / "model.onnx.data", out.parent / "model.onnx.data")
    out.write_bytes(model.SerializeToString())


def method_onnx(src: Path, out: Path) -> None:
    import onnx

    model = onnx.load(str(src))
    _edit_proto(model)
    onnx.save(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")


def method_graphsurgeon(src: Path, out: Path) -> None:
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(onnx.load(str(src)))
    graph.inputs[0].name = NEW_IN_NAME
    if HAS_MARK_DYNAMIC:
        graph.inputs[0].shape = [BATCH, *graph.inputs[0].shape[1:]]
        graph.outputs[0].shape = [BATCH, *graph.outputs[0].shape[1:]]
    model = gs.export_onnx(graph)
    onnx.save(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")


def _ort_once(src: Path, optimize: bool) -> None:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:  # what surgeon's verifier uses
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).uniform(-1, 1, (1, inp.shape[1])).astype(np.float32)
    sess.run(None, {inp.name: x})


def method_ort(src: Path, out: Path) -> None:
    _ort_once(src, optimize=False)


def method_ort_default(src: Path, out: Path) -> None:
    _ort_once(src, optimize=True)


METHODS = {
    "floor": method_floor,
    "onnx": method_onnx,
    "graphsurgeon": method_graphsurgeon,
    "ort": method_ort,
    "ort-default": method_ort_default,
}


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    seconds: float
    rss_mb: float
    rc: int
    note: str = ""


_LAUNCHER = (
    "import os,sys,time,json;"
    "fa=[(os.POSIX_SPAWN_OPEN,1,sys.argv[1],os.O_WRONLY|os.O_CREAT|os.O_TRUNC,0o644),(os.POSIX_SPAWN_DUP2,1,2)];"
    "t=time.perf_counter();pid=os.posix_spawnp(sys.argv[2],sys.argv[2:],os.environ,file_actions=fa);"
    "_,st,ru=os.wait4(pid,0);"
    "print(json.dumps([time.perf_counter()-t,ru.ru_maxrss/1024,os.waitstatus_to_exitcode(st)]))"
)
"""Runs one command and reports its wall time, peak RSS (MiB) and exit code. A child's peak RSS
starts at its parent's (Linux keeps the high-water mark across fork and exec), so commands are
started from this small ``python -S`` process, never from the benchmark itself."""


def measure(name: str, cmd: list[str], log: Path) -> Row:
    """Run ``cmd`` (output to ``log``); its wall time and peak RSS."""
    res = subprocess.run(
        [sys.executable, "-S", "-c", _LAUNCHER, str(log), *cmd], capture_output=True, text=True, check=True
    )
    seconds, rss_mb, rc = json.loads(res.stdout)
    note = ""
    if rc != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        note = (lines[-1] if lines else f"exit {rc}")[:200]
    return Row(name, seconds, rss_mb, rc, note)


def _clean(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _surgeon() -> list[str]:
    exe = Path(sys.executable).with_name("surgeon")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "surgeon.cli"]


def run_size(work: Path, layers: int, dim: int, skip: set[str], repeat: int = 1) -> tuple[list[Row], dict[str, Any]]:
    src_dir, out_dir = work / "src", work / "out"
    _clean(src_dir)
    t0 = time.perf_counter()
    src = build_model(src_dir, layers, dim)
    built = time.perf_counter() - t0
    os.sync()
    size_mb = (src_dir / "model.onnx.data").stat().st_size / 2**20
    recipe, recipe_share = write_recipe(work), write_recipe(work, share=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    plan: list[tuple[str, list[str], bool]] = [
        ("python -c pass", [sys.executable, "-c", "pass"], False),
        ("floor", [*me, "--method", "floor", str(src), str(out_dir / "model.onnx")], True),
        ("onnx", [*me, "--method", "onnx", str(src), str(out_dir / "model.onnx")], True),
        ("graphsurgeon", [*me, "--method", "graphsurgeon", str(src), str(out_dir / "model.onnx")], True),
        (
            "surgeon verify=off",
            [*_surgeon(), "apply", str(recipe), "-i", str(src), "-o", str(out_dir / "model.onnx"), "--no-verify", "-q"],
            True,
        ),
        (
            "surgeon share_weights",
            [
                *_surgeon(),
                "apply",
                str(recipe_share),
                "-i",
                str(src),
                "-o",
                str(src_dir / "shared.onnx"),
                "--no-verify",
                "-q",
            ],
            False,
        ),
        (
            "surgeon verify=cpu",
            [
                *_surgeon(),
                "apply",
                str(recipe),
                "-i",
                str(src),
                "-o",
                str(out_dir / "model.onnx"),
                "--device",
                "cpu",
                "-q",
            ],
            True,
        ),
        ("ort alone", [*me, "--method", "ort", str(src), "-"], False),
        ("ort alone (default opts)", [*me, "--method", "ort-default", str(src), "-"], False),
    ]
    rows: list[Row] = []
    extra: dict[str, Any] = {
        "size_mb": round(size_mb, 1),
        "layers": layers,
        "dim": dim,
        "build_s": round(built, 2),
        "repeat": repeat,
    }
    for name, cmd, writes_out in plan:
        if name.split()[0] in skip or name in skip:
            continue
        runs = []
        for _ in range(repeat):
            _clean(out_dir)
            (src_dir / "shared.onnx").unlink(missing_ok=True)
            os.sync()  # no writeback of the previous output during this measurement
            runs.append(measure(name, cmd, work / "log.txt"))
        runs.sort(key=lambda r: r.seconds)
        rows.append(
            Row(name, runs[len(runs) // 2].seconds, max(r.rss_mb for r in runs), max(r.rc for r in runs), runs[-1].note)
        )
        if name == "surgeon share_weights":
            extra["share_weights"] = _shares(src_dir) if rows[-1].rc == 0 else "failed"
            (src_dir / "shared.onnx").unlink(missing_ok=True)
        elif writes_out and rows[-1].rc == 0:
            extra.setdefault("outputs_ok", {})[name] = _check_output(out_dir / "model.onnx", src)
    shutil.rmtree(out_dir, ignore_errors=True)
    return rows, extra


def _shares(src_dir: Path) -> str:
    import onnx

    m = onnx.load(str(src_dir / "shared.onnx"), load_external_data=False)
    locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    files = sorted(p.name for p in src_dir.iterdir())
    ok = locs == {"model.onnx.data"} and files == ["model.onnx", "model.onnx.data", "shared.onnx"]
    return "yes" if ok else f"NO (locations {sorted(locs)}, files {files})"


def _check_output(out: Path, src: Path) -> str:
    """The output is renamed and (when mark-dynamic exists) batch-dynamic; spot-check its last weight."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(out), load_external_data=False)
    if m.graph.input[0].name != NEW_IN_NAME:
        return "input not renamed"
    if HAS_MARK_DYNAMIC and m.graph.input[0].type.tensor_type.shape.dim[0].dim_param != BATCH:
        return "batch not dynamic"
    s = onnx.load(str(src), load_external_data=False)
    name = s.graph.initializer[-1].name
    from onnx.external_data_helper import load_external_data_for_tensor

    a = next(t for t in s.graph.initializer if t.name == name)
    b = next(t for t in m.graph.initializer if t.name == name)
    load_external_data_for_tensor(a, str(src.parent))
    load_external_data_for_tensor(b, str(out.parent))
    return "ok" if np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b)) else f"weight {name} differs"


# --- the report ----------------------------------------------------------------------------------


def verdicts(rows: list[Row]) -> list[tuple[str, str, bool | None]]:
    by = {r.name: r for r in rows if r.rc == 0}
    out: list[tuple[str, str, bool | None]] = []
    floor, off, on = by.get("floor"), by.get("surgeon verify=off"), by.get("surgeon verify=cpu")
    orts = [r for n, r in by.items() if n.startswith("ort alone")]
    if floor and off:
        ratio = off.seconds / floor.seconds
        out.append(
            (
                f"verify off: wall <= {FLOOR_RATIO}x floor",
                f"{ratio:.2f}x ({off.seconds:.2f} s vs {floor.seconds:.2f} s)",
                ratio <= FLOOR_RATIO,
            )
        )
    if off:
        out.append((f"verify off: peak RSS < {MAX_RSS_MB:.0f} MB", f"{off.rss_mb:.0f} MB", off.rss_mb < MAX_RSS_MB))
    if on and orts:
        base = min(orts, key=lambda r: r.rss_mb)
        ratio = on.rss_mb / base.rss_mb
        out.append(
            (
                f"verify on: peak RSS <= {ORT_RATIO}x ORT alone",
                f"{ratio:.2f}x ({on.rss_mb:.0f} MB vs {base.rss_mb:.0f} MB, {base.name})",
                ratio <= ORT_RATIO,
            )
        )
    failed = [r.name for r in rows if r.rc != 0]
    if failed:
        out.append(("every method ran", "failed: " + ", ".join(failed), False))
    return out


def print_table(rows: list[Row], extra: dict[str, Any]) -> None:
    by = {r.name: r for r in rows}
    floor = by.get("floor")
    orts = [r for r in rows if r.name.startswith("ort alone") and r.rc == 0]
    ort = min(orts, key=lambda r: r.rss_mb) if orts else None
    print(
        f"\nmodel: {extra['layers']} x {extra['dim']}^2 fp32 MatMul = {extra['size_mb']} MiB external data"
        f" (built in {extra['build_s']} s)"
    )
    if extra.get("repeat", 1) != 1:
        print(f"wall time: median of {extra['repeat']} runs; peak RSS: the largest")
    print(f"recipe: rename-io{' + mark-dynamic (batch)' if HAS_MARK_DYNAMIC else ''}")
    head = f"{'method':<26} {'wall s':>8} {'peak RSS MB':>12} {'x floor time':>13} {'x ORT RSS':>10}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        t = f"{r.seconds / floor.seconds:.2f}" if floor and floor.rc == 0 else "-"
        m = f"{r.rss_mb / ort.rss_mb:.2f}" if ort else "-"
        print(f"{r.name:<26} {r.seconds:>8.2f} {r.rss_mb:>12.0f} {t:>13} {m:>10}  {r.note}")
    for key in ("share_weights", "outputs_ok"):
        if key in extra:
            print(f"{key}: {extra[key]}")
    print("targets:")
    for what, value, ok in verdicts(rows):
        print(f"  [{'met' if ok else 'MISSED'}] {what}: {value}")


def _growth(results: list[dict[str, Any]]) -> None:
    """'Memory must not grow with model size': verify-off peak RSS across the sizes measured."""
    known = [
        (res["size_mb"], r["rss_mb"])
        for res in results
        for r in res["rows"]
        if r["name"] == "surgeon verify=off" and r["rc"] == 0
    ]
    if len(known) < 2:
        return
    growth = known[-1][1] - known[0][1]
    print(f"\nverify-off peak RSS by size: {', '.join(f'{s} MiB: {m:.0f} MB' for s, m in known)}")
    print(f"  [{'met' if growth <= GROWTH_MB else 'MISSED'}] memory does not grow with model size: {growth:+.0f} MB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--size-mb", type=float, nargs="+", help="model sizes in MiB (24 layers, dim chosen to fit)")
    p.add_argument("--layers", type=int, default=24, help="MatMul layers (default 24)")
    p.add_argument("--dim", type=int, help="weight size dim x dim (overrides --size-mb)")
    p.add_argument("--work", type=Path, help="working folder (default: a temporary folder, removed afterwards)")
    p.add_argument("--skip", nargs="*", default=[], help="methods to leave out (e.g. onnx graphsurgeon)")
    p.add_argument("--repeat", type=int, default=1, help="runs per method: median wall time, largest peak RSS")
    p.add_argument("--json", type=Path, help="write the measurements as JSON")
    p.add_argument(
        "--proofs", action="store_true", help="issue 21: the interface-only recipe verified by proofs vs verify off"
    )
    p.add_argument(
        "--big-gb",
        type=float,
        help="issue 21: also a generated external-data model of this many GB (e.g. 6), skipped without the disk room",
    )
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.method:
        METHODS[args.method](Path(args.paths[0]), Path(args.paths[1]))
        return 0
    sizes = (
        [(args.layers, args.dim)]
        if args.dim
        else [(args.layers, dims_for(s, args.layers)) for s in (args.size_mb or [50])]
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-large-"))
    results: list[dict[str, Any]] = []
    if args.proofs or args.big_gb:
        return _main_proofs(args, sizes, work)
    try:
        for layers, dim in sizes:
            rows, extra = run_size(work / f"{layers}x{dim}", layers, dim, set(args.skip), args.repeat)
            print_table(rows, extra)
            results.append({"rows": [asdict(r) for r in rows], **extra})
            shutil.rmtree(work / f"{layers}x{dim}", ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    ok = all(r["rc"] == 0 for res in results for r in res["rows"])
    _growth(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


def _main_proofs(args: argparse.Namespace, sizes: list[tuple[int, int]], work: Path) -> int:
    results: list[dict[str, Any]] = []
    ok = True
    try:
        runs = [(layers, dim, False) for layers, dim in sizes] if args.proofs else []
        if args.big_gb:
            need = args.big_gb * 1.1 + 1
            work.mkdir(parents=True, exist_ok=True)
            if free_gb(work) < need:
                print(
                    f"\n{args.big_gb:g} GB model skipped: {free_gb(work):.1f} GB free in {work}, {need:.1f} GB needed"
                )
            else:
                runs.append((args.layers, dims_for(args.big_gb * 1024, args.layers), True))
        for layers, dim, share in runs:
            rows, extra = run_proofs(work / f"proof-{layers}x{dim}", layers, dim, share, args.repeat)
            ok &= print_proofs(rows, extra)
            results.append({"rows": [asdict(r) for r in rows], **extra})
            shutil.rmtree(work / f"proof-{layers}x{dim}", ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
