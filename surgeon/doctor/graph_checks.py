"""Checks inside the graph: frozen Resize factors (and whether the architecture ties them),
negative constant indices, constants traced from run-time values, fp16 and int64 hazards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surgeon.doctor.findings import Finding
from surgeon.doctor.graphinfo import GraphInfo, has_shape, json_safe, label, size_of, type_of

if TYPE_CHECKING:
    import numpy as np
    import onnx

JOINS = frozenset({"Concat", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean"})
"""Ops that need their inputs' spatial sizes to agree: an upsampled map meeting a skip branch."""
SPATIAL_ENDS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "Shape", "Size", "ReduceMean", "ReduceMax"})
"""Ops after which a map's spatial size is gone (or read as a value): a new factor does not reach on."""
FLATTENS = frozenset({"Flatten", "Reshape"})
PRODUCTS = frozenset({"Gemm", "MatMul"})
FP16_MAX = 65504.0
INT32 = (-(1 << 31), (1 << 31) - 1)


@dataclass
class ResizeSite:
    node: onnx.NodeProto
    kind: str  # scales | sizes
    value: np.ndarray | None
    tied_to: str = ""


def _resize_site(info: GraphInfo, node: onnx.NodeProto) -> ResizeSite | None:
    import numpy as np

    ins = list(node.input)
    if node.op_type == "Upsample" and info.opset < 9:
        scales = next((list(a.floats) for a in node.attribute if a.name == "scales"), None)
        return ResizeSite(node, "scales", np.asarray(scales, np.float32) if scales else None)
    if node.op_type == "Resize" and len(ins) >= 4 and ins[3]:
        slot, kind = 3, "sizes"
    elif node.op_type == "Resize" and len(ins) >= 3 and ins[2]:
        slot, kind = 2, "scales"
    elif len(ins) == 2 and ins[1]:
        slot, kind = 1, "scales"
    else:
        return None
    if not info.is_const(ins[slot]):
        return None
    return ResizeSite(node, kind, info.const(ins[slot]))


def _tied_to(info: GraphInfo, node: onnx.NodeProto) -> str:
    """What fixes the factor, if anything: a branch that does not descend from the upsampled map
    joined with it (a skip from another resolution: concatenated, added...), or the map flattened
    into a Gemm/MatMul whose constant weight has a fixed inner size. Two paths from the same
    upsampled map joined (a residual block) leave it free."""
    out = node.output[0]
    down = info.reachable_from(out, SPATIAL_ENDS) | {out}
    flat: set[str] = set()  # tensors of ``down`` computed through a Flatten/Reshape: spatial sizes folded into one axis
    for n in info.graph.node:  # graph order is topological
        if (n.op_type in FLATTENS and n.input and n.input[0] in down) or flat.intersection(n.input):
            flat.update(o for o in n.output if o in down)
    for n in info.graph.node:
        if n.op_type in JOINS and down.intersection(n.input):
            for other in n.input:
                if not other or other in down or info.is_const(other) or _descends(info, other, out):
                    continue
                dims = info.dims(other)
                if dims is not None and len(dims) < 3:  # a per-channel or scalar operand broadcasts
                    continue
                return f"{n.op_type} '{label(n)}' with '{other}'"
        if n.op_type in PRODUCTS and len(n.input) >= 2 and n.input[0] in flat and info.is_const(n.input[1]):
            t = info.inits.get(n.input[1])
            w = list(t.dims) if t is not None else list(getattr(info.const(n.input[1]), "shape", ()))
            trans = n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)
            inner = w[-1] if trans and w else (w[-2] if len(w) >= 2 else None)
            return (
                f"{n.op_type} '{label(n)}' through a Flatten/Reshape: its constant weight has the fixed inner "
                f"size {inner}"
            )
    return ""


def _descends(info: GraphInfo, tensor: str, root: str) -> bool:
    """Whether ``tensor`` is computed from ``root`` (a path through ops that end spatial sizes counts too)."""
    seen: set[str] = set()
    todo = [tensor]
    while todo:
        t = todo.pop()
        if t == root:
            return True
        if t in seen:
            continue
        seen.add(t)
        producer = info.producer.get(t)
        if producer is not None:
            todo.extend(i for i in producer.input if i)
    return False


def check_resize(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    sites = [s for n in info.graph.node if n.op_type in ("Resize", "Upsample") for s in [_resize_site(info, n)] if s]
    if not sites:
        return []
    for s in sites:
        s.tied_to = _tied_to(info, s.node)
    free = [s for s in sites if not s.tied_to]
    tied = [s for s in sites if s.tied_to]
    out = []
    for s in tied:
        out.append(
            Finding(
                "resize-factor-tied",
                "info",
                f"{s.node.op_type} '{label(s.node)}' has constant {s.kind} {_values(s)}, but the "
                f"factor is tied to the architecture: the upsampled map meets {s.tied_to}; leave it constant",
                nodes=[label(s.node)],
            )
        )
    if free:
        params = _promotion(free, all_free=not tied)
        labels = [label(s.node) for s in free]
        out.append(
            Finding(
                "resize-constant-scales",
                "warning",
                f"{len(free)} Resize/Upsample node(s) with a constant {free[0].kind}: "
                f"{', '.join(f'{label(s.node)} {_values(s)}' for s in free)}; "
                "the upscale factor cannot change at run time",
                nodes=labels,
                fix="promote-resize-scales" if params is not None else None,
                params=params,
                advice=""
                if params is not None
                else "unnamed nodes next to tied ones: name them, then promote-resize-scales {nodes: [...]}",
            )
        )
    return out


def _values(s: ResizeSite) -> str:
    return str(json_safe(s.value)) if s.value is not None else "(large)"


def _promotion(free: list[ResizeSite], all_free: bool) -> dict[str, Any] | None:
    """Params of promote-resize-scales for the free sites: one shared factor when they all scale
    every spatial axis alike, else one input per node."""
    import numpy as np

    params: dict[str, Any] = {}
    if not all_free:
        if any(not s.node.name for s in free):
            return None
        params["nodes"] = [s.node.name for s in free]
    kinds = {s.kind for s in free}
    values = [s.value for s in free]
    if kinds == {"scales"} and all(v is not None and v.size >= 3 for v in values):
        spatial = {tuple(np.asarray(v).reshape(-1)[2:].tolist()) for v in values if v is not None}
        if len(spatial) == 1 and len(set(next(iter(spatial)))) == 1:
            return params | {"form": "factor", "input": "factor"}
    if len(free) > 1 and len({tuple(np.asarray(v).reshape(-1).tolist()) for v in values if v is not None}) > 1:
        params["per_node"] = True
    return params


def _axis_sizes(info: GraphInfo, node: onnx.NodeProto) -> tuple[list[int], list[Any]]:
    """Negative entries of a Gather/Slice's constant indices and the sizes of their axes."""
    import numpy as np

    dims = info.dims(node.input[0]) or []
    rank = len(dims)
    slots = [1] if node.op_type in ("Gather", "GatherElements") else [1, 2]
    negatives: list[int] = []
    sizes: list[Any] = []
    for slot in slots:
        v = info.const(node.input[slot]) if len(node.input) > slot else None
        if v is None or v.dtype.kind not in "iu":
            continue
        flat = np.asarray(v).reshape(-1)
        if node.op_type == "Slice":
            axes_v = info.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            axes = [int(a) for a in axes_v.reshape(-1)] if axes_v is not None else list(range(flat.size))
        else:
            axes = [int(next((a.i for a in node.attribute if a.name == "axis"), 0))] * flat.size
        for value, axis in zip(flat.tolist(), axes):
            size = dims[axis % rank] if rank else None
            if value < 0 and not (node.op_type == "Slice" and isinstance(size, int) and value < -size):
                negatives.append(int(value))
                sizes.append(size)
    return negatives, sizes


def check_negative_indices(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    fixable: list[str] = []
    stuck: list[str] = []
    for node in info.graph.node:
        if node.op_type not in ("Gather", "GatherElements", "Slice") or (node.op_type == "Slice" and info.opset < 10):
            continue
        negatives, sizes = _axis_sizes(info, node)
        if negatives:
            (fixable if all(isinstance(s, int) and s > 0 for s in sizes) else stuck).append(
                f"{label(node)} {negatives[:4]}"
            )
    out = []
    if fixable:
        out.append(
            Finding(
                "negative-indices",
                "warning",
                f"constant negative indices (some runtimes and compilers reject them): {', '.join(fixable)}",
                nodes=[f.rsplit(" [", 1)[0] for f in fixable],
                fix="fix-negative-indices",
                params={},
            )
        )
    if stuck:
        out.append(
            Finding(
                "negative-indices-dynamic",
                "info",
                f"constant negative indices on axes of unknown size: {', '.join(stuck)}",
                nodes=[f.rsplit(" [", 1)[0] for f in stuck],
                advice="fix-negative-indices needs a static axis size; fix the dims first (fix-dims)",
            )
        )
    return out


def check_traced_constants(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    """A constant shape whose entry k equals input dim k (k >= 1, not NCHW channels) looks like a
    Shape-derived value the tracer froze (the batch has its own check)."""
    dims_of = {vi.name: type_of(vi)[1] for vi in info.inputs if has_shape(vi)}
    hits: list[str] = []
    for node in info.graph.node:
        slot = {"Reshape": 1, "Expand": 1, "Tile": 1, "ConstantOfShape": 0}.get(node.op_type)
        if slot is None or len(node.input) <= slot:
            continue
        v = info.const(node.input[slot])
        if v is None or v.ndim != 1:
            continue
        for name, dims in dims_of.items():
            for k in range(1, min(len(dims), v.size)):
                if len(dims) == 4 and k == 1:
                    continue
                dim = dims[k]
                if isinstance(dim, int) and dim > 1 and int(v[k]) == dim:
                    hits.append(f"{label(node)} shape {json_safe(v)} (entry {k} = {name} dim {k})")
                    break
    if not hits:
        return []
    return [
        Finding(
            "traced-constants",
            "info",
            "constant shapes that look traced from input sizes: "
            f"{'; '.join(hits[:4])}{' ...' if len(hits) > 4 else ''}",
            nodes=[h.split(" shape ")[0] for h in hits],
            advice="if that axis must vary, export it dynamic (dynamic_shapes / dynamic_axes) or mark-dynamic it",
        )
    ]


def check_numeric(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    import numpy as np
    from onnx import TensorProto

    over: list[str] = []
    wide: list[str] = []
    int64_bytes = 0
    for t in info.graph.initializer:
        if t.name not in info.consumers:  # unused: cleanup removes it
            continue
        if t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
            v = info.const(t.name, limit=1 << 28)
            if v is not None and v.size:
                finite = np.abs(v[np.isfinite(v)]) if v.size else v
                peak = float(finite.max()) if finite.size else 0.0
                if peak > FP16_MAX:
                    over.append(f"{t.name} (max |x| {peak:.3g})")
        elif t.data_type == TensorProto.INT64 and size_of(t) >= 1024:
            int64_bytes += 8 * size_of(t)
            wide.append(t.name)
    out = []
    if over:
        out.append(
            Finding(
                "fp16-range",
                "warning",
                f"float weights beyond fp16 range (±{FP16_MAX:g}) would become inf in fp16: {', '.join(over[:6])}",
                tensors=[o.split(" (")[0] for o in over],
                advice="keep them float32 when converting (to-fp16 with those nodes blocked) or rescale",
            )
        )
    if wide:
        out.append(
            Finding(
                "int64-weights",
                "info",
                f"{len(wide)} int64 weight tensor(s), {int64_bytes:,} bytes: {', '.join(wide[:6])}; "
                "runtimes without int64 kernels (TensorRT) cast them to int32",
                tensors=wide,
            )
        )
    return out


CHECKS: tuple[Callable[[GraphInfo, dict[str, Any]], list[Finding]], ...] = (
    check_resize,
    check_negative_indices,
    check_traced_constants,
    check_numeric,
)
