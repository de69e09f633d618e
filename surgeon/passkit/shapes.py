"""Shape helpers shared by the interface passes: clear stale shapes and re-run ONNX shape inference,
shapes at concrete input sizes, constants behind a node input (also small constant subgraphs),
input dims by symbol, Reshape arithmetic, and Shape-derived size subgraphs (ShapeBuilder)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from surgeon.ir.walk import gs_subgraphs, iter_graphs, unused_name
from surgeon.passkit.infer import Dim, Shape, dims_text, infer  # noqa: F401  (re-exported for the passes)
from surgeon.passkit.ops import unique_name

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR


def _input_names(model: ModelIR) -> set[str]:
    out: set[str] = set()
    for g in iter_graphs(model.graph):
        out.update(t.name for t in g.inputs)
    return out


def refresh_shapes(
    model: ModelIR, pins: Mapping[str, Shape] | None = None, cuts: Mapping[str, Shape] | None = None
) -> None:
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
                name = unused_name(f"{t.name}_{axis}", taken, suffix=lambda base, i: base + "_" * i)
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
            for key, dtype in (
                ("value_float", np.float32),
                ("value_floats", np.float32),
                ("value_int", np.int64),
                ("value_ints", np.int64),
            ):
                if key in node.attrs:
                    return np.asarray(node.attrs[key], dtype=dtype)
        return None
    return np.asarray(model.values(const))


def fold_values(model: ModelIR, tensor: gs.Tensor, max_nodes: int = 32, max_elements: int = 1024) -> np.ndarray | None:
    """Values of a small constant subgraph behind ``tensor`` (the shape arithmetic TorchScript
    writes: ConstantOfShape, Mul, Equal, Where of constants), run with onnx.reference; None when it
    reads a graph input, holds a subgraph or is too big to be shape arithmetic."""
    import numpy as np
    import onnx_graphsurgeon as gs
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    value = constant_values(model, tensor)
    if value is not None:
        return value
    nodes: dict[int, gs.Node] = {}
    consts: dict[str, gs.Constant] = {}
    stack = [tensor]
    while stack:
        t = stack.pop()
        if isinstance(t, gs.Constant):
            if int(np.prod(t.shape)) > max_elements:
                return None
            consts[t.name] = t
            continue
        if len(t.inputs) != 1:
            return None  # a graph input (or a dangling tensor)
        node = t.inputs[0]
        if id(node) in nodes:
            continue
        if gs_subgraphs(node) or (node.domain or "") not in ("", "ai.onnx"):
            return None
        nodes[id(node)] = node
        if len(nodes) > max_nodes:
            return None
        stack.extend(i for i in node.inputs if i.name)
    order = {id(n): i for i, n in enumerate(model.graph.nodes)}
    protos = [OnnxExporter.export_node(n) for n in sorted(nodes.values(), key=lambda n: order.get(id(n), -1))]
    inits = [numpy_helper.from_array(np.asarray(model.values(c)), c.name) for c in consts.values()]
    graph = helper.make_graph(protos, "fold", [], [helper.make_tensor_value_info(tensor.name, 0, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", model.opset)], ir_version=10)
    try:
        out = np.asarray(ReferenceEvaluator(proto).run(None, {})[0])  # type: ignore[index]
    except Exception:  # an op the reference runtime lacks: not foldable here
        return None
    return out if out.size <= max_elements else None


def drop_dead(g: gs.Graph, tensor: gs.Tensor) -> None:
    """Remove the nodes that only computed ``tensor``, now that nothing reads it."""
    if tensor.outputs or tensor in g.outputs or len(tensor.inputs) != 1:
        return
    node = tensor.inputs[0]
    if any(o.outputs or o in g.outputs for o in node.outputs):
        return
    inputs = list(node.inputs)
    g.nodes.remove(node)
    node.inputs.clear()
    node.outputs.clear()
    for t in inputs:
        drop_dead(g, t)


def input_symbols(graph: gs.Graph) -> dict[str, list[tuple[str, int]]]:
    """Every symbolic dim of the graph inputs: ``{symbol: [(input, axis), ...]}``."""
    out: dict[str, list[tuple[str, int]]] = {}
    for t in graph.inputs:
        for axis, d in enumerate(t.shape or []):
            if isinstance(d, str) and d:
                out.setdefault(d, []).append((t.name, axis))
    return out


def drop_orphan_constant(g: gs.Graph, tensor: gs.Tensor) -> None:
    """Remove the Constant node that fed a replaced input when nothing else reads it."""
    if not tensor.outputs and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant" and tensor not in g.outputs:
        node = tensor.inputs[0]
        g.nodes.remove(node)
        node.outputs.clear()


# -- shape arithmetic ---------------------------------------------------------------------------


def prod(xs: list[int] | tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def resolve_reshape(s: list[int], dims: tuple[int, ...]) -> list[int] | None:
    out = [dims[i] if v == 0 and i < len(dims) else v for i, v in enumerate(s)]
    if -1 in out:
        known = prod([v for v in out if v != -1])
        if known <= 0 or prod(dims) % known:
            return None
        out[out.index(-1)] = prod(dims) // known
    return out if prod(out) == prod(dims) else None


def aligned_groups(a: tuple[int, ...], b: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Split two shapes of equal size into aligned groups of axes with equal products."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj, pa, pb = [], [], 1, 1
        if i < len(a):
            pa, i = a[i], i + 1
            gi.append(i - 1)
        if j < len(b):
            pb, j = b[j], j + 1
            gj.append(j - 1)
        while pa != pb:
            if pa < pb and i < len(a):
                pa, i = pa * a[i], i + 1
                gi.append(i - 1)
            elif pb < pa and j < len(b):
                pb, j = pb * b[j], j + 1
                gj.append(j - 1)
            else:
                return None
        groups.append((gi, gj))
    return groups


class ShapeBuilder:
    """Builds int64 shape subgraphs into a graph: sizes read with ``Shape`` from graph inputs
    (``start``/``end`` from opset 15, else Shape + Gather; one per input axis), 1-D vectors of ints
    and such pieces (a Concat), nodes inserted before the node that will read them."""

    def __init__(self, model: ModelIR) -> None:
        self.model = model
        self.dims: dict[tuple[str, int], gs.Tensor] = {}
        self.shapes: dict[tuple[str, int], gs.Tensor] = {}
        self.issued: set[str] = set()

    def name(self, base: str) -> str:
        """A fresh tensor/node name, also unlike the names handed out but not wired in yet."""
        g = self.model.graph
        name = unused_name(unique_name(g, base), self.issued, suffix=lambda _, i: unique_name(g, f"{base}_{i}"))
        self.issued.add(name)
        return name

    def dim(self, input_name: str, axis: int) -> gs.Tensor:
        """int64[1]: the size of the graph input's ``axis`` (one subgraph per input axis)."""
        import numpy as np
        import onnx_graphsurgeon as gs

        if (input_name, axis) in self.dims:
            return self.dims[(input_name, axis)]
        g = self.model.graph
        src = next(t for t in g.inputs if t.name == input_name)
        out = gs.Variable(self.name(f"{input_name}_dim{axis}"), dtype=np.int64, shape=[1])
        if self.model.opset >= 15:
            nodes = [gs.Node("Shape", out.name, {"start": axis, "end": axis + 1}, inputs=[src], outputs=[out])]
        else:
            full = gs.Variable(self.name(f"{input_name}_shape"), dtype=np.int64, shape=[len(src.shape)])
            index = gs.Constant(self.name(f"{out.name}_index"), np.array([axis], np.int64))
            nodes = [
                gs.Node("Shape", full.name, inputs=[src], outputs=[full]),
                gs.Node("Gather", out.name, {"axis": 0}, inputs=[full, index], outputs=[out]),
            ]
        g.nodes[0:0] = nodes  # reads a graph input only: valid first, whoever reads it later
        self.dims[(input_name, axis)] = out
        return out

    def span(self, tensor: gs.Tensor, start: int, end: int, before: gs.Node) -> gs.Tensor:
        """int64[1]: the product of ``tensor``'s sizes on axes ``start:end`` (inserted before ``before``)."""
        import numpy as np
        import onnx_graphsurgeon as gs

        dims = gs.Variable(self.name(f"{tensor.name}_dims{start}_{end}"), dtype=np.int64, shape=[end - start])
        if self.model.opset >= 15:
            self.insert(
                before, gs.Node("Shape", dims.name, {"start": start, "end": end}, inputs=[tensor], outputs=[dims])
            )
        else:
            key = (tensor.name, id(before))
            if key not in self.shapes:  # one Shape per tensor and reader
                self.shapes[key] = gs.Variable(self.name(f"{tensor.name}_shape"), dtype=np.int64)
                self.insert(
                    before, gs.Node("Shape", self.shapes[key].name, inputs=[tensor], outputs=[self.shapes[key]])
                )
            index = gs.Constant(self.name(f"{dims.name}_index"), np.arange(start, end, dtype=np.int64))
            self.insert(
                before, gs.Node("Gather", dims.name, {"axis": 0}, inputs=[self.shapes[key], index], outputs=[dims])
            )
        if end - start == 1:
            return dims
        out = gs.Variable(self.name(f"{dims.name}_prod"), dtype=np.int64, shape=[1])
        self.insert(before, gs.Node("ReduceProd", out.name, {"keepdims": 1}, inputs=[dims], outputs=[out]))
        return out

    def vector(self, items: list, before: gs.Node) -> gs.Tensor:
        """A 1-D int64 tensor from ints and int64[1] tensors (a Concat when there are tensors)."""
        import numpy as np
        import onnx_graphsurgeon as gs

        parts: list[gs.Tensor] = []
        run: list[int] = []
        for item in [*items, None]:
            if isinstance(item, int):
                run.append(item)
                continue
            if run:
                parts.append(gs.Constant(self.name(f"{before.name}_dims"), np.array(run, np.int64)))
                run = []
            if item is not None:
                parts.append(item)
        if len(parts) == 1:
            return parts[0]
        out = gs.Variable(self.name(f"{before.name}_shape"), dtype=np.int64, shape=[len(items)])
        self.insert(before, gs.Node("Concat", out.name, {"axis": 0}, inputs=parts, outputs=[out]))
        return out

    def insert(self, before: gs.Node, node: gs.Node) -> None:
        nodes = self.model.graph.nodes
        nodes.insert(nodes.index(before), node)


def changing_axes(
    tensors: Iterable[gs.Variable], at_a: Mapping[str, Any], at_b: Mapping[str, Any]
) -> dict[str, set[int]]:
    """Per tensor, the axes whose size differs between two inferences (:func:`infer` results at
    two sizes or factors); an axis unknown at either, or a tensor missing or of another rank
    there, counts as changing (every axis)."""
    out: dict[str, set[int]] = {}
    for t in tensors:
        a, b = at_a.get(t.name, (None, None))[1], at_b.get(t.name, (None, None))[1]
        if a is None or b is None or len(a) != len(b):
            out[t.name] = set(range(max(len(a or []), len(b or []), len(t.shape or []))))
        else:
            out[t.name] = {
                k
                for k, (da, db) in enumerate(zip(a, b))
                if not (isinstance(da, int) and isinstance(db, int) and da == db)
            }
    return out
