"""Shape helpers shared by the interface passes: clear stale shapes and re-run ONNX shape inference,
shapes at concrete input sizes, constants behind a node input, input dims by symbol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from surgeon.graph import iter_graphs
from surgeon.shapes import Dim, Shape, infer  # noqa: F401  (re-exported for the passes)

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.model import ModelIR
    from surgeon.verify import OutputCheck, ProbeEnv

def _input_names(model: ModelIR) -> set[str]:
    out: set[str] = set()
    for g in iter_graphs(model.graph):
        out.update(t.name for t in g.inputs)
    return out


def refresh_shapes(model: ModelIR, pins: Mapping[str, Shape] | None = None, cuts: Mapping[str, Shape] | None = None) -> None:
    """Forget every intermediate and output shape, then re-run shape inference and write what it
    finds back (dims it cannot compute become fresh symbols). ``pins``: shapes to impose first
    (graph outputs the user declared); inference may only refine them. ``cuts``: node outputs
    whose shape (every dim an int or a symbol) inference takes as given."""
    import onnx_graphsurgeon as gs
    from onnx import helper

    pins = dict(pins or {})
    inputs = _input_names(model)
    variables: dict[str, gs.Variable] = {}
    for g in iter_graphs(model.graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Variable) and t.name and t.name not in inputs:
                variables[t.name] = t
                t.shape = pins.get(t.name)
    inferred = infer(model, keep_outputs=True, cuts=cuts)
    for name, t in variables.items():
        elem, shape = inferred.get(name, (None, None))
        if elem and t.dtype is None:
            t.dtype = helper.tensor_dtype_to_np_dtype(elem)
        pinned = pins.get(name)
        t.shape = list(shape) if shape is not None else (list(pinned) if pinned is not None else None)
    _name_unknown_dims(model, variables)


def _name_unknown_dims(model: ModelIR, variables: Mapping[str, gs.Variable]) -> None:
    """Give the ``unk__N`` symbols shape inference invents a name a user can read in Netron:
    ``<tensor>_<axis>`` of the first graph output that has it, else of the first tensor that does."""
    import re

    unknown = re.compile(r"unk__\d+")
    taken = {d for t in variables.values() for d in (t.shape or []) if isinstance(d, str)}
    names: dict[str, str] = {}
    ordered = [t for t in model.graph.outputs if t.name in variables] + list(variables.values())
    for t in ordered:
        for axis, d in enumerate(t.shape or []):
            if isinstance(d, str) and unknown.fullmatch(d) and d not in names:
                name = f"{t.name}_{axis}"
                while name in taken:
                    name += "_"
                names[d] = name
                taken.add(name)
    if names:
        for t in variables.values():
            if t.shape:
                t.shape = [names.get(d, d) if isinstance(d, str) else d for d in t.shape]


def constant_of(tensor: gs.Tensor) -> gs.Constant | None:
    """The constant behind a node input: an initializer, or the output of a Constant node."""
    import onnx_graphsurgeon as gs

    if isinstance(tensor, gs.Constant):
        return tensor
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return value
    return None


def constant_values(model: ModelIR, tensor: gs.Tensor) -> np.ndarray | None:
    """Values of a constant node input (initializer or Constant node with a tensor ``value``)."""
    import numpy as np

    const = constant_of(tensor)
    if const is None:
        node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        if node is not None and node.op == "Constant":
            for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64), ("value_ints", np.int64)):
                if key in node.attrs:
                    return np.asarray(node.attrs[key], dtype=dtype)
        return None
    return np.asarray(model.values(const))


def unique_name(model: ModelIR, base: str) -> str:
    from surgeon.graph import all_tensor_names

    taken = all_tensor_names(model.graph) | {n.name for g in iter_graphs(model.graph) for n in g.nodes}
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def input_symbols(graph: gs.Graph) -> dict[str, list[tuple[str, int]]]:
    """Every symbolic dim of the graph inputs: ``{symbol: [(input, axis), ...]}``."""
    out: dict[str, list[tuple[str, int]]] = {}
    for t in graph.inputs:
        for axis, d in enumerate(t.shape or []):
            if isinstance(d, str) and d:
                out.setdefault(d, []).append((t.name, axis))
    return out


def dims_text(shape: Shape) -> str:
    if shape is None:
        return "unknown rank"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def drop_orphan_constant(g: gs.Graph, tensor: gs.Tensor) -> None:
    """Remove the Constant node that fed a replaced input when nothing else reads it."""
    if not tensor.outputs and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant" and tensor not in g.outputs:
        node = tensor.inputs[0]
        g.nodes.remove(node)
        node.outputs.clear()


# -- probes of mark-dynamic -------------------------------------------------------------------

Axes = dict[str, dict[int, str]]


class _SymbolProbe:
    def __init__(self, symbol: str, ins: Axes, outs: Axes, traced: Mapping[str, int]) -> None:
        self.symbol, self.ins, self.outs, self.traced = symbol, ins, outs, dict(traced)

    def _dims(self, env: ProbeEnv, size: int) -> dict[str, int]:
        """Every symbol of the step at its traced size (or verify.dims), this one at ``size``."""
        dims = {s: env.config.dims.get(s, v) for s, v in self.traced.items()}
        dims[self.symbol] = size
        return dims

    def _base(self, env: ProbeEnv) -> int:
        from surgeon.errors import UsageError

        base: int | None = self.traced.get(self.symbol, env.config.dims.get(self.symbol))
        if base is None:
            raise UsageError(f"no size known for '{self.symbol}'; set verify.dims: {{{self.symbol}: N}}")
        return base


class BatchProbe(_SymbolProbe):
    """A batch of N distinct samples must give the outputs of N runs of the model before the step,
    one sample (of the traced batch size) each, stacked along each output's batch axis."""

    @property
    def name(self) -> str:
        return f"batch consistency ({self.symbol})"

    def run(self, env: ProbeEnv) -> list[OutputCheck]:
        import numpy as np

        from surgeon.verify import compare

        base, n = self._base(env), env.config.probe_batch
        feed = env.make_feed(self._dims(env, base * n))
        chunks = []
        for k in range(n):
            chunk = dict(feed)
            for name, axes in self.ins.items():
                for axis, sym in axes.items():
                    if sym == self.symbol and name in chunk:
                        chunk[name] = np.take(chunk[name], range(k * base, (k + 1) * base), axis=axis)
            chunks.append(chunk)
        actual = env.run_after([feed])[0]
        singles = env.run_before(chunks)
        checks = []
        for name, axes in self.outs.items():
            out_axis = next((a for a, s in axes.items() if s == self.symbol), None)
            if out_axis is None or name not in actual:
                continue
            expected = np.concatenate([o[name] for o in singles], axis=out_axis)
            checks.append(compare(f"probe {self.symbol}={base * n}: {name} vs {n} runs of {self.symbol}={base}", expected, actual[name], env.tol))
        return checks


class SizeProbe(_SymbolProbe):
    """At another size the model must run and each output axis named by an input symbol must
    have the size fed for it."""

    @property
    def name(self) -> str:
        return f"size ({self.symbol})"

    def run(self, env: ProbeEnv) -> list[OutputCheck]:
        from surgeon.verify import OutputCheck

        base = self._base(env)
        size = 2 * base if base > 1 else 3
        dims = self._dims(env, size)
        actual = env.run_after([env.make_feed(dims)])[0]
        checks = []
        for name, value in actual.items():
            bad = [f"axis {a} is {value.shape[a]}, '{s}' is {dims[s]}" for a, s in self.outs.get(name, {}).items() if s in dims and a < value.ndim and value.shape[a] != dims[s]]
            checks.append(OutputCheck(f"probe {self.symbol}={size}: {name}", not bad, "FAIL" if bad else "ok (ran)", shape=tuple(value.shape), note="; ".join(bad)))
        return checks
