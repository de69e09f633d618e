"""Mixed precision to a budget: surgeon's to-fp16 with ``budget:`` against onnxconverter-common's
``auto_convert_mixed_precision`` and ModelOpt's AutoCast (where they install), on four small torch
models written here (random weights, exported here with TorchScript).

Per model and tool it prints: whether the budget holds on held-out data (fresh draws none of the
tools saw), the fraction of compute nodes in float16, the Cast nodes added, wall time and
onnxruntime runs. Run from the repository root: ``python benchmarks/bench_precision.py``
(``--json out.json`` writes the rows). Needs ``pip install -e ".[bench]"`` for the peers; a peer
that does not import is shown as "not installed".

ModelOpt's ``nvidia-modelopt[onnx]`` replaces onnxruntime-gpu with its own pin, so it lives in a
virtualenv of its own: ``--modelopt-python PATH`` (or ``SURGEON_BENCH_MODELOPT_PYTHON``) names that
interpreter, which runs this script as a child (``--autocast-child``) on the same model file and
calibration samples; the child times the conversion call, counts the onnxruntime runs, and writes
the converted model for this process to judge like the others.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

RTOL, ATOL = 1e-2, 1e-3
SAMPLES, HELD_OUT = 6, 4
MOVEMENT = {
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split", "Slice", "Gather", "Identity",
    "Shape", "Expand", "Cast", "Constant", "ConstantOfShape", "DepthToSpace", "Pad", "Where", "Range", "Equal",
}  # fmt: skip


def models() -> dict[str, tuple[Any, dict[str, tuple[int, ...]]]]:
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, d: int, heads: int, causal: bool) -> None:
            super().__init__()
            self.qkv, self.out, self.heads, self.causal = nn.Linear(d, 3 * d), nn.Linear(d, d), heads, causal

        def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
            b, s, d = x.shape
            q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
            if self.causal:
                mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)
                scores = scores.masked_fill(mask, torch.finfo(torch.float32).min)
            if pad is not None:
                scores = scores + (1.0 - pad[:, None, None, :]) * torch.finfo(torch.float32).min
            return self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d))

    class Block(nn.Module):
        def __init__(self, d: int, causal: bool) -> None:
            super().__init__()
            self.n1, self.n2, self.att = nn.LayerNorm(d), nn.LayerNorm(d), Attention(d, 4, causal)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
            x = x + self.att(self.n1(x), pad)
            return x + self.mlp(self.n2(x))

    class Encoder(nn.Module):
        def __init__(self, d: int = 64) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([Block(d, False) for _ in range(2)])
            self.pos = nn.Parameter(torch.randn(1, 16, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.pos
            for b in self.blocks:
                x = b(x)
            return x

    class Decoder(nn.Module):
        def __init__(self, vocab: int = 100, d: int = 64) -> None:
            super().__init__()
            self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)
            self.blocks = nn.ModuleList([Block(d, True) for _ in range(2)])
            self.norm = nn.LayerNorm(d)

        def forward(self, ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(ids.shape[1]).float()[None, :, None]
            x = self.emb(ids) + torch.sin(positions / 100.0)
            for b in self.blocks:
                x = b(x, pad)
            return self.head(self.norm(x))

    class Detector(nn.Module):
        def __init__(self, classes: int = 8) -> None:
            super().__init__()

            def conv(i: int, o: int, s: int) -> nn.Module:
                return nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o), nn.SiLU())

            self.c1, self.c2, self.c3 = conv(3, 16, 2), conv(16, 32, 2), conv(32, 64, 2)
            self.lat = nn.Conv2d(64, 32, 1)
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
            self.head = nn.Conv2d(64, 4 + 1 + classes, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f2 = self.c2(self.c1(x))
            f = torch.cat([self.up(self.lat(self.c3(f2))), f2], 1)
            out = self.head(f).flatten(2).transpose(1, 2)
            boxes = torch.cat([out[..., :2].sigmoid() * 64.0, out[..., 2:4].exp() * 8.0], -1)
            return boxes, out[..., 4:5].sigmoid() * out[..., 5:].softmax(-1)

    class SuperRes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                nn.Conv2d(32, 4, 3, padding=1), nn.PixelShuffle(2),
            )  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    torch.manual_seed(0)
    return {
        "encoder": (Encoder(), {"x": (1, 16, 64)}),
        "decoder (masks)": (Decoder(), {"ids": (1, 16), "pad": (1, 16)}),
        "detector": (Detector(), {"image": (1, 3, 64, 64)}),
        "super-resolution": (SuperRes(), {"image": (1, 1, 32, 32)}),
    }


def draw(shapes: dict[str, tuple[int, ...]], n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        feed: dict[str, np.ndarray] = {}
        for name, shape in shapes.items():
            if name == "ids":
                feed[name] = rng.integers(0, 100, shape).astype(np.int64)
            elif name == "pad":
                feed[name] = np.concatenate([np.ones((1, 12)), (rng.random((1, 4)) < 0.5)], 1).astype(np.float32)
            else:
                feed[name] = rng.standard_normal(shape).astype(np.float32)
        out.append(feed)
    return out


def export(module: Any, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    import torch

    args = tuple(torch.from_numpy(v) for v in draw(shapes, 1, 0)[0].values())
    with contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
        torch.onnx.export(module.eval(), args, str(path), input_names=list(shapes), opset_version=17, dynamo=False)


def run(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return [sess.run(None, {k: v for k, v in f.items() if k in names}) for f in feeds]


def within(refs: list[list[np.ndarray]], gots: list[list[np.ndarray]]) -> bool:
    return all(
        bool(np.all(np.abs(g.astype(np.float64) - r) <= ATOL + RTOL * np.abs(r)))
        for ref, got in zip(refs, gots)
        for r, g in zip(ref, got)
    )


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the main graph, by onnx shape inference."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {t.name: t.data_type for t in graph.initializer}
    types |= {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.input, *graph.value_info, *graph.output]}
    return types


def half_fraction(model: onnx.ModelProto) -> float:
    types = elem_types(model)
    compute = [n for n in model.graph.node if n.op_type not in MOVEMENT and types.get(n.output[0]) in (1, 10)]
    return sum(types.get(n.output[0]) == 10 for n in compute) / max(1, len(compute))


def casts(model: onnx.ModelProto, source: onnx.ModelProto) -> int:
    """Cast nodes in the result less those in the source (a tool that drops the source's no-op
    Casts gets them off its count)."""
    return sum(n.op_type == "Cast" for n in model.graph.node) - sum(n.op_type == "Cast" for n in source.graph.node)


def precision_casts(model: onnx.ModelProto) -> int:
    """Casts between float32 and a half type (float16, bfloat16): the ones a conversion inserts."""
    floats, types = {1, 10, 16}, elem_types(model)
    return sum(
        n.op_type == "Cast"
        and types.get(n.input[0]) in floats
        and (to := next(a.i for a in n.attribute if a.name == "to")) in floats
        and to != types.get(n.input[0])
        for n in model.graph.node
    )


Conversion = tuple[onnx.ModelProto, int, float]  # model, onnxruntime runs, seconds of the conversion


def save_samples(samples: list[dict[str, np.ndarray]], npz: Path) -> Path:
    """The samples as one ``.npz``: each input stacked along a new leading axis (one entry per sample)."""
    stacked: dict[str, Any] = {k: np.stack([f[k] for f in samples]) for k in samples[0]}
    np.savez(npz, **stacked)
    return npz


def surgeon_tool(src: Path, calib: list[dict[str, np.ndarray]], work: Path) -> Conversion:
    from surgeon.ir.adapter import ModelIR
    from surgeon.ir.model import load
    from surgeon.passes.to_fp16 import ToFP16

    npz = save_samples(calib, work / "calib.npz")
    t0 = time.perf_counter()
    ir = ModelIR.from_model(load(src), lazy=True)
    result = ToFP16(budget={"rtol": RTOL, "atol": ATOL}, calibration=str(npz))(ir)
    out = ir.to_proto()
    return out, int(result.details["onnxruntime_runs"]), time.perf_counter() - t0


def occ_tool(src: Path, calib: list[dict[str, np.ndarray]], work: Path) -> Conversion:
    from onnxconverter_common import auto_mixed_precision

    def validate(ref: list[np.ndarray], got: list[np.ndarray]) -> bool:
        return all(np.allclose(g, r, rtol=RTOL, atol=ATOL) for r, g in zip(ref, got))

    feed = calib[0]
    with counted_runs() as runs, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        out = auto_mixed_precision.auto_convert_mixed_precision(onnx.load(src), feed, validate, keep_io_types=True)
        seconds = time.perf_counter() - t0
    return out, runs[0], seconds


@contextlib.contextmanager
def counted_runs() -> Iterator[list[int]]:
    """Counts every ``onnxruntime.InferenceSession.run`` made in this process while it is open (a
    peer's own runs: what it really ran, not what it says it validated)."""
    import onnxruntime as ort

    runs = [0]
    original = ort.InferenceSession.run

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        runs[0] += 1
        return original(self, *args, **kwargs)

    ort.InferenceSession.run = counted  # type: ignore[method-assign]
    try:
        yield runs
    finally:
        ort.InferenceSession.run = original  # type: ignore[method-assign]


MODELOPT_PYTHON: str | None = None  # --modelopt-python / SURGEON_BENCH_MODELOPT_PYTHON


def autocast_convert(src: Path, npz: Path, out: Path) -> dict[str, Any]:
    """ModelOpt AutoCast at its default thresholds (``data_max`` 512, ``init_max`` the float16 maximum),
    float16 with float32 I/O, calibrated on the samples in ``npz`` (one entry per sample, as
    :func:`save_samples` writes it). Writes the converted model to ``out``; returns the seconds of the
    conversion call and the onnxruntime runs it made (every ``InferenceSession.run`` during the call)."""
    from modelopt.onnx.autocast import convert_to_mixed_precision

    # AutoCast's multi-batch calibration form: a folder of .npz files, one batch each
    batches = out.parent / f"{out.stem}-calibration"
    batches.mkdir()
    with np.load(npz) as data:
        for i in range(len(data[data.files[0]])):
            np.savez(batches / f"{i:04d}.npz", **{k: data[k][i] for k in data.files})
    with counted_runs() as runs, contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        model = convert_to_mixed_precision(
            onnx_path=str(src), low_precision_type="fp16", keep_io_types=True, calibration_data=str(batches)
        )
        seconds = time.perf_counter() - t0
    onnx.save(model, out)
    return {"seconds": seconds, "runs": runs[0]}


def autocast_child(argv: list[str]) -> int:
    """``--autocast-child SRC NPZ OUT RESULT``, run by the ModelOpt interpreter: RESULT (JSON) gets the
    seconds and runs, or ``{"missing": module}`` when modelopt does not import there."""
    src, npz, out, result = map(Path, argv)
    try:
        info = autocast_convert(src, npz, out)
    except ImportError as exc:
        info = {"missing": exc.name or str(exc)}
    result.write_text(json.dumps(info))
    return 0


def autocast_tool(src: Path, calib: list[dict[str, np.ndarray]], work: Path) -> Conversion:
    npz = save_samples(calib, work / "autocast.npz")
    out = work / f"{src.stem}-autocast.onnx"
    if MODELOPT_PYTHON is None:
        info = autocast_convert(src, npz, out)
    else:
        result = work / f"{src.stem}-autocast.json"
        cmd = [MODELOPT_PYTHON, str(Path(__file__).resolve()), "--autocast-child", str(src), str(npz), str(out)]
        proc = subprocess.run([*cmd, str(result)], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0 or not result.exists():
            lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
            raise RuntimeError(f"{MODELOPT_PYTHON} exited {proc.returncode}: {lines[-1]}")
        info = json.loads(result.read_text())
        if "missing" in info:
            raise ImportError(f"{info['missing']} does not import in {MODELOPT_PYTHON}", name=info["missing"])
    return onnx.load(out), info["runs"], info["seconds"]


TOOLS: dict[str, Callable[[Path, list[dict[str, np.ndarray]], Path], Conversion]] = {
    "surgeon": surgeon_tool,
    "onnxconverter-common": occ_tool,
    "ModelOpt AutoCast": autocast_tool,
}


def floor_of_runs(src: Path, calib: list[dict[str, np.ndarray]], work: Path, repeat: int) -> dict[str, Any]:
    """What surgeon's evidence costs before any of its own work, against onnxconverter-common's
    whole call, in turns: the two sessions a search whose first candidate meets the budget builds,
    as it builds them (the float32 model with every tensor exposed, then surgeon's converted
    model, made beforehand, untimed), and one run of each per sample. No loading, converting or
    judging. Returns the medians in seconds (``occ`` None where it is not installed), and the
    sessions and runs one floor makes."""
    from surgeon.verify.runtime import Runtime

    converted, _, _ = surgeon_tool(src, calib, work)
    exposed = onnx.load(src)
    have = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        exposed.graph.output.extend(onnx.ValueInfoProto(name=o) for o in node.output if o and o not in have)
    blobs = [exposed.SerializeToString(), converted.SerializeToString()]
    floors, peers = [], []
    for k in range(repeat):
        runtime = Runtime("cpu", spin=False)
        with counted_runs() as runs:
            t0 = time.perf_counter()
            for blob in blobs:
                session = runtime.session(Path("<in memory>.onnx"), data=blob)
                for feed in calib:
                    session.run(None, feed)
            floors.append(time.perf_counter() - t0)
        call = work / f"floor-{k}"
        call.mkdir()
        try:
            peers.append(occ_tool(src, calib, call)[2])
        except ImportError:
            pass
    return {
        "floor": statistics.median(floors),
        "occ": statistics.median(peers) if peers else None,
        "sessions": runtime.sessions,
        "runs": runs[0],
    }


def main() -> int:
    global RTOL, ATOL, MODELOPT_PYTHON
    built = models()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--rtol", type=float, default=RTOL)
    ap.add_argument("--atol", type=float, default=ATOL)
    ap.add_argument("--model", action="append", choices=list(built), help="only this model (repeatable)")
    ap.add_argument(
        "--samples",
        type=int,
        default=SAMPLES,
        help=f"calibration samples for surgeon and AutoCast (default {SAMPLES}; surgeon holds out a third, "
        "at least 1); onnxconverter-common takes the first (its API takes one feed)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="calls per model and tool, the tools taking turns; wall is the median (default 5)",
    )
    ap.add_argument(
        "--modelopt-python",
        default=os.environ.get("SURGEON_BENCH_MODELOPT_PYTHON") or None,
        metavar="PATH",
        help="interpreter of a virtualenv with nvidia-modelopt[onnx] that runs AutoCast "
        "(default: $SURGEON_BENCH_MODELOPT_PYTHON, else AutoCast is imported in this process)",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="instead of the table: per model, the sessions and runs surgeon's evidence needs (2 "
        "sessions, a run per sample each; no conversion, no judging) against onnxconverter-common's "
        "whole call, in turns",
    )
    args = ap.parse_args()
    if args.samples < 2 or args.repeat < 1:
        ap.error("--samples needs at least 2 (one to calibrate, one held out) and --repeat at least 1")
    RTOL, ATOL, MODELOPT_PYTHON = args.rtol, args.atol, args.modelopt_python
    if args.floor:
        return print_floors(built, args.model, args.samples, args.repeat)
    print(
        f"budget rtol {RTOL:g}, atol {ATOL:g}; {args.samples} calibration samples ({args.samples // 3 or 1} of "
        f"them held out by surgeon; onnxconverter-common takes 1), judged on {HELD_OUT} fresh samples (CPU); "
        f"wall: median of {args.repeat} call(s)"
    )
    print("| model             | tool                  | met  | half  | casts | f32↔f16 |    wall   | runs ", end="")
    print("| wall/occ |")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (module, shapes) in built.items():
            if args.model and name not in args.model:
                continue
            src_path = work / f"{name.split()[0]}.onnx"
            export(module, shapes, src_path)
            source = onnx.load(src_path)
            calib, held = draw(shapes, args.samples, 1), draw(shapes, HELD_OUT, 2)
            refs = run(source, held)
            done: dict[str, dict[str, Any]] = {t: {"model": name, "tool": t, "walls": []} for t in TOOLS}
            tools = list(enumerate(TOOLS.items()))
            for k in range(args.repeat):  # the tools take turns: the machine's slow spells fall on all
                # and the order rotates: no tool always follows another (AutoCast's child process)
                for t, (tool, fn) in tools[k % len(tools) :] + tools[: k % len(tools)]:
                    row = done[tool]
                    if "error" in row:
                        continue
                    call = work / f"{src_path.stem}-{t}-{k}"
                    call.mkdir()
                    try:
                        out, runs, seconds = fn(src_path, calib, call)
                    except ImportError as exc:
                        row["error"] = f"not installed ({exc.name})"
                    except Exception as exc:  # a peer failing is a result too
                        row["error"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
                    else:
                        row["walls"].append(round(seconds, 4))
                        row["runs"] = runs
                        if k == args.repeat - 1:  # the conversions are deterministic: judge the last
                            row |= {
                                "met": within(refs, run(out, held)),
                                "half": round(half_fraction(out), 3),
                                "casts": casts(out, source),
                                "precision_casts": precision_casts(out) - precision_casts(source),
                            }
            for row in done.values():
                if "error" not in row:
                    row["seconds"] = round(statistics.median(row["walls"]), 4)
                else:
                    row.pop("walls")
            peer = done["onnxconverter-common"].get("seconds")
            for tool, row in done.items():
                if peer and "seconds" in row and tool != "onnxconverter-common":
                    row["vs_occ"] = round(row["seconds"] / peer, 2)
                rows.append(row)
                print(_line(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def print_floors(built: dict[str, Any], only: list[str] | None, samples: int, repeat: int) -> int:
    print(f"{samples} samples; the floor: 2 sessions and {2 * samples} runs; medians of {repeat} call(s)")
    print("| model             | floor    | onnxconverter-common | floor/occ |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (module, shapes) in built.items():
            if only and name not in only:
                continue
            work = Path(tmp) / name.split()[0]
            work.mkdir()
            src = work / "model.onnx"
            export(module, shapes, src)
            m = floor_of_runs(src, draw(shapes, samples, 1), work, repeat)
            occ = f"{m['occ'] * 1e3:17.1f} ms" if m["occ"] else f"{'not installed':>20}"
            ratio = f"{m['floor'] / m['occ']:8.2f}x" if m["occ"] else " " * 9
            print(f"| {name:<17} | {m['floor'] * 1e3:5.1f} ms | {occ} | {ratio} |", flush=True)
    return 0


def _line(r: dict[str, Any]) -> str:
    head = f"| {r['model']:<17} | {r['tool']:<21} |"
    if "error" in r:
        return f"{head} {r['error']}"
    met = "yes" if r["met"] else "NO"
    cells = f"{met:>4} | {r['half']:>5.0%} | {r['casts']:>5} | {r['precision_casts']:>7} | {r['seconds']:>7.3f} s"
    ratio = f"{r['vs_occ']:.2f}x" if "vs_occ" in r else ""
    return f"{head} {cells} | {r['runs']:>4} | {ratio:>8} |"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--autocast-child"]:
        raise SystemExit(autocast_child(sys.argv[2:]))
    raise SystemExit(main())
