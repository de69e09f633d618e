"""``surgeon doctor --emit-recipe``: a recipe that fixes every fixable finding, each step under a
YAML comment naming the findings it fixes, and the unfixable ones listed at the top."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from surgeon.doctor.findings import Diagnosis, Finding
from surgeon.errors import inert

ORDER = ("convert-opset", "cleanup", "rename-io", "fix-negative-indices", "mark-dynamic", "promote-resize-scales")
"""Step order: opset first (later passes read the schemas), names before the passes that name
tensors, indices fixed while the axis sizes are still static, the batch before the factor."""


def recipe_data(
    diag: Diagnosis, model: str | None = None, output: str | None = None
) -> tuple[dict[str, Any], dict[int, list[Finding]]]:
    """The recipe mapping and, per step index, the findings that step fixes."""
    steps: dict[str, tuple[dict[str, Any], list[Finding]]] = {}
    header: dict[str, Any] = {}
    for f in diag.findings:
        if f.recipe:
            header.update(f.recipe)
        if f.fix is None:
            continue
        params, found = steps.setdefault(f.fix, ({}, []))
        _merge(params, f.params or {})  # findings fixed by one pass share its step
        found.append(f)
    renames = steps.get("rename-io", ({}, []))[0].get("inputs", {})
    if "mark-dynamic" in steps and renames:
        md = steps["mark-dynamic"][0]
        if "inputs" in md:
            md["inputs"] = {renames.get(k, k): v for k, v in md["inputs"].items()}
    data: dict[str, Any] = {"version": 1}
    if model:
        data["model"] = model
    if output:
        data["output"] = output
    dims = dict(diag.facts.get("symbols", {}))
    if "mark-dynamic" in steps and "static_batch" in diag.facts:
        dims.setdefault("batch", diag.facts["static_batch"])  # later passes' probes feed the new symbol
    if "mark-dynamic" in steps and any(f.code == "static-spatial" for f in steps["mark-dynamic"][1]):
        for sym, size in diag.facts.get("static_spatial", {}).items():
            dims.setdefault(sym, size)
    data["verify"] = {"dims": dims} if dims else {}
    data.update(header)
    data["passes"] = []
    fixes: dict[int, list[Finding]] = {}
    for name in sorted(steps, key=ORDER.index):
        params, found = steps[name]
        fixes[len(data["passes"])] = found
        data["passes"].append({name: params})
    if not data["verify"]:
        del data["verify"]
    return data, fixes


def _merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    """``more`` into ``into``, mappings merged key by key (two findings' axes of one input)."""
    for k, v in more.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def recipe_text(diag: Diagnosis, recipe_path: Path, model_path: Path | None) -> str:
    """The recipe as YAML, paths relative to ``recipe_path``'s folder."""
    from surgeon.yaml12 import dump_flow

    base = recipe_path.resolve().parent
    model = output = None
    if model_path is not None:
        model = os.path.relpath(model_path.resolve(), base)
        output = os.path.relpath(model_path.resolve().with_name(model_path.stem + "-fixed.onnx"), base)
    data, fixes = recipe_data(diag, model, output)
    lines = [
        f"# written by 'surgeon doctor' for {diag.model}",
        "# check it with 'surgeon validate', apply it with 'surgeon apply' (every pass verified)",
    ]
    if diag.facts.get("tried"):
        lines.append(f"# tried on the model: {diag.facts['tried']}")
    if diag.facts.get("sizes"):
        lines.append(f"# sizes it runs at: {', '.join(diag.facts['sizes'])}")
    rest = [f for f in diag.findings if not f.fixable]
    if rest:
        lines.append("# not fixed by this recipe:")
        lines += [f"#   {f.code}: {f.message}" + (f" ({f.advice})" if f.advice else "") for f in rest]
    passes = data.pop("passes")
    lines = [_one_line(x) for x in lines]
    for key, value in data.items():
        lines.append(f"{key}: {dump_flow(value)}")
    lines.append("passes:" if passes else "passes: []")
    for i, step in enumerate(passes):
        for f in fixes[i]:
            lines.append(_one_line(f"  # fixes {f.code}: {f.message}"))
        ((name, params),) = step.items()
        lines.append(f"  - {dump_flow(name)}: {dump_flow(params)}")
    return "\n".join(lines) + "\n"


def _one_line(line: str) -> str:
    """A comment line holding model text, inert: no character that breaks the line or that the
    YAML reader refuses (``\\x1b``, ``\\0``: written as escapes)."""
    return inert(line)
