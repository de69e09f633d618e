"""``surgeon export pkg.module:factory`` and a recipe's ``source:`` block: a plain
``torch.onnx.export`` of the module a factory returns (eval mode, ``no_grad``), verified as the
first step: the torch module's outputs against onnxruntime's on the same inputs, then on fresh
ones. torch is imported only inside functions."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import re
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from surgeon.errors import ModelError, UsageError, VerificationError, short_error
from surgeon.verify.specs import Axes

if TYPE_CHECKING:
    from surgeon.ir.model import Model

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")
_LOG_PREFIX = re.compile(r"^[IWE]\d{4} [\d:.]+ \d+ [^\]]+\] ")
"""torch's glog-style log lines (``W1201 23:48:40.285000 29949 file.py:107] ...``): kept only when they warn."""
_SPEC = re.compile(r"^([\w.]+):([\w.]+)$")


@dataclass
class ExportInput:
    """One input of the traced call: ``name:1x3x224x224:float32`` on the command line."""

    name: str
    shape: list[int]
    dtype: str = "float32"
    value: Any = None
    """The values traced and first compared (``--input factor=3.0``, ``--inputs data.npz``): an
    array of ``shape``; None: seeded random data."""
    low: float | None = None
    high: float | None = None
    """``--range NAME=LOW:HIGH``: random data drawn from ``[low, high)``."""


@dataclass
class ExportResult:
    path: Path
    exporter: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    """Per output: name, shape, max_abs, max_rel, ok."""
    warnings: list[tuple[str, int]] = field(default_factory=list)
    """Distinct warning lines (category: first line) and how often each came."""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o["ok"] for o in self.outputs)

    def failures(self) -> list[str]:
        lines = []
        for o in self.outputs:
            if not o["ok"]:
                what = o["note"] or f"max abs error {o['max_abs']:.3g}, max rel error {o['max_rel']:.3g}"
                lines.append(f"export ({self.exporter}) differs from torch: {o['name']}: {what}")
        return lines

    def line(self) -> str:
        """One line for reports: verdict and the largest error."""
        errs = [o["max_abs"] for o in self.outputs if o["max_abs"] is not None]
        worst = f", max abs error {max(errs):.3g}" if errs else ""
        verdict = "ok" if self.ok else "FAIL"
        return (
            f"export ({self.exporter}) verified against torch on onnxruntime CPU: "
            f"{verdict} ({len(self.outputs)} outputs{worst})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "exporter": self.exporter,
            "ok": self.ok,
            "outputs": self.outputs,
            "warnings": [{"line": w, "count": n} for w, n in self.warnings],
            "notes": self.notes,
        }


def parse_input(text: str) -> ExportInput:
    """``image:1x3x224x224[:float32]``; with ``=VALUE`` (``factor=3.0``: a float32 scalar,
    ``factor:1=3.0``, ``ids:1x3:int64=1,2,3``) the value traced and first compared: one number
    filling the shape, or one per element."""
    text_spec, eq, value = text.partition("=")
    if eq:
        spec = parse_input(text_spec if ":" in text_spec else f"{text_spec}:")
        spec.value = _value(text, value, spec)
        return spec
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise UsageError(f"--input '{text}': expected NAME:DIMS[:DTYPE][=VALUE], e.g. image:1x3x224x224:float32")
    try:
        shape = [int(d) for d in parts[1].lower().split("x")] if parts[1] else []
    except ValueError:
        raise UsageError(f"--input '{text}': dims must be integers joined by 'x' (1x3x224x224)") from None
    dtype = parts[2] if len(parts) == 3 else "float32"
    if dtype not in DTYPES or any(d <= 0 for d in shape):
        raise UsageError(f"--input '{text}': dtype must be one of {', '.join(DTYPES)} and dims positive")
    return ExportInput(parts[0], shape, dtype)


class SourceConfig(BaseModel):
    """A recipe's ``source:`` block: the model is exported from torch, not read from a file."""

    model_config = ConfigDict(extra="forbid")

    factory: str = Field(
        description=(
            "MODULE:FACTORY, a callable taking no arguments that returns the nn.Module "
            "(the recipe's folder is importable)"
        )
    )
    inputs: list[str] = Field(
        min_length=1,
        description="the inputs, in forward's order: NAME:DIMS[:DTYPE][=VALUE], e.g. image:1x3x224x224:float32, "
        "factor=3.0 (traced with that value)",
    )
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo", description="torch.onnx.export's exporter (torchscript: dynamo=False)"
    )
    opset: int | None = Field(None, ge=7, description="opset_version (default: the exporter's)")
    output_names: list[str] = Field(default_factory=list, description="output names, in order")
    dynamic: list[str] = Field(default_factory=list, description="dynamic axes NAME:AXIS:SYMBOL, e.g. image:0:batch")
    rtol: float = Field(1e-4, ge=0, description="relative tolerance of torch against onnxruntime")
    atol: float = Field(1e-5, ge=0, description="absolute tolerance of torch against onnxruntime")

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str) -> str:
        if not _SPEC.match(v):
            raise ValueError(f"expected MODULE:FACTORY, e.g. mypkg.models:build (got '{v}')")
        return v

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: list[str]) -> list[str]:
        for text in v:
            try:
                parse_input(text)
            except UsageError as exc:
                raise ValueError(str(exc).removeprefix("--input ")) from None
        return v

    def specs(self) -> list[ExportInput]:
        return [parse_input(t) for t in self.inputs]


def _value(text: str, value: str, spec: ExportInput) -> Any:
    import numpy as np

    try:
        numbers = [float(v) for v in value.split(",")] if value.strip() else []
    except ValueError:
        raise UsageError(f"--input '{text}': the value must be numbers separated by commas (factor=3.0)") from None
    size = int(np.prod(spec.shape)) if spec.shape else 1
    if len(numbers) not in (1, size):
        raise UsageError(f"--input '{text}': {len(numbers)} values for {size} elements; give one, or one per element")
    dtype = np.float32 if spec.dtype == "bfloat16" else np.dtype(spec.dtype)
    return np.broadcast_to(np.asarray(numbers, dtype=np.float64), (size,)).reshape(spec.shape).astype(dtype)


def parse_range(text: str, specs: list[ExportInput]) -> None:
    """``--range factor=2:4``: that input's random data drawn from ``[2, 4)`` (traced and fresh)."""
    name, _, bounds = text.partition("=")
    low, _, high = bounds.partition(":")
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        raise UsageError(f"--range '{text}': expected NAME=LOW:HIGH, e.g. factor=2:4") from None
    if not lo < hi:
        raise UsageError(f"--range '{text}': LOW must be below HIGH")
    spec = next((s for s in specs if s.name == name), None)
    if spec is None:
        raise UsageError(f"--range '{text}': no input '{name}'; they are: {', '.join(s.name for s in specs)}")
    spec.low, spec.high = lo, hi


def read_inputs(path: Path, specs: list[ExportInput]) -> list[ExportInput]:
    """``--inputs data.npz``: each array the value of the input of its name (its shape and dtype
    too); inputs not given by ``--input`` follow them in the file's order."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"--inputs {path}: cannot read it as .npz ({short_error(exc)})") from None
    out = list(specs)
    for name, arr in arrays.items():
        dtype = str(arr.dtype)
        if dtype not in DTYPES:
            raise UsageError(f"--inputs {path}: '{name}' is {dtype}; the dtypes are: {', '.join(DTYPES)}")
        spec = next((s for s in out if s.name == name), None)
        if spec is None:
            out.append(ExportInput(name, list(arr.shape), dtype, arr))
        else:
            spec.shape, spec.dtype, spec.value = list(arr.shape), dtype, arr
    return out


def parse_dynamic(items: list[str], names: list[str]) -> Axes:
    """``image:0:batch`` entries as dynamic_axes (inputs or output names)."""
    out: Axes = {}
    for item in items:
        name, _, rest = item.partition(":")
        axis, _, sym = rest.partition(":")
        if not name or not axis.lstrip("-").isdigit() or not sym:
            raise UsageError(f"--dynamic '{item}': expected NAME:AXIS:SYMBOL, e.g. image:0:batch")
        if name not in names:
            raise UsageError(f"--dynamic '{item}': no input or output '{name}'; they are: {', '.join(names)}")
        out.setdefault(name, {})[int(axis)] = sym
    return out


USER_ERRORS = (Exception, SystemExit)
"""What user code (a factory's module, the factory, ``forward``) may raise that is its failure, not
surgeon's: ``SystemExit`` included (``sys.exit(0)`` in a factory is not a successful run). A real
Ctrl-C (``KeyboardInterrupt``) is not caught."""


def raised(exc: BaseException) -> str:
    """``Name: first line`` of what user code raised; ``sys.exit(n)`` said as such."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: it called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {_plain(short_error(exc))}"


@contextlib.contextmanager
def user_code() -> Iterator[None]:
    """Around every call into user code: ``breakpoint()`` does nothing (as under
    ``PYTHONBREAKPOINT=0``: a debugger prompt would wait on stdin, which in CI is no terminal)."""
    hook = sys.breakpointhook
    sys.breakpointhook = _no_breakpoint
    try:
        yield
    finally:
        sys.breakpointhook = hook


def _no_breakpoint(*args: Any, **kwargs: Any) -> None:
    return None


def load_factory(spec: str, folder: Path | None = None, call: bool = True) -> Any:
    """The module the factory ``pkg.module:callable`` returns, ``folder`` (default: the current
    one) importable; with ``call=False`` only the factory itself, not called."""
    import torch

    m = _SPEC.match(spec)
    if not m:
        raise UsageError(f"'{spec}': expected MODULE:FACTORY, e.g. mypkg.models:build")
    mod_name, attr = m.groups()
    where = str(folder.resolve()) if folder is not None else os.getcwd()
    if where not in sys.path:
        sys.path.insert(0, where)
    try:
        with user_code():
            mod = importlib.import_module(mod_name)
    except USER_ERRORS as exc:
        raise UsageError(f"'{spec}': cannot import {mod_name}: {raised(exc)}") from None
    factory = mod
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UsageError(f"'{spec}': {mod_name} has no attribute '{attr}'")
        factory = getattr(factory, part)
    if not callable(factory):
        raise UsageError(f"'{spec}': {attr} is not callable")
    if not call:
        return factory
    try:
        with user_code():
            module = factory() if not isinstance(factory, torch.nn.Module) else factory
    except TypeError as exc:
        raise UsageError(f"'{spec}': the factory must take no arguments: {short_error(exc)}") from None
    except USER_ERRORS as exc:
        raise UsageError(f"'{spec}': the factory raised {raised(exc)}") from None
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"'{spec}': the factory returned {type(module).__name__}, not a torch.nn.Module")
    return module


def factory_file(spec: str, folder: Path | None = None) -> Path | None:
    """The file ``MODULE`` of ``MODULE:FACTORY`` would be imported from, found by path search in
    ``folder`` (the recipe's; searched first, as :func:`load_factory` puts it first on ``sys.path``)
    and ``sys.path``, executing nothing (``importlib.util.find_spec`` would import the parent
    packages). None when no ``.py`` file or package ``__init__.py`` is found there (a built-in or
    compiled module, a zip import)."""
    m = _SPEC.match(spec)
    if not m:
        return None
    parts = m.group(1).split(".")
    roots = ([str(folder.resolve())] if folder is not None else []) + [p or os.getcwd() for p in sys.path]
    for root in roots:
        base = Path(root, *parts)
        for candidate in (base.with_name(parts[-1] + ".py"), base / "__init__.py"):
            try:
                if candidate.is_file():
                    return candidate
            except OSError:
                continue
    return None


def check_factory(spec: str, folder: Path | None = None) -> Path:
    """``surgeon validate`` of a ``source:`` block, without importing or running anything: the
    module's file exists (see :func:`factory_file`), parses as Python, and defines the factory's
    first name at its top level (``def``, ``class``, an assignment or an import; a module with
    ``from x import *`` or a module ``__getattr__`` is given the benefit of the doubt)."""
    import ast

    m = _SPEC.match(spec)
    if not m:
        raise UsageError(f"'{spec}': expected MODULE:FACTORY, e.g. mypkg.models:build")
    mod_name, attr = m.groups()
    path = factory_file(spec, folder)
    if path is None:
        where = f"the recipe's folder ({folder}) or sys.path" if folder is not None else "sys.path"
        raise UsageError(f"'{spec}': no file for module {mod_name} in {where}")
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (SyntaxError, ValueError) as exc:
        raise UsageError(f"'{spec}': {path} is not valid Python: {short_error(exc)}") from None
    except OSError as exc:
        raise UsageError(f"'{spec}': cannot read {path}: {exc.strerror or short_error(exc)}") from None
    names: set[str] = set()
    for node in _module_level(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    first = attr.split(".")[0]
    if first not in names and "*" not in names and "__getattr__" not in names:
        raise UsageError(f"'{spec}': {mod_name} has no attribute '{first}' ({path} does not define it)")
    return path


def _module_level(body: list[Any]) -> Iterator[Any]:
    """The statements run at a module's top level, those inside ``if``/``try``/``with`` included."""
    import ast

    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for part in ("body", "orelse", "finalbody"):
                yield from _module_level(getattr(node, part, []))
            for handler in getattr(node, "handlers", []):
                yield from _module_level(handler.body)


def example_inputs(specs: list[ExportInput], seed: int = 0) -> list[Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in specs:
        dt = getattr(torch, s.dtype)
        if s.value is not None and list(s.value.shape) == list(s.shape):
            given = torch.from_numpy(s.value.copy()).to(dt)
            # the traced draw is the given value; the fresh one another (one more; a flipped bool)
            out.append(given if seed == 0 else (~given if dt == torch.bool else given + 1))
        elif s.low is not None and s.high is not None:
            drawn = torch.rand(s.shape, generator=gen, dtype=torch.float64) * (s.high - s.low) + s.low
            out.append(drawn.to(dt) if dt.is_floating_point else drawn.floor().to(dt))
        elif dt.is_floating_point:
            out.append((torch.rand(s.shape, generator=gen) * 2 - 1).to(dt))
        elif dt == torch.bool:
            out.append(torch.randint(0, 2, s.shape, generator=gen).bool())
        else:
            out.append(torch.randint(0, 4, s.shape, generator=gen).to(dt))
    return out


@contextlib.contextmanager
def _quiet_torch_logs() -> Any:
    """torch's exporter logs through handlers bound to the real stderr: hold them to errors."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.fx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _plain(text: str) -> str:
    """Without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _summarise(caught: list[warnings.WarningMessage], chatter: str, native: str = "") -> list[tuple[str, int]]:
    """Warnings, the warning lines of the exporter's chatter and every line torch's C++ code
    printed (its log lines only when they warn), each distinct line once with its count."""
    lines = Counter(
        f"{w.category.__name__}: {str(w.message).strip().splitlines()[0] if str(w.message).strip() else ''}"
        for w in caught
    )
    for source, line in [("", t) for t in chatter.splitlines()] + [("native", t) for t in native.splitlines()]:
        logged = _LOG_PREFIX.match(line.strip())
        line = _LOG_PREFIX.sub("", line.strip())
        if not line:
            continue
        if (
            (source and not logged)
            or line.startswith(("Warning", "UserWarning", "TracerWarning"))
            or "warn" in line.lower()[:40]
        ):
            lines[line[:200]] += 1
    return lines.most_common()


def _flatten(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten(v)]
    return []


def export(
    module: Any,
    specs: list[ExportInput],
    output: Path,
    *,
    exporter: str = "dynamo",
    opset: int | None = None,
    output_names: list[str] | None = None,
    dynamic: list[str] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    force: bool = False,
) -> ExportResult:
    """Export ``module`` to ``output`` and compare torch's outputs with onnxruntime's: on the
    inputs it was traced with, then on fresh ones (other values, each dynamic axis at another
    size), which catches values the trace froze (``.item()``, numpy, Python numbers, data-dependent
    branches). Written atomically; only when the outputs agree (or ``force``)."""
    import torch

    from surgeon.verify.runtime import captured_fds

    if not output.parent.is_dir():
        raise UsageError(f"{output}: output folder '{output.parent}' does not exist")
    names = [s.name for s in specs]
    module = module.eval()
    inputs = example_inputs(specs)
    try:
        with user_code():
            expected = _run_torch(module, inputs)
    except USER_ERRORS as exc:  # the user's module on the user's inputs: a model error, not surgeon's
        given = ", ".join(f"{s.name}:{'x'.join(map(str, s.shape)) or 'scalar'}:{s.dtype}" for s in specs)
        raise ModelError(f"the module fails on the given inputs ({given}): {raised(exc)}") from None
    out_names = output_names or None
    axes = parse_dynamic(dynamic or [], names + list(out_names or []))
    kwargs: dict[str, Any] = {"input_names": names, "output_names": out_names, "dynamo": exporter == "dynamo"}
    if opset is not None:
        kwargs["opset_version"] = opset
    if axes:
        kwargs["dynamic_axes"] = axes
    result = ExportResult(output, exporter)
    with tempfile.TemporaryDirectory(prefix=".surgeon-export-", dir=output.parent) as tmp:
        tmp_path = Path(tmp) / output.name
        chatter = io.StringIO()
        with (
            warnings.catch_warnings(record=True) as caught,
            captured_fds(1, 2) as native,
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
            torch.no_grad(),
        ):
            warnings.simplefilter("always")
            try:
                with _quiet_torch_logs(), user_code():
                    torch.onnx.export(module, tuple(inputs), str(tmp_path), **kwargs)
            except USER_ERRORS as exc:
                raise ExportRefused(f"torch.onnx.export ({exporter}) failed: {refusal(exc)}", _full_text(exc)) from None
        result.warnings = _summarise(list(caught), chatter.getvalue(), native.getvalue())
        result.notes += _fit_ir_version(tmp_path)
        draws = [("traced inputs", inputs, expected)]
        fresh_specs, resized = _fresh_specs(specs, axes)
        fresh = example_inputs(fresh_specs, seed=1)
        what = "fresh inputs" + (f" ({', '.join(resized)})" if resized else "")
        try:
            with user_code():
                draws.append((what, fresh, _run_torch(module, fresh)))
        except USER_ERRORS as exc:  # the module's own domain: say so, compare what can be compared
            result.notes.append(f"torch fails on {what} ({raised(exc)}): compared on the traced inputs only")
        from surgeon.ir.model import load

        model = load(tmp_path)  # read once: compared, then saved
        result.outputs, present = _compare(model, specs, draws, rtol, atol)
        for i, s in enumerate(specs):
            if s.name not in present:
                row, note = _dropped(module, specs, inputs, expected, i, rtol, atol)
                result.outputs += [row] if row else []
                result.notes += [note] if note else []
        if result.ok or force:  # surgeon's save: the (model, data) pair replaced atomically, model last
            from surgeon.ir.save import save

            save(model, output)
    return result


class ExportRefused(ModelError):
    """The exporter refused the module: one line (torch's own summary kept), ``detail`` the full text."""

    def __init__(self, message: str, detail: str = "") -> None:
        self.detail = detail
        super().__init__(message)


def refusal(exc: BaseException) -> str:
    """One line for an exporter's refusal: its own first sentence, then torch's summary of the
    cause (dynamo's ``## Exception summary``, else the innermost cause), which its first line
    (ending at "Next steps:") drops."""
    if isinstance(exc, SystemExit):
        return raised(exc)
    text = _plain(str(exc)).strip()
    head = text.splitlines()[0] if text else ""
    head = re.sub(r"\s*Next steps:\s*$", "", head).strip()
    cause = ""
    marker = "## Exception summary"
    if marker in text:
        cause = next((ln.strip() for ln in text.split(marker, 1)[1].splitlines() if ln.strip()), "")
        cause = re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>:", r"\1:", cause)
    if not cause:
        inner = exc
        seen = {id(exc)}
        while (nxt := inner.__cause__ or inner.__context__) is not None and id(nxt) not in seen:
            seen.add(id(nxt))
            inner = nxt
        if inner is not exc:
            cause = f"{type(inner).__name__}: {_plain(short_error(inner))}"
    line = f"{type(exc).__name__}: {head}" if head else type(exc).__name__
    return f"{line} {cause}" if cause and cause not in line else line


def _full_text(exc: BaseException) -> str:
    """An exception's whole text, its causes' too, for ``-v``."""
    parts = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(f"{type(cur).__name__}: {_plain(str(cur)).strip()}")
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


def _run_torch(module: Any, inputs: list[Any]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy() for t in _flatten(module(*inputs))]


def _fresh_specs(specs: list[ExportInput], axes: Axes) -> tuple[list[ExportInput], list[str]]:
    """The inputs with every dynamic axis one larger (axes sharing a symbol alike)."""
    sizes: dict[str, int] = {}
    out = []
    for s in specs:
        shape = list(s.shape)
        for axis, sym in axes.get(s.name, {}).items():
            if -len(shape) <= axis < len(shape):
                sizes.setdefault(sym, shape[axis] + 1)
                shape[axis] = sizes[sym]
        out.append(dataclasses.replace(s, shape=shape, value=s.value if shape == s.shape else None))
    return out, [f"{sym}={n}" for sym, n in sizes.items()]


def _fit_ir_version(path: Path) -> list[str]:
    """The exporter may stamp an IR version newer than the installed onnxruntime loads: lower the
    number (the exporters' output uses nothing of the newer IR) and say so."""
    import onnx

    from surgeon.verify.runtime import ort_limits

    limit = ort_limits()["max_ir_version"]
    model = onnx.load(str(path), load_external_data=False)
    if limit and model.ir_version > limit:
        old, model.ir_version = model.ir_version, limit
        onnx.save(model, str(path))
        return [f"IR version {old} lowered to {limit}, the newest this onnxruntime loads"]
    return []


def _compare(
    model: Model, specs: list[ExportInput], draws: list[tuple[str, list[Any], list[Any]]], rtol: float, atol: float
) -> tuple[list[dict[str, Any]], set[str]]:
    """One row per output, its worst draw; and the names of the model's inputs."""
    from surgeon.verify.runtime import Runtime, run_model

    present = {i.name for i in model.proto.graph.input}
    out_names = [o.name for o in model.proto.graph.output]
    rows: dict[str, dict[str, Any]] = {}
    runtime = Runtime("cpu")
    feeds = [{s.name: t.numpy() for s, t in zip(specs, inputs) if s.name in present} for _, inputs, _ in draws]
    try:  # one session for every draw; where one fails, each on its own, to say which
        results: list[Any] = run_model(runtime, model, feeds)
    except Exception:
        results = []
        for feed in feeds:
            try:
                results.append(run_model(runtime, model, [feed])[0])
            except Exception as exc:
                results.append(exc)
    for (what, _, expected), actual in zip(draws, results):
        if isinstance(actual, Exception):
            row: dict[str, Any] = {
                "name": "(model)",
                "shape": [],
                "max_abs": None,
                "max_rel": None,
                "ok": False,
                "note": f"onnxruntime fails on the {what}: {short_error(actual)}",
            }
            rows.setdefault("(model)", row)
            continue
        for name, exp in zip(out_names, expected):
            row = _row(name, actual[name], exp, rtol, atol)
            earlier = rows.get(name)
            if not row["ok"] and earlier is not None:  # a fresh draw
                frozen = (
                    "; agrees on the traced inputs: the export froze values computed from the inputs "
                    "(.item(), numpy, Python numbers, a data-dependent branch)"
                    if earlier["ok"]
                    else ""
                )
                row["note"] = f"on the {what}" + (f": {row['note']}" if row["note"] else "") + frozen
            if earlier is None or (earlier["ok"] and not row["ok"]):
                rows[name] = row
        if len(expected) != len(out_names):
            rows["(outputs)"] = {
                "name": "(outputs)",
                "shape": [],
                "max_abs": None,
                "max_rel": None,
                "ok": False,
                "note": f"torch returns {len(expected)} tensors, the model has {len(out_names)} outputs",
            }
    return list(rows.values()), present


def _dropped(
    module: Any, specs: list[ExportInput], inputs: list[Any], expected: list[Any], i: int, rtol: float, atol: float
) -> tuple[dict[str, Any] | None, str]:
    """An input the exported model lacks: a failed row when torch's outputs depend on it (the
    exporter froze it), a note when they do not (unused) or when no other value of it runs."""
    import numpy as np

    name = specs[i].name
    lost = f"input '{name}' is not in the exported model"
    ran = 0
    for other in _other_values(specs[i], inputs[i]):
        changed = list(inputs)
        changed[i] = other
        try:
            with user_code():
                got = _run_torch(module, changed)
        except USER_ERRORS:
            continue
        ran += 1
        if len(got) == len(expected) and all(
            g.shape == e.shape and np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
            for g, e in zip(got, expected)
        ):
            continue
        why = (
            "the exporter traced it into constants (.item(), numpy or a Python number computed "
            "from it); use it as a tensor, or export with --force and let 'surgeon doctor' propose "
            "a fix (a frozen Resize factor: promote-resize-scales)"
        )
        return {
            "name": f"(input {name})",
            "shape": list(specs[i].shape),
            "max_abs": None,
            "max_rel": None,
            "ok": False,
            "note": f"{lost}, but torch's outputs change with it: {why}",
        }, ""
    if ran:
        return None, f"{lost}: torch's outputs do not depend on its values (unused, or only its shape is)"
    return None, f"{lost}; torch runs on no other value of it, so whether the outputs depend on it is unknown"


def _other_values(spec: ExportInput, traced: Any) -> list[Any]:
    """Values of one input other than the traced one: a fresh draw, twice it, one more."""
    import torch

    fresh = example_inputs([spec], seed=1)[0]
    if traced.dtype == torch.bool:
        return [~traced]
    return [fresh, traced * 2, traced + 1]


def _row(name: str, got: Any, exp: Any, rtol: float, atol: float) -> dict[str, Any]:
    import numpy as np

    got = got.astype(np.float64) if got.dtype != bool else got
    ref = np.asarray(exp, dtype=got.dtype)
    if got.shape != ref.shape:
        return {
            "name": name,
            "shape": list(got.shape),
            "max_abs": None,
            "max_rel": None,
            "ok": False,
            "note": f"shape {list(got.shape)}, torch gives {list(ref.shape)}",
        }
    diff = np.abs(got - ref) if got.dtype != bool else (got != ref).astype(np.float64)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(ref), 1e-12)).max()) if diff.size and got.dtype != bool else max_abs
    ok = bool(np.allclose(got, ref, rtol=rtol, atol=atol, equal_nan=True)) if got.dtype != bool else max_abs == 0
    return {"name": name, "shape": list(got.shape), "max_abs": max_abs, "max_rel": max_rel, "ok": ok, "note": ""}


@contextlib.contextmanager
def exported_source(
    source: SourceConfig, base_dir: Path, near: Path | None = None
) -> Iterator[tuple[Path, ExportResult]]:
    """A recipe's ``source:`` exported into a private folder (next to ``near``, the output, so
    nothing crosses file systems) for the pipeline to read; removed afterwards. Raises
    :class:`VerificationError` when torch and onnxruntime disagree."""
    folder = near.parent if near is not None and near.parent.is_dir() else None
    module = load_factory(source.factory, base_dir)
    with tempfile.TemporaryDirectory(prefix=".surgeon-source-", dir=folder) as tmp:
        path = Path(tmp) / "source.onnx"
        result = export(
            module,
            source.specs(),
            path,
            exporter=source.exporter,
            opset=source.opset,
            output_names=source.output_names,
            dynamic=source.dynamic,
            rtol=source.rtol,
            atol=source.atol,
        )
        if not result.ok:
            lines = [f"verification failed: source: {line}" for line in result.failures()]
            raise VerificationError("\n".join(lines), lines=lines)
        yield path, result
