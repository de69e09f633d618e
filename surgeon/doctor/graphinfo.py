"""What the checks share about a model's main graph: producers, consumers, constant values and
inferred shapes, computed once from the proto (weights stay on disk until a check reads one)."""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from surgeon.ir.external import is_external
from surgeon.ir.walk import element_count, iter_proto_graphs, light_copy, node_subgraphs, producers

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from surgeon.ir.model import Model

Dims = list[int | str | None]
SMALL = 1 << 16
"""Constants up to this many elements are read for index/shape checks (weights are not)."""


class GraphInfo:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.proto = model.proto
        g = model.proto.graph
        self.graph = g
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = producers(g)
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in g.node:
            for name in set(n.input) | captured(n):
                if name:
                    self.consumers[name].append(n)
        self.inputs = [vi for vi in g.input if vi.name not in self.inits]
        """The real inputs (initializer-backed ones left out)."""
        self.outputs = list(g.output)
        self.opset = next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), 0)

    def const(self, name: str, limit: int = SMALL) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node output) of at most
        ``limit`` elements, else None."""
        import numpy as np
        from onnx import numpy_helper

        from surgeon.ir.external import tensor_values

        t = self.inits.get(name)
        if t is None and name not in {vi.name for vi in self.graph.input}:
            node = self.producer.get(name)
            if node is None or node.op_type != "Constant":
                return None
            for a in node.attribute:
                if a.name == "value":
                    t = a.t
                elif a.name in ("value_ints", "value_int"):
                    return np.asarray(list(a.ints) if a.name == "value_ints" else a.i, np.int64)
                elif a.name in ("value_floats", "value_float"):
                    return np.asarray(list(a.floats) if a.name == "value_floats" else a.f, np.float32)
        if t is None or size_of(t) > limit:
            return None
        if is_external(t):
            return tensor_values(t, self.model.base_dir) if self.model.base_dir else None
        return np.asarray(numpy_helper.to_array(t))

    def is_const(self, name: str) -> bool:
        if name in self.inits:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant"

    @functools.cached_property
    def inferred(self) -> dict[str, tuple[int, Dims]]:
        """Element type and dims of every tensor, by onnx shape inference on a copy of the graph
        without its value_info (so stale entries do not feed back into the result)."""
        return self.inferred_at()

    def inferred_at(self, inputs: dict[str, Dims] | None = None) -> dict[str, tuple[int, Dims]]:
        """:attr:`inferred`, or with ``inputs`` given other dims: inference in strict mode (a node
        whose shapes do not fit at those sizes makes it empty)."""
        import onnx

        # declared output shapes are checked, not trusted
        copy = _skeleton(self.proto, value_info=False, output_shapes=False)
        for vi in copy.graph.input:
            for axis, d in enumerate((inputs or {}).get(vi.name, [])):
                dim = vi.type.tensor_type.shape.dim[axis]
                if isinstance(d, int):
                    dim.dim_value = d
                elif d:
                    dim.dim_param = d
        try:
            inferred = onnx.shape_inference.infer_shapes(copy, strict_mode=inputs is not None, data_prop=True)
        except Exception:  # inference failing is not a finding of its own here
            return {}
        return {
            vi.name: type_of(vi) for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
        }

    def dims(self, name: str) -> Dims | None:
        entry = self.inferred.get(name)
        return entry[1] if entry else None

    def reachable_from(self, name: str, stop: frozenset[str] = frozenset()) -> set[str]:
        """Tensors computed from ``name`` (forward), not going through nodes of types ``stop``."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            t = todo.pop()
            for n in self.consumers.get(t, []):
                if n.op_type in stop:
                    continue
                for o in n.output:
                    if o and o not in seen:
                        seen.add(o)
                        todo.append(o)
        return seen


def label(node: onnx.NodeProto) -> str:
    """A node as a user finds it: its name, or ``Op(first output)`` for an unnamed node."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else ''})"


def captured(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names a node's subgraphs read (If/Loop/Scan bodies)."""
    out: set[str] = set()
    for sub in node_subgraphs(node):
        for g in iter_proto_graphs(sub):
            for n in g.node:
                out.update(n.input)
    return out


size_of = element_count


def type_of(vi: onnx.ValueInfoProto) -> tuple[int, Dims]:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return tt.elem_type, []
    dims: Dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return tt.elem_type, dims


def has_shape(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")


def _skeleton(proto: onnx.ModelProto, value_info: bool = True, output_shapes: bool = True) -> onnx.ModelProto:
    """The doctor's copy for shape inference: initializers over ``SMALL`` elements without their bytes."""
    return light_copy(proto, SMALL, value_info=value_info, output_shapes=output_shapes)


def json_safe(values: Any) -> Any:
    """Short, JSON-friendly form of a small array (for messages and facts)."""
    items = values.reshape(-1).tolist()
    return items if len(items) <= 8 else [*items[:8], "..."]
