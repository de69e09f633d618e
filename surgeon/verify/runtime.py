"""onnxruntime sessions for verification: the device chosen (and why), models put on disk with
their external data in place, runs."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.errors import UsageError, VerificationError

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort

    from surgeon.ir.model import Model
    from surgeon.verify.config import Device


class SessionLoadError(VerificationError):
    """onnxruntime refused to load a model (nothing ran). Whose fault that is depends on the
    model: the caller decides (for the pipeline, the source's is a :class:`ModelError`, an
    edited model's a failure of the step that made it)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        """Why, in one line, with what fixes it where that is known."""
        super().__init__(f"{path}: onnxruntime cannot load the model: {reason}")


_IR_TOO_NEW = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")
_OPSET_TOO_NEW = re.compile(r"Opset (\d+) is under development.*?support for domain (\S+) is till opset (\d+)", re.S)
_NOISE = (
    re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : "),
    re.compile(r"^Load model from .*? failed:"),
    re.compile(r"^\S+\.(?:cc|h|cpp):\d+ .*?\) (?=[A-Z])"),  # C++ file:line and signature
)


def load_failure(exc: BaseException) -> str:
    """onnxruntime's load error as one line: the IR version or opset it does not know, with what
    fixes it, or its message without the C++ location."""
    import onnxruntime as ort

    text = str(exc).strip()
    version = ort.__version__
    m = _IR_TOO_NEW.search(text)
    if m:
        ir, top = m.groups()
        return (
            f"IR version {ir} is newer than this onnxruntime ({version}) loads (max {top}); re-export the "
            f"model with an onnx that writes IR version {top} or older, or upgrade onnxruntime "
            "(surgeon's convert-opset changes the opset, not the IR version)"
        )
    m = _OPSET_TOO_NEW.search(text)
    if m:
        opset, domain, top = m.groups()
        fix = (
            f"convert it: surgeon run convert-opset MODEL -o OUT --set opset={top} --no-verify (verifying "
            "needs onnxruntime to load the source), or re-export it with opset " + top
            if domain in ("ai.onnx", "")
            else f"re-export it with opset {top} of {domain}"
        )
        return f"opset {opset} of {domain} is newer than this onnxruntime ({version}) supports (up to {top}); {fix}"
    line = text.splitlines()[0] if text else type(exc).__name__
    for pattern in _NOISE:
        line = pattern.sub("", line).strip()
    return line[:400]


_NO_CUDA: dict[str, str] = {}
"""Per ``verify.device``: why CUDA does not load, where the first probe in this process found so.
That is the machine's and the onnxruntime build's answer, not a model's: later runtimes skip the
probe (another CUDA attempt costs milliseconds each time, most of a small model's session) and
build CPU sessions. Where CUDA loads the probe's session is the one wanted, so it stays; a probe
that failed on its model's session is not remembered."""


class Runtime:
    """Builds onnxruntime sessions on the configured device and remembers which one it got."""

    def __init__(self, device: Device = "auto", spin: bool = True) -> None:
        self.device = device
        self.spin = spin
        """Whether onnxruntime's worker threads spin after their work (its default). A caller that
        does its own work between many short runs turns it off: on a machine with few cores the
        spinning workers take the cores that work needs (a budgeted to-fp16 search of a small
        convolutional net: 24 ms a call with spinning, 15 ms without, on 2 cores)."""
        self.used = ""
        self.reason = ""
        self.sessions = 0
        """Sessions built so far (each :func:`run_model` builds one)."""
        self._providers: list[str] | None = None

    def _ort(self) -> Any:
        return quiet_ort()

    def session(
        self, path: Path, external_folder: Path | None = None, data: bytes | None = None
    ) -> ort.InferenceSession:
        ort = self._ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 4  # errors come back as exceptions, in surgeon's own lines
        threads = os.environ.get("SURGEON_ORT_THREADS", "")
        if threads.isdigit() and int(threads) > 0:  # set per worker when many models run at once
            so.intra_op_num_threads = int(threads)
        if not self.spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if external_folder is not None:
            so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
        src: Any = data if data is not None else str(path)
        self.sessions += 1
        if self._providers is None:
            why = _NO_CUDA.get(self.device)
            if why is not None:  # probed already in this process: CUDA does not load
                self._providers, self.used, self.reason = ["CPUExecutionProvider"], "CPU", why
            else:  # the probe's session with CUDA is the one wanted: it is not built twice
                self._providers, first = self._choose(ort, so, src)
                if first is not None:
                    return first
        try:
            return ort.InferenceSession(src, so, providers=self._providers)
        except Exception as exc:
            raise SessionLoadError(path, load_failure(exc)) from None

    def _choose(self, ort: Any, so: Any, src: Any) -> tuple[list[str], Any]:
        """The providers to use from now on, and the session built while finding out (if any)."""
        if self.device == "cpu":
            self.used, self.reason = "CPU", "device: cpu"
            return ["CPUExecutionProvider"], None
        sess = None
        remember = True
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            why = "this onnxruntime build has no CUDAExecutionProvider"
        else:
            with contextlib.suppress(Exception):
                if hasattr(ort, "preload_dlls"):
                    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                        ort.preload_dlls()
            try:  # the provider's load error is only logged: log errors, into a capture
                so.log_severity_level = 3
                ort.set_default_logger_severity(3)
                with captured_fds(2) as captured:
                    try:
                        sess = ort.InferenceSession(
                            src, so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
                        )
                    finally:
                        so.log_severity_level = 4
                        ort.set_default_logger_severity(4)
                if "CUDAExecutionProvider" in sess.get_providers():
                    self.used, self.reason = "CUDA", "CUDAExecutionProvider loaded"
                    return ["CUDAExecutionProvider", "CPUExecutionProvider"], sess
                why = "CUDAExecutionProvider is listed but did not load" + _cuda_error(captured.getvalue())
            except Exception as exc:  # this model's session failed: says nothing of the next model's
                why = f"CUDAExecutionProvider failed: {_first_line(exc)}"
                sess = None
                remember = False
        if self.device == "cuda":
            raise UsageError(f"verify.device is cuda but CUDA is unavailable: {why}")
        self.used, self.reason = "CPU", why
        if remember:
            _NO_CUDA[self.device] = why
        # onnxruntime fell back to the CPU by itself: that session is a CPU session with our options
        return ["CPUExecutionProvider"], sess if sess is not None and sess.get_providers() == [
            "CPUExecutionProvider"
        ] else None


def quiet_ort() -> Any:
    """onnxruntime, its default logger held to fatal messages: every session surgeon (or
    onnx-graphsurgeon's constant folding) builds reports errors as exceptions, which surgeon
    words in its own lines, instead of red log lines on the terminal."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    return ort


@contextlib.contextmanager
def captured_fds(*fds: int) -> Iterator[Any]:
    """Capture what native code writes to file descriptors ``fds`` (default 2: onnxruntime's
    provider errors; torch's C++ warnings go to 1 and 2). Yields a buffer, filled on exit."""
    import io

    buf = io.StringIO()
    saved: list[tuple[int, int]] = []
    sys.stdout.flush()  # what Python buffered so far belongs to the terminal, not the capture
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            for fd in fds or (2,):
                saved.append((fd, os.dup(fd)))
                os.dup2(tmp.fileno(), fd)
        except OSError:  # no real descriptors (an embedding host): nothing more to hold
            pass
        try:
            yield buf
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
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


IN_MEMORY_LIMIT = 64 << 20
"""A model held in memory up to this many bytes is handed to onnxruntime as bytes; a bigger one is
written to a temporary file (its serialized copy would sit in memory beside onnxruntime's own)."""


@contextlib.contextmanager
def on_disk(model: Model) -> Iterator[tuple[Path, Path | None, bytes | None]]:
    """The model as a file onnxruntime can open with its external data in place.

    Yields ``(path, external_folder, data)``: a model loaded from a file and unchanged is used
    as it is; one with external data is written next to its weights as a hidden temporary file
    (or, where that folder is read-only, handed over as bytes with the weights folder set); one
    held whole in memory, under :data:`IN_MEMORY_LIMIT`, is handed over as bytes.
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
    from surgeon.ir.save import save
    from surgeon.ir.walk import external_tensors

    if proto.ByteSize() < IN_MEMORY_LIMIT and not external_tensors(proto):
        # all of it in memory, and small: onnxruntime reads the bytes (no temporary file, no fsync)
        yield Path("<in memory>.onnx"), None, proto.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="surgeon-verify-") as tmpdir:
        path = Path(tmpdir) / "model.onnx"

        save(model, path)
        yield path, None, None


def run_model(
    runtime: Runtime, model: Model, feeds: Sequence[Mapping[str, np.ndarray]], name: str = ""
) -> list[dict[str, np.ndarray]]:
    """Run ``model`` once per feed in one session; outputs by name. ``name`` (``the model after
    passes[2] (to-fp16)``) starts the message of a failed run: "<name> fails: ..."."""
    with model_session(runtime, model, name) as run:
        return run(feeds)


Runs = Callable[[Sequence[Mapping[str, "np.ndarray"]]], list[dict[str, "np.ndarray"]]]
"""Runs a model's session once per feed; outputs by name."""


@contextlib.contextmanager
def model_session(runtime: Runtime, model: Model, name: str = "") -> Iterator[Runs]:
    """One session of ``model``, open while the block runs: yields a function that runs it on
    feeds (as :func:`run_model`), to be called as often as the caller decides from what it got
    (more feeds only where the first ones say they are needed: no second session)."""
    bf16 = [o.name for o in model.proto.graph.output if o.type.tensor_type.elem_type == BFLOAT16]
    if bf16:  # onnxruntime's Python API has no numpy type for them: read through a float32 Cast
        with _bfloat16_outputs_session(runtime, model, name, bf16) as run:
            yield run
        return
    prefix = f"{name} fails: " if name else ""
    with on_disk(model) as (path, folder, data):
        opened = [runtime.session(path, folder, data)]  # emptied when the block ends: the session goes
        names = [o.name for o in opened[0].get_outputs()]
        wanted = {i.name for i in opened[0].get_inputs()}
        quiet = quiet_ort().RunOptions()
        quiet.log_severity_level = 4  # a failed kernel is an exception, not a red log line

        def run(feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
            results = []
            for feed in feeds:
                missing = wanted - set(feed)
                if missing:
                    raise VerificationError(
                        f"{prefix}the model has input(s) the contract does not feed: {', '.join(sorted(missing))}"
                    )
                try:
                    outs = opened[0].run(names, {k: v for k, v in feed.items() if k in wanted}, quiet)
                except Exception as exc:
                    raise VerificationError(
                        f"{prefix}onnxruntime failed to run the model: {_first_line(exc)}"
                    ) from None
                results.append(dict(zip(names, outs)))
            return results

        try:
            yield run
        finally:
            opened.clear()
    if _model_bytes(model) >= RELEASE_AT:
        _release_freed_memory()


RELEASE_AT = 64 << 20
"""Models this large (file, or serialized, plus external data) hand their session's memory back
after each run. Below it the full garbage collection costs more than it frees: 75 ms a run in a
process that has imported torch, most of a small model's budgeted to-fp16 search."""


def _model_bytes(model: Model) -> int:
    """The model's size on disk or in memory, external data included (no file is read)."""
    total = 0
    if model.base_dir is not None:
        for name in model.data_files:
            with contextlib.suppress(OSError):
                total += (model.base_dir / name).stat().st_size
    if model.path is not None:
        with contextlib.suppress(OSError):
            return total + model.path.stat().st_size
    return total + model.proto.ByteSize()


BF16_SUFFIX = "__surgeon_bf16_as_f32"
BFLOAT16 = 16
"""``onnx.TensorProto.BFLOAT16``."""


@contextlib.contextmanager
def _bfloat16_outputs_session(runtime: Runtime, model: Model, name: str, outputs: Sequence[str]) -> Iterator[Runs]:
    """A session of a copy of ``model`` whose bfloat16 graph outputs are read through Casts to
    float32 (exact: every bfloat16 is a float32), handed back as ``ml_dtypes.bfloat16`` arrays, so
    that they are compared as bfloat16 (and sized for it, :data:`surgeon.verify.compare.PRECISION`)."""
    import ml_dtypes
    import onnx
    from onnx import helper

    from surgeon.ir.model import Model

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for out in proto.graph.output:
        if out.name in outputs:
            wide = out.name + BF16_SUFFIX
            proto.graph.node.append(helper.make_node("Cast", [out.name], [wide], to=onnx.TensorProto.FLOAT))
            out.name = wide
            out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    wrapper = Model(proto, None, model.base_dir, list(model.data_files), model.source_external)
    back = {o + BF16_SUFFIX: o for o in outputs}
    with model_session(runtime, wrapper, name) as run:

        def narrowed(feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
            return [
                {back.get(k, k): (v.astype(ml_dtypes.bfloat16) if k in back else v) for k, v in r.items()}
                for r in run(feeds)
            ]

        yield narrowed


def _release_freed_memory() -> None:
    """Hand the memory of a closed session back to the system (glibc keeps freed arenas, which
    would add one model's weights to the peak when the next session loads)."""
    import ctypes
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)  # glibc; absent on musl (AttributeError)


ORT_MIN_OPSET = 7
"""onnxruntime 'only guarantees support for models stamped with opset version 7 or above'."""


def _probe_model(opset: int, ir_version: int) -> bytes:
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(
        g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
    ).SerializeToString()


def session_error(src: Any, folder: str | None = None) -> str:
    """The error text of building a CPU session (optimizations off), '' when it loads."""
    ort = quiet_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4  # the error is read from the exception, not the log
    if folder is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    try:
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        return str(exc)
    return ""


@functools.cache
def ort_limits() -> dict[str, int]:
    """The newest IR version and default-domain opset the installed onnxruntime loads, read from
    its own refusals of a tiny model stamped far beyond both."""
    limits = {"max_ir_version": 0, "max_opset": 0, "min_opset": ORT_MIN_OPSET}
    m = re.search(r"max supported IR version: (\d+)", session_error(_probe_model(17, 1000)))
    if m:
        limits["max_ir_version"] = int(m.group(1))
    m = re.search(r"support for domain ai\.onnx is till opset (\d+)", session_error(_probe_model(1000, 8)))
    if m:
        limits["max_opset"] = int(m.group(1))
    return limits


# --- the runtime's default session, in a child process -------------------------------------------

DEFAULT_LEVEL_CHILD = "from surgeon.verify.runtime import default_level_child; default_level_child()"
"""The program of the child process that loads and runs models at onnxruntime's default
optimization level (``python -c``; it imports only this module, onnxruntime and numpy). One child
serves a surgeon process (started at the first check, about 0.4 s; each later check costs a
session and a run); one that crashed is replaced at the next check."""

DEFAULT_LEVEL_TIMEOUT = 600.0
"""Seconds one check may take (a model that hangs the default session is said to, not waited on)."""

_CHILDREN: dict[str, Any] = {}


def default_level_problem(runtime: Runtime, model: Model, feed: Mapping[str, np.ndarray] | None) -> str:
    """Load ``model`` and run it once on ``feed`` in a child process, with onnxruntime's default
    session options (``ORT_ENABLE_ALL``: every graph optimization, unlike the verifier's sessions)
    and the verifier's providers, so a crash (an onnxruntime bug in an optimizer or a fused kernel)
    ends the child, not this process. Returns "" when it ran, else what happened, in one line."""
    import numpy as np

    providers = runtime._providers or ["CPUExecutionProvider"]
    with on_disk(model) as (path, folder, data), tempfile.TemporaryDirectory(prefix="surgeon-default-") as tmp:
        if data is not None:  # the weights folder is read-only: the graph goes to a file of its own
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
        feed_path = Path(tmp) / "feed.npz"
        runnable = feed is not None and all(np.asarray(v).dtype.kind != "O" for v in feed.values())
        names = list(feed) if feed is not None and runnable else []
        # by position, with the names beside: an input may be named anything ('file', 'a/b')
        np.savez(feed_path, *[np.asarray(feed[k]) for k in names] if feed is not None else [])
        job = [str(path), str(feed_path) if runnable else "", names, str(folder or ""), providers]
        return _ask_child(job)


def _ask_child(job: list[Any]) -> str:
    """``job`` for the child (started if none is alive): its answer, or how it died."""
    import subprocess
    import threading

    child = _CHILDREN.get(DEFAULT_LEVEL_CHILD)
    if child is None or child.poll() is not None:
        try:
            child = subprocess.Popen(
                [sys.executable, "-c", DEFAULT_LEVEL_CHILD],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError as exc:
            return f"the child process could not start: {exc}"
        _CHILDREN[DEFAULT_LEVEL_CHILD] = child
    answer: list[str] = []
    stdin, stdout = child.stdin, child.stdout
    assert stdin is not None and stdout is not None
    try:
        stdin.write(json.dumps(job) + "\n")
        stdin.flush()
        reader = threading.Thread(target=lambda: answer.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(DEFAULT_LEVEL_TIMEOUT)
    except OSError:  # it died before reading the job
        pass
    if answer and answer[0].strip():
        return str(json.loads(answer[0]))
    _CHILDREN.pop(DEFAULT_LEVEL_CHILD, None)
    if not answer:  # still busy: hung
        child.kill()
        child.wait()
        return f"did not finish in {DEFAULT_LEVEL_TIMEOUT:g} s"
    code = child.wait()
    if code < 0:
        import signal

        try:
            return f"crashed ({signal.Signals(-code).name})"
        except ValueError:
            return f"crashed (signal {-code})"
    return f"the child process ended (exit code {code})"


def default_level_child() -> None:
    """The child of :func:`default_level_problem`: reads one job a line on stdin (the model, the
    .npz feed or '' to only load it, the feed's names, the external data folder or '', the
    providers) and answers one JSON string a line: '' when the model loaded and ran, else what
    failed."""
    for line in sys.stdin:
        print(json.dumps(_default_level_run(*json.loads(line))), flush=True)


def _default_level_run(model: str, feed_path: str, names: list[str], folder: str, providers: list[str]) -> str:
    import numpy as np

    ort = quiet_ort()
    so = ort.SessionOptions()  # the default: ORT_ENABLE_ALL
    so.log_severity_level = 4
    if folder:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    try:
        sess = ort.InferenceSession(model, so, providers=providers)
    except Exception as exc:
        return f"onnxruntime cannot load it: {load_failure(exc)}"
    if feed_path:
        with np.load(feed_path, allow_pickle=False) as data:
            feed = {k: data[f"arr_{i}"] for i, k in enumerate(names)}
        try:
            sess.run(None, feed)
        except Exception as exc:
            return f"onnxruntime failed to run it: {_first_line(exc)}"
    return ""
