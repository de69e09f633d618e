"""Where two models diverge: tensors with the same name in both are exposed as extra outputs (a
batch at a time, so memory stays near two normal runs), both run on the same feed, and the first
tensor in topological order that differs beyond tolerance is named with its node, op type, error,
shape and the error of its inputs. The first node whose output holds NaN/Inf is named too."""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from surgeon.ir.walk import light_copy, producers
from surgeon.verify.compare import Tolerance, compare

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from surgeon.ir.model import Model
    from surgeon.verify.runtime import Runtime

BATCH = 32
"""Tensors exposed per run at most."""
MIN_BUDGET = 256 << 20
"""Bytes of exposed tensors per run at least (else the model's weight bytes: about one more run)."""


@dataclass
class Divergence:
    tensor: str = ""
    node: str = ""
    op: str = ""
    shape: list[int] = field(default_factory=list)
    max_abs: float = 0.0
    max_rel: float = 0.0
    note: str = ""
    inputs: dict[str, float] = field(default_factory=dict)
    """Max abs error of the node's inputs that both models have (0: they agree there)."""
    non_finite: str = ""
    """The first node of the second model whose output holds NaN/Inf ("" when none)."""
    compared: int = 0
    failed: str = ""
    """Why the localization could not finish (a model failed with its tensors exposed), naming it."""

    trace: list[dict[str, Any]] = field(default_factory=list)
    """Every tensor compared, in topological order of the second model: ``tensor``, ``node``,
    ``op``, ``max_abs``, ``max_rel``, ``ok`` (up to a batch past the first divergence: how the
    error grows from where it entered)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def line(self) -> str:
        parts = []
        if self.failed and not self.tensor:
            return f"could not localize: {self.failed}"
        if self.tensor:
            ins = ", ".join(f"'{k}' {v:.3g}" for k, v in self.inputs.items()) or "none compared"
            what = f"max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g}" + (f" ({self.note})" if self.note else "")
            parts.append(
                f"first divergence at node '{self.node}' ({self.op}) output '{self.tensor}' shape "
                f"{self.shape}: {what}; its inputs' error: {ins}"
            )
        else:
            parts.append(f"no tensor of both models differs beyond tolerance ({self.compared} compared)")
        if self.non_finite:
            parts.append(f"first NaN/Inf from {self.non_finite}")
        return "; ".join(parts)


def _producers(proto: onnx.ModelProto) -> list[tuple[str, onnx.NodeProto]]:
    return list(producers(proto.graph, skip={t.name for t in proto.graph.initializer}).items())


def _exposed(model: Model, names: list[str]) -> Model:
    import onnx

    from surgeon.ir.model import Model as _Model

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    have = {o.name for o in proto.graph.output}
    for name in names:
        if name not in have:
            proto.graph.output.add().name = name
    return _Model(
        proto,
        path=None,
        base_dir=model.base_dir,
        data_files=list(model.data_files),
        source_external=model.source_external,
    )


def _as_float(a: np.ndarray) -> np.ndarray:
    import numpy as np

    return a.astype(np.float64) if a.dtype.kind in "fiub" else a


def localize(
    runtime: Runtime,
    before: Model,
    feed_before: Mapping[str, np.ndarray],
    after: Model,
    feed_after: Mapping[str, np.ndarray],
    tol: Tolerance,
    batch: int = BATCH,
    names: tuple[str, str] = ("the first model", "the second model"),
) -> Divergence:
    """The first tensor (topological order of ``after``) that differs between the models; ``names``
    name ``before`` and ``after`` in messages (a run that fails with its tensors exposed is said
    in ``failed``, naming its model)."""
    import numpy as np

    from surgeon.errors import SurgeonError
    from surgeon.verify.runtime import run_model

    known = {t for t, _ in _producers(before.proto)}
    common = [(t, n) for t, n in _producers(after.proto) if t in known]
    out = Divergence()
    errors: dict[str, float] = {}
    past = 0  # tensors compared after the first divergence
    for chunk in _batches(common, _sizes(after.proto, feed_after), batch, max(MIN_BUDGET, _weight_bytes(after.proto))):
        exposed = [t for t, _ in chunk]
        try:
            ref = run_model(runtime, _exposed(before, exposed), [feed_before], f"{names[0]} with its tensors exposed")[
                0
            ]
            got = run_model(runtime, _exposed(after, exposed), [feed_after], f"{names[1]} with its tensors exposed")[0]
        except SurgeonError as exc:
            out.failed = str(exc)
            break
        for name, node in chunk:
            if (
                name not in ref
                or name not in got
                or not isinstance(ref[name], np.ndarray)
                or not isinstance(got[name], np.ndarray)
            ):
                continue  # sequences and maps are compared as the outputs they feed
            a, b = ref[name], got[name]
            if not out.non_finite and b.dtype.kind == "f" and not np.isfinite(b).all():
                out.non_finite = f"node '{node.name}' ({node.op_type}) output '{name}'" + (
                    "" if np.isfinite(a).all() else " (the first model has NaN/Inf there too)"
                )
            if a.dtype != b.dtype:
                a, b = _as_float(a), _as_float(b)
            check = compare(name, a, b, tol)
            out.compared += 1
            errors[name] = check.max_abs
            out.trace.append(
                {"tensor": name, "node": node.name, "op": node.op_type, "max_abs": check.max_abs}
                | {"max_rel": check.max_rel, "ok": check.ok}
            )
            past += bool(out.tensor)
            if not check.ok and not out.tensor:
                out.tensor, out.node, out.op = name, node.name, node.op_type
                out.shape, out.max_abs, out.max_rel, out.note = list(b.shape), check.max_abs, check.max_rel, check.note
                out.inputs = {i: errors[i] for i in node.input if i in errors}
        del ref, got
        if out.tensor and past >= batch:
            break
    return out


def paired_tensors(
    runtime: Runtime,
    before: Model,
    feeds_before: Sequence[Mapping[str, np.ndarray]],
    after: Model | None = None,
    feeds_after: Sequence[Mapping[str, np.ndarray]] = (),
    batch: int = BATCH,
    same_as: Mapping[str, str] | None = None,
    skip: Container[str] = (),
    measured: Mapping[str, Sequence[Any]] | None = None,
) -> Iterator[tuple[str, onnx.NodeProto, list[Any], list[Any]]]:
    """Every tensor of the top graph that both models produce (``after`` None: every tensor of
    ``before``), in topological order, with its values on each feed: ``(name, producing node of
    the second model, values in before, values in after (empty without after))``. Tensors are
    exposed a batch at a time (the byte budget shared by the feeds), as :func:`localize` does.
    ``same_as`` names tensors of ``after`` that hold a tensor of ``before`` under another name
    (yielded under the latter's); tensors in ``skip`` (of ``after``) are not exposed. ``measured``
    holds values of ``before``'s tensors on ``feeds_before`` from an earlier run: those are not run
    again (a batch they cover runs ``after`` only)."""
    from surgeon.verify.runtime import run_model

    second = after if after is not None else before
    known = {t for t, _ in _producers(before.proto)}
    alias = dict(same_as or {})
    common = [(t, n) for t, n in _producers(second.proto) if alias.get(t, t) in known and t not in skip]
    budget = max(MIN_BUDGET, _weight_bytes(second.proto)) // max(1, len(feeds_before))
    sizes = _sizes(second.proto, (feeds_after or feeds_before)[0]) if feeds_before else {}
    for chunk in _batches(common, sizes, batch, budget):
        names = [t for t, _ in chunk]
        had = measured or {}
        wanted = [alias.get(t, t) for t in names]
        missing = [t for t in wanted if t not in had]
        ref = run_model(runtime, _exposed(before, missing), feeds_before) if missing else [{} for _ in feeds_before]
        for k, r in enumerate(ref):
            r.update((t, had[t][k]) for t in wanted if t in had)
        got = run_model(runtime, _exposed(after, names), feeds_after) if after is not None else []
        for name, node in chunk:
            mine = alias.get(name, name)
            yield mine, node, [r.get(mine) for r in ref], [g.get(name) for g in got]
        del ref, got


def _batches(
    items: list[tuple[str, Any]], sizes: Mapping[str, int], most: int, budget: int
) -> list[list[tuple[str, Any]]]:
    """Consecutive runs of tensors, each at most ``most`` long and ``budget`` bytes (estimated)."""
    out: list[list[tuple[str, Any]]] = [[]]
    used = 0
    for item in items:
        need = sizes.get(item[0], 0)
        if out[-1] and (len(out[-1]) >= most or used + need > budget):
            out.append([])
            used = 0
        out[-1].append(item)
        used += need
    return [b for b in out if b]


def _sizes(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Bytes of each tensor by shape inference at the feed's shapes (unknown: the largest input)."""
    import numpy as np
    import onnx
    from onnx import helper

    # everything but the weights' data: only their types and shapes matter (as inputs)
    work = light_copy(proto, -1, big_as_inputs=True, value_info=False)
    for vi in work.graph.input:
        if vi.name in feed and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.shape.Clear()
            for n in np.shape(feed[vi.name]):
                vi.type.tensor_type.shape.dim.add().dim_value = int(n)
    fallback = max((int(np.asarray(v).nbytes) for v in feed.values()), default=0)
    try:
        inferred = onnx.shape_inference.infer_shapes(work, data_prop=True)
    except Exception:  # estimation only
        return {}
    out: dict[str, int] = {}
    for vi in inferred.graph.value_info:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if tt.elem_type and -1 not in dims:
            out[vi.name] = int(np.prod(dims, dtype=np.float64)) * helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize
        else:
            out[vi.name] = fallback
    return out


def _weight_bytes(proto: onnx.ModelProto) -> int:
    import numpy as np
    from onnx import helper

    total = 0
    for t in proto.graph.initializer:
        try:
            total += (
                int(np.prod(list(t.dims), dtype=np.float64)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            )
        except (KeyError, ValueError, TypeError):
            continue
    return total
