"""Every probe, in one place: the extra runs a step's contract asks for where the interface
changed (:class:`surgeon.verify.contract.Probe`). A probe sees only what
:class:`surgeon.verify.contract.ProbeEnv` offers; every check it makes is of kind ``probe``.

- an axis made dynamic (``mark-dynamic``, and ``surgeon verify a b`` where ``b`` has axes ``a`` has
  static, :func:`probe_dynamic_axes`): a batch axis is checked for batch consistency
  (:class:`BatchProbe`), another axis at a new size (:class:`SizeProbe`);
- a promoted upscale factor (``promote-resize-scales``): another factor, each output's size
  worked out without the edited graph (:class:`ScaleProbe`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from surgeon.errors import SurgeonError
from surgeon.ir.walk import LIGHT_ELEMENTS, producers
from surgeon.verify.compare import CheckKind, OutputCheck, Verdict, compare
from surgeon.verify.specs import Axes

if TYPE_CHECKING:
    import numpy as np

    from surgeon.ir.model import Model
    from surgeon.verify.contract import IOContract, Probe, ProbeEnv


def run_probes(probes: Sequence[Probe], env: ProbeEnv, accept: bool | Sequence[str] = False) -> list[OutputCheck]:
    """Each probe's checks, all of kind ``probe``; a probe that fails to run is one failed check
    naming it and why. A probe of an axis the recipe asked to make dynamic (``asked``) that proves
    nothing fails, unless ``accept`` (the step's ``verify.accept_unproved``: true, or the symbols
    accepted) accepts it."""
    out: list[OutputCheck] = []
    for probe in probes:
        try:
            checks = probe.run(env)
        except SurgeonError as exc:
            checks = [OutputCheck(f"probe {probe.name}", False, Verdict.FAIL, note=str(exc))]
        symbol = getattr(probe, "symbol", None)
        asked = getattr(probe, "asked", False) and not (
            accept is True or (symbol is not None and symbol in (accept or ()))
        )
        for check in checks:
            check.kind = CheckKind.PROBE
            if asked and check.verdict is Verdict.PROVED_NOTHING:
                check.ok, check.verdict = False, Verdict.FAIL
                check.note = (
                    f"{check.note}; the recipe asks to make '{symbol}' dynamic and this probe proves nothing "
                    f"about it: name an output axis, or accept it with the step's verify: {{accept_unproved: true}}"
                )
        out.extend(checks)
    return out


# --- an axis made dynamic ----------------------------------------------------------------------


class _SymbolProbe:
    def __init__(self, symbol: str, ins: Axes, outs: Axes, traced: Mapping[str, int], asked: bool = True) -> None:
        """``asked``: the recipe asked to make ``symbol`` dynamic (mark-dynamic), so a probe that
        proves nothing about it fails the step unless the step accepts it (``run_probes``)."""
        self.symbol, self.ins, self.outs, self.traced = symbol, ins, outs, dict(traced)
        self.asked = asked

    def _dims(self, env: ProbeEnv, size: int) -> dict[str, int]:
        """Every symbol of the step at its traced size (or verify.dims), this one at ``size``; the
        model's other symbols as the check chose them (``env.make_feed``)."""
        dims = {s: env.config.dims.get(s, v) for s, v in self.traced.items()}
        dims[self.symbol] = size
        return dims

    def _base(self, env: ProbeEnv) -> int:
        from surgeon.errors import UsageError

        base: int | None = self.traced.get(self.symbol, env.config.dims.get(self.symbol, env.sizes.get(self.symbol)))
        if base is None:
            raise UsageError(f"no size known for '{self.symbol}'; set verify.dims: {{{self.symbol}: N}}")
        return base

    def _outs(self, env: ProbeEnv) -> Axes:
        """Output axes named by this symbol: those the step was given, and those the model after
        it declares (names after the step)."""
        from surgeon.verify.interface import ports

        later = env.contracts[env.step + 1 :]
        back = {}
        for c in reversed(later):
            back.update({new: old for old, new in c.renamed_outputs.items()})
        outs: Axes = {k: dict(v) for k, v in self.outs.items()}
        for port in ports(env.candidate.proto, "output"):
            for axis, d in enumerate(port.dims or ()):
                if d == self.symbol:
                    outs.setdefault(back.get(port.name, port.name), {}).setdefault(axis, d)
        return outs


class BatchProbe(_SymbolProbe):
    """A batch of N distinct samples must give the outputs of N runs of the model before the step,
    one sample (of the traced batch size) each, stacked along each output's batch axis. Every
    output whose size changes with the batch is compared, not only those whose axis is named with
    the symbol: the model after the step runs at N samples and at one, and the axis whose size
    differs is the one the single runs are stacked along."""

    @property
    def name(self) -> str:
        return f"batch consistency ({self.symbol})"

    def run(self, env: ProbeEnv) -> list[OutputCheck]:
        import numpy as np

        base, n = self._base(env), env.config.probe_batch
        feed = env.make_feed(self._dims(env, base * n))
        chunks = []
        for k in range(n):
            chunk = dict(feed)
            for name, axes in self.ins.items():
                for in_axis, sym in axes.items():
                    if sym == self.symbol and name in chunk:
                        chunk[name] = np.take(chunk[name], range(k * base, (k + 1) * base), axis=in_axis)
            chunks.append(chunk)
        actual, single = env.run_after([feed, chunks[0]])
        singles = env.run_before(chunks)
        outs = self._outs(env)
        checks = []
        for name, value in actual.items():
            named = next((a for a, s in outs.get(name, {}).items() if s == self.symbol), None)
            one = single.get(name)
            label = f"probe {self.symbol}={base * n}: {name} vs {n} runs of {self.symbol}={base}"
            if one is not None and np.ndim(one) != np.ndim(value):
                note = f"rank {np.ndim(value)} at {self.symbol}={base * n}, {np.ndim(one)} at {self.symbol}={base}"
                checks.append(OutputCheck(label, False, Verdict.FAIL, shape=tuple(np.shape(value)), note=note))
                continue
            grown = [a for a in range(np.ndim(value)) if one is not None and np.shape(one)[a] != np.shape(value)[a]]
            axis: int | None = named if named is not None else (grown[0] if grown else None)
            if axis is None or any(name not in o for o in singles):
                continue
            parts = [o[name] for o in singles]
            try:
                if isinstance(value, list) and axis == 0 and all(isinstance(p, list) for p in parts):
                    expected = [e for p in parts for e in p]  # a sequence output (of maps): joined, not stacked
                else:
                    expected = np.concatenate(parts, axis=axis)
            except ValueError as exc:
                note = f"the single runs cannot be stacked along axis {axis}: {exc}"
                checks.append(OutputCheck(label, False, Verdict.FAIL, shape=tuple(np.shape(value)), note=note))
                continue
            check = compare(label, expected, value, env.tol, CheckKind.PROBE)
            if named is None:
                how = f"axis {axis} grows with '{self.symbol}'"
                check.note = f"{how}; {check.note}" if check.note else how
            checks.append(check)
        if checks:
            return checks
        why = (
            f"no output's size changes with '{self.symbol}' (the model after the step ran at "
            f"{self.symbol}={base * n} and {self.symbol}={base}): only that it runs at another batch"
        )
        return [OutputCheck(f"probe {self.name}", True, Verdict.PROVED_NOTHING, note=why, kind=CheckKind.PROBE)]


class SizeProbe(_SymbolProbe):
    """At another size the model must run and each output axis named by an input symbol must
    have the size fed for it. An output axis no symbol names but whose size changes with this one
    (the model after the step run at both sizes: a convolution's height) shows the model follows
    it; when no output changes at all, the probe proves nothing."""

    @property
    def name(self) -> str:
        return f"size ({self.symbol})"

    def run(self, env: ProbeEnv) -> list[OutputCheck]:
        base = self._base(env)
        size = 2 * base if base > 1 else 3
        dims = self._dims(env, size)
        actual, at_base = env.run_after([env.make_feed(dims), env.make_feed(self._dims(env, base))])
        outs = self._outs(env)
        checks = []
        follows = False
        for name, value in actual.items():
            named = outs.get(name, {})
            bad = [
                f"axis {a} is {value.shape[a]}, '{s}' is {dims[s]}"
                for a, s in named.items()
                if s in dims and a < value.ndim and value.shape[a] != dims[s]
            ]
            one = at_base.get(name)
            grown = [
                f"axis {a} follows '{self.symbol}' ({one.shape[a]} at {base}, {value.shape[a]} at {size})"
                for a in range(getattr(value, "ndim", 0))  # a sequence or map has no axes
                if one is not None
                and getattr(one, "ndim", -1) == value.ndim
                and one.shape[a] != value.shape[a]
                and a not in named
            ]
            follows |= bool(grown) or self.symbol in named.values()
            checks.append(
                OutputCheck(
                    f"probe {self.symbol}={size}: {name}",
                    not bad,
                    Verdict.FAIL if bad else Verdict.OK_RAN,
                    shape=tuple(getattr(value, "shape", ())),  # a sequence or map has none
                    note="; ".join(bad + grown),
                    kind=CheckKind.PROBE,
                )
            )
        if not follows:
            checks.append(_nothing(self.name, self.symbol))
        return checks


def _nothing(probe: str, symbol: str) -> OutputCheck:
    """A probe with nothing to compare says so (never a plain ok)."""
    note = (
        f"no output axis is '{symbol}' or changes size with it: only that the model runs at another size; "
        f"name an output axis (outputs: {{y: {{0: {symbol}}}}}) to compare"
    )
    return OutputCheck(f"probe {probe}", True, Verdict.PROVED_NOTHING, note=note, kind=CheckKind.PROBE)


def probe_dynamic_axes(ref: Model, cand: Model, contract: IOContract) -> None:
    """Axes ``cand`` made symbolic where ``ref`` is static (``surgeon verify a b``) are probed as
    mark-dynamic does (a batch symbol: N distinct samples against N single runs; others: a new
    size) and declared as changed in ``contract``; the reference's size is their traced size."""
    from surgeon.verify.interface import ports

    axes: list[dict[str, dict[int, str]]] = [{}, {}]
    traced: dict[str, int] = {}
    for k, kind in enumerate(("input", "output")):
        renamed = contract.renamed_inputs if kind == "input" else contract.renamed_outputs
        new = {p.name: p for p in ports(cand.proto, kind)}
        for old in ports(ref.proto, kind):
            p = new.get(renamed.get(old.name, old.name))
            if p is None or old.dims is None or p.dims is None or len(p.dims) != len(old.dims):
                continue
            for axis, (a, b) in enumerate(zip(old.dims, p.dims)):
                if isinstance(a, int) and isinstance(b, str):
                    axes[k].setdefault(p.name, {})[axis] = b
                    contract.changed_axes.setdefault(p.name, set()).add(axis)
                    if kind == "input":
                        traced.setdefault(b, a)
    ins, outs = axes
    contract.traced_dims.update(traced)
    for sym in sorted(traced):
        at_zero = all(a == 0 for m in (ins, outs) for axes_ in m.values() for a, s in axes_.items() if s == sym)
        probe = BatchProbe if "batch" in sym.lower() or at_zero else SizeProbe
        contract.probes.append(probe(sym, ins, outs, traced, asked=False))


# --- promote-resize-scales: another upscale factor ------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    """One promoted node: its vector (scales or sizes) as traced and as probed."""

    node: str
    kind: str
    lead: int
    traced: list[float]
    probed: list[float]
    in_dims: tuple[int, ...] = ()
    """The node's data input shape at the traced sizes (empty: not all static)."""
    extent: tuple[float, ...] = ()
    """Per axis ``roi_end - roi_start`` (``coordinate_transformation_mode: tf_crop_and_resize``
    with a constant roi; empty: the whole axis)."""
    policy: str = "stretch"
    """``keep_aspect_ratio_policy`` (Resize-18, sizes only)."""
    axes: tuple[int, ...] = ()
    """The ``axes`` attribute (Resize-18): the axes the vector's entries are for (empty: all)."""

    def output(self, in_dims: Sequence[int], vector: Sequence[float]) -> list[int]:
        """The node's output shape for an input of ``in_dims`` and ``vector`` (this node's scales
        or sizes), as the Resize op defines it: ``floor(in * scale)`` (times the roi's extent for
        tf_crop_and_resize), in float32 as onnxruntime computes it; ``sizes`` as given, or with a
        keep_aspect_ratio_policy the one scale (min or max of ``sizes / in``) applied to each
        axis and rounded half up."""
        import math

        import numpy as np

        axes = list(self.axes) or list(range(len(in_dims)))
        vec = dict(zip(axes, vector))
        out = list(in_dims)
        if self.kind != "sizes":
            for a, scale in vec.items():
                out[a] = _floor_scaled(in_dims[a], self.extent[a] if a < len(self.extent) else 1.0, scale)
            return out
        if self.policy == "stretch":
            return [int(vec.get(a, d)) for a, d in enumerate(in_dims)]
        ratios = [float(np.float32(vec[a]) / np.float32(in_dims[a])) for a in axes if in_dims[a]]
        scale = (min if self.policy == "not_larger" else max)(ratios) if ratios else 1.0
        for a in axes:
            out[a] = int(math.floor(float(np.float32(scale) * np.float32(in_dims[a])) + 0.5))
        return out


class ScaleProbe:
    """Runs the edited model at another factor. Each output axis the traced factor scaled must
    scale with the probed one: its size at the traced factor (the model before the step, same
    inputs) times probed/traced, worked out without the edited graph, so a crop that hard-codes
    the traced size (a Slice) fails. Output shapes must also match ONNX shape inference."""

    def __init__(
        self,
        values: dict[str, np.ndarray],
        vectors: dict[str, tuple[int, np.ndarray]],
        ratios: list[Ratio] | None = None,
    ) -> None:
        self.values = values
        self.vectors = vectors
        self.ratios = ratios or []
        self.name = ", ".join(f"{k}={v.tolist()}" for k, v in values.items())

    def run(self, env: ProbeEnv) -> list[OutputCheck]:
        feed = env.make_feed({})
        feed.update(self.values)
        actual = env.run_after([feed])[0]
        traced = env.run_before([feed])[0]
        inferred = _expected_shapes(env, feed, self.vectors)
        checks = []
        scaled_any = False
        later = env.contracts[env.step + 1 :]
        for name, value in actual.items():
            got = tuple(value.shape)
            graph_name = name
            for c in later:
                graph_name = c.renamed_outputs.get(graph_name, graph_name)
            upstream = _upstream(env.candidate.proto.graph, graph_name)
            ratios = [r for r in self.ratios if r.node in upstream]
            want = _scaled_shape(tuple(traced[name].shape), ratios) if name in traced else None
            scaled_any |= want is not None and want != tuple(traced[name].shape)
            problems = []
            if want is not None and want != got:
                crop = _crops(env, tuple(traced[name].shape))
                problems.append(
                    f"expected {want} (size at the traced factor {tuple(traced[name].shape)} times the factor){crop}"
                )
            if name in inferred and tuple(inferred[name]) != got:
                problems.append(f"shape inference says {tuple(inferred[name])}")
            note = f"shape {got}" + (": " + "; ".join(problems) if problems else "")
            checks.append(
                OutputCheck(
                    f"probe {self.name}: {name}",
                    not problems,
                    Verdict.FAIL if problems else Verdict.OK,
                    shape=got,
                    note=note,
                    kind=CheckKind.PROBE,
                )
            )
        if not scaled_any:
            checks.append(
                OutputCheck(
                    f"probe {self.name}",
                    True,
                    Verdict.PROVED_NOTHING,
                    note="no output's size follows the factor: only that the model runs at another factor",
                    kind=CheckKind.PROBE,
                )
            )
        return checks


def _upstream(g: Any, output: str) -> set[str]:
    """Names of the nodes ``output`` depends on."""
    producer = producers(g)
    seen: set[str] = set()
    todo, names = [output], set()
    while todo:
        t = todo.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        node = producer[t]
        names.add(node.name)
        todo.extend(node.input)
    return names


def _scaled_shape(shape: tuple[int, ...], ratios: list[Ratio]) -> tuple[int, ...] | None:
    """``shape`` (at the traced factor) at the probed one, for outputs of the Resize's rank. Where
    the nodes' input size is known (or, for one node's scales, follows from its output: ``in`` with
    ``floor(in * scale)`` the traced size, when only one does) and the nodes in series reproduce the
    traced size from it, the size is the nodes' own at the probed vector (``floor(31 * 2) = 62``
    where the traced 1.5 gave 46); otherwise the traced size times probed / traced (axes the nodes
    scale in series multiply). None when it cannot be told."""
    import math

    if not ratios or any(len(r.traced) != len(shape) for r in ratios):
        return None
    scaled = [a for a in range(len(shape)) if any(a >= r.lead and r.traced[a] != r.probed[a] for r in ratios)]
    exact = _by_resize_rule(shape, ratios, scaled)
    out = list(shape)
    for axis in scaled:
        if exact is not None:
            out[axis] = exact[axis]
            continue
        size = float(shape[axis])
        for r in ratios:
            if axis < r.lead or r.traced[axis] == r.probed[axis]:
                continue
            if r.kind == "sizes":
                size = r.probed[axis] if int(size) == int(r.traced[axis]) else size
            else:
                size = size * r.probed[axis] / r.traced[axis]
        out[axis] = int(math.floor(size + 1e-6))
    return tuple(out)


def _floor_scaled(size: int, extent: float, scale: float) -> int:
    """``floor(size * extent * scale)`` in float32, as onnxruntime sizes a Resize output."""
    import math

    import numpy as np

    return int(math.floor(float(np.float32(size) * np.float32(extent) * np.float32(scale))))


def _by_resize_rule(shape: tuple[int, ...], ratios: list[Ratio], scaled: list[int]) -> list[int] | None:
    """The output shape at the probed vectors by the Resize rule from the first node's input
    size, when the nodes in series give ``shape`` at the traced vectors (else None: something
    between them or after them changes the size too)."""
    first = ratios[0]
    start: list[int] | None = list(first.in_dims) if len(first.in_dims) == len(shape) else None
    if start is None and len(ratios) == 1 and first.kind == "scales" and not first.axes:
        start = list(shape)
        for a in scaled:  # the inputs whose floor(in * scale) is the traced size: one, or unknown
            ext, scale = (first.extent[a] if a < len(first.extent) else 1.0), first.traced[a]
            if scale * ext <= 0:
                return None
            low, high = max(0, int(shape[a] / (scale * ext)) - 2), int((shape[a] + 1) / (scale * ext)) + 3
            found = [i for i in range(low, high) if _floor_scaled(i, ext, scale) == shape[a]]
            if len(found) != 1:
                return None
            start[a] = found[0]
    if start is None:
        return None
    at_traced, at_probed = list(start), list(start)
    for r in ratios:
        at_traced, at_probed = r.output(at_traced, r.traced), r.output(at_probed, r.probed)
    if any(at_traced[a] != shape[a] for a in scaled):
        return None
    return at_probed


def _crops(env: ProbeEnv, traced: tuple[int, ...]) -> str:
    """Slice nodes of the edited graph whose constant ends hard-code a traced output size."""
    from onnx import numpy_helper

    g = env.candidate.proto.graph
    consts = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    consts[node.output[0]] = a.t
    spatial = set(traced[2:])
    found = []
    for node in g.node:
        if node.op_type == "Slice" and len(node.input) > 2 and node.input[2] in consts:
            ends = numpy_helper.to_array(consts[node.input[2]]).reshape(-1).tolist()
            if spatial & {int(e) for e in ends}:
                found.append(f"Slice '{node.name}' (ends {ends})")
    return f"; cropped to the traced size by {', '.join(found)}" if found else ""


def _expected_shapes(
    env: ProbeEnv, feed: dict[str, np.ndarray], vectors: dict[str, tuple[int, np.ndarray]]
) -> dict[str, tuple[int, ...]]:
    """Output shapes by ONNX shape inference at the feed's shapes, each probed node reading its
    probe scales (or sizes) from a constant."""
    import onnx
    from onnx import numpy_helper

    later = env.contracts[env.step + 1 :]
    mapped = dict(feed)
    for c in later:
        mapped = c.map_feed(mapped)
    from surgeon.ir.walk import light_copy

    # weights over a small size do not decide shapes: shape inference reads a copy without their bytes
    proto = light_copy(env.candidate.proto, LIGHT_ELEMENTS, value_info=False, output_shapes=False)
    g = proto.graph
    consts = {}
    for node in g.node:
        if node.name in vectors:
            slot, vector = vectors[node.name]
            name = f"{node.name}__probe_vector"
            consts[name] = vector
            if slot < len(node.input):
                node.input[slot] = name
    keep = list(g.input)
    for vi in keep:
        if vi.name in mapped:
            dims = vi.type.tensor_type.shape.dim
            for d, n in zip(dims, mapped[vi.name].shape):
                d.Clear()
                d.dim_value = n
    del g.input[:]
    g.input.extend(keep)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    out = {}
    for o in inferred.graph.output:
        dims = o.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            back = o.name
            for c in reversed(later):
                back = {v: k for k, v in c.renamed_outputs.items()}.get(back, back)
            out[back] = tuple(d.dim_value for d in dims)
    return out
