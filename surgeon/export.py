"""``surgeon export pkg.module:factory``: a plain ``torch.onnx.export`` of the module a factory
returns (eval mode, ``no_grad``), verified as the first step: the torch module's outputs against
onnxruntime's on the same inputs. torch is imported only inside functions."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgeon.errors import ModelError, UsageError, short_error

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")
_SPEC = re.compile(r"^([\w.]+):([\w.]+)$")


@dataclass
class InputSpec:
    name: str
    shape: list[int]
    dtype: str = "float32"


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


def parse_input(text: str) -> InputSpec:
    """``image:1x3x224x224[:float32]``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise UsageError(f"--input '{text}': expected NAME:DIMS[:DTYPE], e.g. image:1x3x224x224:float32")
    try:
        shape = [int(d) for d in parts[1].lower().split("x")] if parts[1] else []
    except ValueError:
        raise UsageError(f"--input '{text}': dims must be integers joined by 'x' (1x3x224x224)") from None
    dtype = parts[2] if len(parts) == 3 else "float32"
    if dtype not in DTYPES or any(d <= 0 for d in shape):
        raise UsageError(f"--input '{text}': dtype must be one of {', '.join(DTYPES)} and dims positive")
    return InputSpec(parts[0], shape, dtype)


def parse_dynamic(items: list[str], names: list[str]) -> dict[str, dict[int, str]]:
    """``image:0:batch`` entries as dynamic_axes (inputs or output names)."""
    out: dict[str, dict[int, str]] = {}
    for item in items:
        name, _, rest = item.partition(":")
        axis, _, sym = rest.partition(":")
        if not name or not axis.lstrip("-").isdigit() or not sym:
            raise UsageError(f"--dynamic '{item}': expected NAME:AXIS:SYMBOL, e.g. image:0:batch")
        if name not in names:
            raise UsageError(f"--dynamic '{item}': no input or output '{name}'; they are: {', '.join(names)}")
        out.setdefault(name, {})[int(axis)] = sym
    return out


def load_factory(spec: str) -> Any:
    """The module the factory ``pkg.module:callable`` returns (the current folder importable)."""
    import torch

    m = _SPEC.match(spec)
    if not m:
        raise UsageError(f"'{spec}': expected MODULE:FACTORY, e.g. mypkg.models:build")
    mod_name, attr = m.groups()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:
        raise UsageError(f"'{spec}': cannot import {mod_name}: {type(exc).__name__}: {short_error(exc)}") from None
    factory = mod
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UsageError(f"'{spec}': {mod_name} has no attribute '{attr}'")
        factory = getattr(factory, part)
    if not callable(factory):
        raise UsageError(f"'{spec}': {attr} is not callable")
    try:
        module = factory() if not isinstance(factory, torch.nn.Module) else factory
    except TypeError as exc:
        raise UsageError(f"'{spec}': the factory must take no arguments: {short_error(exc)}") from None
    except Exception as exc:
        raise UsageError(f"'{spec}': the factory raised {type(exc).__name__}: {short_error(exc)}") from None
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"'{spec}': the factory returned {type(module).__name__}, not a torch.nn.Module")
    return module


def example_inputs(specs: list[InputSpec], seed: int = 0) -> list[Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in specs:
        dt = getattr(torch, s.dtype)
        if dt.is_floating_point:
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


def _summarise(caught: list[warnings.WarningMessage], text: str) -> list[tuple[str, int]]:
    """Warnings and exporter chatter, each distinct line once with its count."""
    lines = Counter(f"{w.category.__name__}: {str(w.message).strip().splitlines()[0] if str(w.message).strip() else ''}" for w in caught)
    for line in text.splitlines():
        line = re.sub(r"^[WE]\d{4} [\d:.]+ \d+ [^\]]+\] ", "", line.strip())
        if line.startswith(("Warning", "UserWarning", "TracerWarning")) or "warn" in line.lower()[:40]:
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


def export(module: Any, specs: list[InputSpec], output: Path, *, exporter: str = "dynamo", opset: int | None = None, output_names: list[str] | None = None, dynamic: list[str] | None = None, rtol: float = 1e-4, atol: float = 1e-5, force: bool = False) -> ExportResult:
    """Export ``module`` to ``output`` and compare torch's outputs with onnxruntime's on the same
    seeded inputs. Written atomically; only when the outputs agree (or ``force``)."""
    import torch

    if not output.parent.is_dir():
        raise UsageError(f"{output}: output folder '{output.parent}' does not exist")
    names = [s.name for s in specs]
    module = module.eval()
    inputs = example_inputs(specs)
    with torch.no_grad():
        expected = [t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy() for t in _flatten(module(*inputs))]
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
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), torch.no_grad():
            warnings.simplefilter("always")
            try:
                with _quiet_torch_logs():
                    torch.onnx.export(module, tuple(inputs), str(tmp_path), **kwargs)
            except Exception as exc:
                raise ModelError(f"torch.onnx.export ({exporter}) failed: {type(exc).__name__}: {_plain(short_error(exc))}") from None
        result.warnings = _summarise(list(caught), chatter.getvalue())
        result.notes += _fit_ir_version(tmp_path)
        result.outputs = _compare(tmp_path, specs, inputs, expected, rtol, atol)
        if result.ok or force:  # surgeon's save: the (model, data) pair replaced atomically, model last
            from surgeon.ir.model import load
            from surgeon.ir.save import save

            save(load(tmp_path), output)
    return result


def _fit_ir_version(path: Path) -> list[str]:
    """The exporter may stamp an IR version newer than the installed onnxruntime loads: lower the
    number (the exporters' output uses nothing of the newer IR) and say so."""
    import onnx

    from surgeon.doctor.runtime_checks import ort_limits

    limit = ort_limits()["max_ir_version"]
    model = onnx.load(str(path), load_external_data=False)
    if limit and model.ir_version > limit:
        old, model.ir_version = model.ir_version, limit
        onnx.save(model, str(path))
        return [f"IR version {old} lowered to {limit}, the newest this onnxruntime loads"]
    return []


def _compare(path: Path, specs: list[InputSpec], inputs: list[Any], expected: list[Any], rtol: float, atol: float) -> list[dict[str, Any]]:
    import numpy as np

    from surgeon.ir.model import load
    from surgeon.verify.runtime import Runtime, run_model

    model = load(path)
    feed = {s.name: t.numpy() for s, t in zip(specs, inputs) if s.name in {i.name for i in model.proto.graph.input}}
    actual = run_model(Runtime("cpu"), model, [feed])[0]
    rows = []
    for name, exp in zip([o.name for o in model.proto.graph.output], expected):
        got = actual[name].astype(np.float64) if actual[name].dtype != bool else actual[name]
        ref = np.asarray(exp, dtype=got.dtype)
        if got.shape != ref.shape:
            rows.append({"name": name, "shape": list(got.shape), "max_abs": None, "max_rel": None, "ok": False, "note": f"shape {list(got.shape)}, torch gives {list(ref.shape)}"})
            continue
        diff = np.abs(got - ref) if got.dtype != bool else (got != ref).astype(np.float64)
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(np.abs(ref), 1e-12)).max()) if diff.size and got.dtype != bool else max_abs
        ok = bool(np.allclose(got, ref, rtol=rtol, atol=atol, equal_nan=True)) if got.dtype != bool else max_abs == 0
        rows.append({"name": name, "shape": list(got.shape), "max_abs": max_abs, "max_rel": max_rel, "ok": ok, "note": ""})
    if len(expected) != len(model.proto.graph.output):
        rows.append({"name": "(outputs)", "shape": [], "max_abs": None, "max_rel": None, "ok": False, "note": f"torch returns {len(expected)} tensors, the model has {len(model.proto.graph.output)} outputs"})
    return rows
