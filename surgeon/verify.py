"""Verification with onnxruntime: the model before and after run on the same inputs, compared
through the I/O contract of every step in between."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from surgeon.contract import IOContract, Tolerance
from surgeon.errors import SurgeonError, UsageError, VerificationError

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from surgeon.model import Model

log = logging.getLogger(__name__)
Device = Literal["auto", "cpu", "cuda"]


class VerifyConfig(BaseModel):
    """How every pass is checked against onnxruntime."""

    model_config = ConfigDict(extra="forbid")

    device: Device = Field("auto", description="auto: CUDA when it really loads, else CPU; cuda: CUDA or an error; cpu")
    mode: Literal["each", "end", "off"] = Field("each", description="verify after each pass, once at the end, or not at all")
    rtol: float = Field(1e-4, ge=0, description="relative tolerance: |a-b| <= atol + rtol*|b|")
    atol: float = Field(1e-5, ge=0, description="absolute tolerance")
    seed: int = Field(0, description="seed of the random input data")
    dims: dict[str, int] = Field(
        default_factory=dict,
        description="sizes for symbolic dims, by symbol ('batch: 2') or by 'input:axis' ('image:0: 2')",
    )
    inputs: str | None = Field(None, description=".npz file of input data (names as the source model's inputs)")
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="value range [low, high) of random data per input name"
    )
    probe_batch: int = Field(3, ge=2, description="batch size used to probe a batch axis made dynamic")


class StepVerify(BaseModel):
    """Per-step overrides of the verification settings."""

    model_config = ConfigDict(extra="forbid")

    rtol: float | None = Field(None, ge=0, description="relative tolerance for this step")
    atol: float | None = Field(None, ge=0, description="absolute tolerance for this step")
    skip: bool = Field(False, description="do not verify after this step (the next check still covers it)")


@dataclass
class OutputCheck:
    """Comparison of one output (or one probe) with its expected value."""

    name: str
    ok: bool
    verdict: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    rtol: float = 0.0
    atol: float = 0.0
    shape: tuple[int, ...] = ()
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


ProbeResult = OutputCheck


@dataclass
class StepCheck:
    """All checks of one verification run."""

    outputs: list[OutputCheck] = field(default_factory=list)
    device: str = ""

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    def failures(self) -> list[OutputCheck]:
        return [o for o in self.outputs if not o.ok]


# --- comparison ---------------------------------------------------------------------------------


def compare(name: str, expected: np.ndarray, actual: np.ndarray, tol: Tolerance) -> OutputCheck:
    """Compare two arrays: shape, dtype, max abs / rel error, non-finite values matched by position."""
    import numpy as np

    expected, actual = np.asarray(expected), np.asarray(actual)
    base: dict[str, Any] = {"name": name, "rtol": tol.rtol, "atol": tol.atol, "shape": tuple(actual.shape)}
    if expected.shape != actual.shape:
        return OutputCheck(**base, ok=False, verdict="FAIL", note=f"shape {actual.shape} != expected {expected.shape}")
    if expected.dtype != actual.dtype:
        return OutputCheck(**base, ok=False, verdict="FAIL", note=f"dtype {actual.dtype} != expected {expected.dtype}")
    if expected.size == 0:
        return OutputCheck(**base, ok=True, verdict="ok (empty)", note="empty output: nothing to compare")
    if expected.dtype.kind in "OSU":
        ok = bool(np.array_equal(expected, actual))
        return OutputCheck(**base, ok=ok, verdict="ok" if ok else "FAIL", note="" if ok else "strings differ")
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
    verdict = "ok" if ok else "FAIL"
    if ok and n_nonfinite:
        verdict = "ok (non-finite)"
    return OutputCheck(**base, ok=ok, verdict=verdict, max_abs=max_abs, max_rel=max_rel, note=note)


# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """Inputs a caller must feed (inputs with an initializer default are left to their default)."""
    import numpy as np
    from onnx import helper

    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise UsageError(f"input '{vi.name}' is not a tensor; verification supports tensor inputs only")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype(np.float32)
        dims: list[int | str | None] = []
        if tt.HasField("shape"):
            for d in tt.shape.dim:
                dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        specs.append(InputSpec(vi.name, dtype, tuple(dims)))
    return specs


def resolve_shape(spec: InputSpec, dims: Mapping[str, int], where: str = "verify.dims") -> tuple[int, ...]:
    shape = []
    for axis, d in enumerate(spec.dims):
        key = f"{spec.name}:{axis}"
        if key in dims:
            shape.append(int(dims[key]))
        elif isinstance(d, int):
            shape.append(d)
        elif isinstance(d, str) and d in dims:
            shape.append(int(dims[d]))
        else:
            label = f"symbolic dim '{d}'" if d else "a dim with no size"
            hint = f"set {where}: {{{d}: N}}" if d else f"set {where}: {{'{key}': N}}"
            raise UsageError(f"input '{spec.name}' axis {axis} is {label}; {hint}")
    return tuple(shape)


def random_array(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, rng_range: tuple[float, float] | None = None) -> np.ndarray:
    import numpy as np

    kind = spec.dtype.kind
    if kind == "b":
        return rng.random(shape) < 0.5
    if kind == "f":
        lo, hi = rng_range or (-1.0, 1.0)
        return rng.uniform(lo, hi, shape).astype(spec.dtype)
    if kind in "iu":
        lo, hi = rng_range or (0, 4)
        return rng.integers(int(lo), int(hi), shape).astype(spec.dtype)
    if kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(spec.dtype)
    if kind in "OSU":
        return np.array(rng.choice(["a", "bc", "def"], size=shape), dtype=object)
    raise UsageError(f"input '{spec.name}': cannot make random data of dtype {spec.dtype}; give verify.inputs")


def make_feed(specs: Sequence[InputSpec], config: VerifyConfig, dims: Mapping[str, int] | None = None, seed_offset: int = 0) -> dict[str, np.ndarray]:
    import numpy as np

    rng = np.random.default_rng(config.seed + seed_offset)
    all_dims = {**config.dims, **(dims or {})}
    return {
        s.name: np.asarray(random_array(s, resolve_shape(s, all_dims), rng, config.ranges.get(s.name)))
        for s in specs
    }


def load_npz(path: Path, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    import numpy as np

    if not path.is_file():
        raise UsageError(f"{path}: verify.inputs file does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            feed = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable .npz file ({exc})") from None
    missing = [s.name for s in specs if s.name not in feed]
    if missing:
        raise UsageError(f"{path}: no array for input(s) {', '.join(missing)}; it has: {', '.join(feed) or 'nothing'}")
    return {s.name: feed[s.name].astype(s.dtype, copy=False) for s in specs}


# --- sessions ----------------------------------------------------------------------------------


class Runtime:
    """Builds onnxruntime sessions on the configured device and remembers which one it got."""

    def __init__(self, device: Device = "auto") -> None:
        self.device = device
        self.used = ""
        self.reason = ""
        self._providers: list[str] | None = None

    def _ort(self) -> Any:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
        return ort

    def session(self, path: Path, external_folder: Path | None = None, data: bytes | None = None) -> ort.InferenceSession:
        ort = self._ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        if external_folder is not None:
            so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
        src: Any = data if data is not None else str(path)
        if self._providers is None:
            self._providers = self._choose(ort, so, src)
        try:
            return ort.InferenceSession(src, so, providers=self._providers)
        except Exception as exc:
            raise VerificationError(f"{path}: onnxruntime cannot load the model: {_first_line(exc)}") from None

    def _choose(self, ort: Any, so: Any, src: Any) -> list[str]:
        if self.device == "cpu":
            self.used, self.reason = "CPU", "device: cpu"
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            why = "this onnxruntime build has no CUDAExecutionProvider"
        else:
            with contextlib.suppress(Exception):
                if hasattr(ort, "preload_dlls"):
                    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                        ort.preload_dlls()
            try:
                with _captured_stderr() as captured:
                    sess = ort.InferenceSession(src, so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
                if "CUDAExecutionProvider" in sess.get_providers():
                    self.used, self.reason = "CUDA", "CUDAExecutionProvider loaded"
                    return ["CUDAExecutionProvider", "CPUExecutionProvider"]
                why = "CUDAExecutionProvider is listed but did not load" + _cuda_error(captured.getvalue())
            except Exception as exc:
                why = f"CUDAExecutionProvider failed: {_first_line(exc)}"
        if self.device == "cuda":
            raise UsageError(f"verify.device is cuda but CUDA is unavailable: {why}")
        self.used, self.reason = "CPU", why
        return ["CPUExecutionProvider"]


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Any]:
    """Capture what native code writes to file descriptor 2 (onnxruntime's provider errors)."""
    import io

    buf = io.StringIO()
    try:
        saved = os.dup(2)
    except OSError:
        yield buf
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield buf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            buf.write(tmp.read().decode("utf-8", "replace"))


def _cuda_error(text: str) -> str:
    """The useful part of onnxruntime's provider-load error ('libcublasLt.so.13: cannot open...')."""
    import re

    m = re.search(r"with error: ([^\n\x1b]+)", text)
    return f": {m.group(1).strip()}" if m else " (CUDA/cuDNN libraries missing?)"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:400] if lines else type(exc).__name__


@contextlib.contextmanager
def on_disk(model: Model) -> Iterator[tuple[Path, Path | None, bytes | None]]:
    """The model as a file onnxruntime can open with its external data in place.

    Yields ``(path, external_folder, data)``: a model loaded from a file and unchanged is used
    as it is; one with external data is written next to its weights as a hidden temporary file
    (or, where that folder is read-only, handed over as bytes with the weights folder set).
    """
    if model.path is not None:
        yield model.path, None, None
        return
    proto = model.proto
    if model.uses_external_data and model.base_dir is not None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".surgeon-verify-", suffix=".onnx", dir=model.base_dir)
        except OSError:
            yield model.base_dir / "<in memory>.onnx", model.base_dir, proto.SerializeToString()
            return
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(proto.SerializeToString())
            yield Path(tmp), None, None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory(prefix="surgeon-verify-") as tmpdir:
        path = Path(tmpdir) / "model.onnx"
        from surgeon.save import save

        save(model, path)
        yield path, None, None


def run_model(runtime: Runtime, model: Model, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Run ``model`` once per feed in one session; outputs by name."""
    with on_disk(model) as (path, folder, data):
        sess = runtime.session(path, folder, data)
        names = [o.name for o in sess.get_outputs()]
        wanted = {i.name for i in sess.get_inputs()}
        results = []
        for feed in feeds:
            missing = wanted - set(feed)
            if missing:
                raise VerificationError(f"the model has input(s) the contract does not feed: {', '.join(sorted(missing))}")
            try:
                outs = sess.run(names, {k: v for k, v in feed.items() if k in wanted})
            except Exception as exc:
                raise VerificationError(f"onnxruntime failed to run the model: {_first_line(exc)}") from None
            results.append(dict(zip(names, outs)))
        del sess
    _release_freed_memory()
    return results


def _release_freed_memory() -> None:
    """Hand the memory of a closed session back to the system (glibc keeps freed arenas, which
    would add one model's weights to the peak when the next session loads)."""
    import ctypes
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)  # glibc; absent on musl (AttributeError)


# --- the verifier ------------------------------------------------------------------------------


class Verifier:
    """Holds the source model's feed and reference outputs (computed once) and checks candidates
    through the list of contracts between the source and them."""

    def __init__(self, source: Model, config: VerifyConfig, base_dir: Path | None = None) -> None:
        self._snapshot: tempfile.TemporaryDirectory[str] | None = None
        if source.path is None and not source.uses_external_data:
            # an in-memory source is saved once, before any pass can touch shared protos
            from surgeon.model import Model as _Model
            from surgeon.save import save

            self._snapshot = tempfile.TemporaryDirectory(prefix="surgeon-source-")
            path = Path(self._snapshot.name) / "source.onnx"
            save(source, path)
            source = _Model(source.proto, path=path, base_dir=path.parent)
        self.source = source
        self.config = config
        self.runtime = Runtime(config.device)
        self.specs = graph_inputs(source.proto)
        if config.inputs:
            path = Path(config.inputs)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            self.feed = load_npz(path, self.specs)
        else:
            try:
                self.feed = make_feed(self.specs, config)
            except UsageError as exc:
                raise UsageError(f"{source.name}: {exc}") from None
        self._reference: dict[str, np.ndarray] | None = None

    @property
    def device_line(self) -> str:
        return f"{self.runtime.used} ({self.runtime.reason})" if self.runtime.used else "not run"

    def reference(self) -> dict[str, np.ndarray]:
        if self._reference is None:
            self._reference = run_model(self.runtime, self.source, [self.feed])[0]
        return self._reference

    def run_source(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return run_model(self.runtime, self.source, feeds)

    def intermediates(self, contract: IOContract, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Values of the tensors ``contract`` needs from inside the model before its step."""
        inter = contract.intermediates
        if inter is None:
            return None
        out = run_model(self.runtime, inter.model, [feed])[0]
        return {name: out[name] for name in inter.names}

    def replay(self, contracts: Sequence[IOContract], chains: Sequence[Sequence[Mapping[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
        """Run the source on each chain's first feed (chains from :meth:`backward`) and map its outputs
        through ``contracts``; feeds are mapped forward except across steps that derive theirs backwards."""
        results = []
        for outputs, chain in zip(self.run_source([chain[0] for chain in chains]), chains):
            feed = dict(chain[0])
            for i, c in enumerate(contracts):
                extra = self.intermediates(c, feed)
                outputs = c.map_outputs(outputs, feed, extra)
                feed = dict(chain[i + 1]) if c.derived_inputs else c.map_feed(feed, extra)
            results.append(outputs)
        return results

    def backward(self, contracts: Sequence[IOContract], feed: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Feeds before each of ``contracts`` and after the last, from a feed after the last one.
        Source inputs a step removed (unused, so any value does) come from the source feed."""
        chain = [dict(feed)]
        for c in reversed(contracts):
            chain.insert(0, c.unmap_feed(chain[0]))
        for spec in self.specs:
            chain[0].setdefault(spec.name, self.feed[spec.name])
        return chain

    def _start(self, candidate: Model, contracts: Sequence[IOContract]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
        """Feed and expected outputs to map forward from, and the first contract to map them through:
        the source's, or those right after the last step that derives its feed backwards (its random
        data is made for the model after it and the reference is the source run on the derived feed)."""
        last = max((i for i, c in enumerate(contracts) if c.derived_inputs), default=-1)
        if last < 0:
            return dict(self.feed), dict(self.reference()), 0
        later = contracts[last + 1 :]
        specs = [InputSpec(_unrename(s.name, later, "in"), s.dtype, s.dims) for s in graph_inputs(candidate.proto)]
        chain = self.backward(contracts[: last + 1], make_feed(specs, self.config))
        return chain[-1], self.replay(contracts[: last + 1], [chain])[0], last + 1

    def check(self, candidate: Model, contracts: Sequence[IOContract], tol: Tolerance) -> StepCheck:
        """Run ``candidate`` on the source feed mapped through ``contracts``; compare each output
        with the reference mapped the same way; then run the last step's probes."""
        import numpy as np

        feed, expected, start = self._start(candidate, contracts)
        for c in contracts[start:]:
            extra = self.intermediates(c, feed)
            feed, expected = c.map_feed(feed, extra), c.map_outputs(expected, feed, extra)
        actual = run_model(self.runtime, candidate, [feed])[0]
        result = StepCheck(device=self.device_line)
        for name, value in expected.items():
            if name not in actual:
                result.outputs.append(OutputCheck(name, False, "FAIL", note="output missing from the edited model"))
            else:
                result.outputs.append(compare(name, value, actual[name], tol))
        for c in contracts:
            for name in c.added_outputs:
                mapped = name
                for later in contracts[contracts.index(c) + 1 :]:
                    mapped = later.renamed_outputs.get(mapped, mapped)
                if mapped in actual and mapped not in expected:
                    result.outputs.append(OutputCheck(mapped, True, "ok (new)", shape=tuple(np.shape(actual[mapped])), note="added output: ran, nothing to compare"))
        return result

    def probe(self, candidate: Model, contracts: Sequence[IOContract], step: int, tol: Tolerance) -> list[OutputCheck]:
        env = ProbeEnv(self, candidate, contracts, step, tol)
        out: list[OutputCheck] = []
        for probe in contracts[step].probes:
            try:
                out.extend(probe.run(env))
            except SurgeonError as exc:
                out.append(OutputCheck(f"probe {probe.name}", False, "FAIL", note=str(exc)))
        return out


class ProbeEnv:
    """What a probe may do: make inputs at new sizes for the model right after its step, run
    that model (through the candidate), and run the model before the step (through the source)."""

    def __init__(self, verifier: Verifier, candidate: Model, contracts: Sequence[IOContract], step: int, tol: Tolerance) -> None:
        self.verifier = verifier
        self.candidate = candidate
        self.contracts = contracts
        self.step = step
        self.tol = tol
        specs = graph_inputs(candidate.proto)
        self.specs = [InputSpec(_unrename(s.name, contracts[step + 1 :], "in"), s.dtype, s.dims) for s in specs]
        self.config = verifier.config

    def make_feed(self, dims: Mapping[str, int], seed_offset: int = 1) -> dict[str, np.ndarray]:
        """Random inputs (names after the step) with some dims set; others as in verify.dims."""
        return make_feed(self.specs, self.config, dims, seed_offset)

    def run_after(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        mapped = []
        for feed in feeds:
            f = dict(feed)
            for c in self.contracts[self.step + 1 :]:
                f = c.map_feed(f, self.verifier.intermediates(c, f))
            mapped.append(f)
        outs = run_model(self.verifier.runtime, self.candidate, mapped)
        later = self.contracts[self.step + 1 :]
        return [{_unrename(k, later, "out"): v for k, v in o.items()} for o in outs]

    def run_before(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Outputs of the model before the step, named as after it, for feeds named as after it."""

        before = self.contracts[: self.step + 1]
        return self.verifier.replay(before, [self.verifier.backward(before, feed) for feed in feeds])


def _unrename(name: str, contracts: Sequence[IOContract], kind: str) -> str:
    for c in reversed(contracts):
        back = {new: old for old, new in (c.renamed_inputs if kind == "in" else c.renamed_outputs).items()}
        name = back.get(name, name)
    return name
