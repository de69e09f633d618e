"""Models for the interface passes (promote-resize-scales, promote-initializer, mark-dynamic,
fix-dims): small ONNX graphs built with onnx.helper and tiny torch modules exported both ways.

``srcnn_example`` and ``classifier_example`` build the models of recipes/srcnn-dynamic-scale.yaml
(``srcnn.onnx``) and recipes/dynamic-batch.yaml (``classifier.onnx``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from surgeon.examples import classifier_example, export, srcnn_example, srcnn_torch  # noqa: F401  (shared with the recipes)

FLOAT = TensorProto.FLOAT


def _model(
    nodes: list, inputs: list, outputs: list, inits: list | None = None, opset: int = 17, value_info: list | None = None
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "main_graph", inputs, outputs, inits or [], value_info=value_info or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _vi(name: str, shape: list, elem: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}_node", value=numpy_helper.from_array(value, name))


# -- Resize / Upsample --------------------------------------------------------------------------


def resize_constant_nodes(
    opset: int = 11, scales: tuple[float, ...] = (1, 1, 3, 3), mode: str = "nearest"
) -> onnx.ModelProto:
    """x[1,2,4,4] -> Resize(roi, scales from Constant nodes, as TorchScript exports at opset 11) -> Relu."""
    nodes = [
        _const("roi", np.array([], dtype=np.float32)),
        _const("scales_c", np.array(scales, dtype=np.float32)),
        helper.make_node("Resize", ["x", "roi", "scales_c"], ["up"], name="/up/Resize", mode=mode),
        helper.make_node("Relu", ["up"], ["y"], name="/relu/Relu"),
    ]
    out = [4 * int(s) if i >= 2 else [1, 2][i] for i, s in enumerate(scales)]
    return _model(nodes, [_vi("x", [1, 2, 4, 4])], [_vi("y", out)], opset=opset, value_info=[_vi("up", out)])


def resize_two_nodes(second: float = 3.0) -> onnx.ModelProto:
    """Two Resize nodes reading initializers (dynamo style: roi an empty name)."""
    s1 = numpy_helper.from_array(np.array([1, 1, 3, 3], np.float32), "s1")
    s2 = numpy_helper.from_array(np.array([1, 1, second, second], np.float32), "s2")
    nodes = [
        helper.make_node("Resize", ["x", "", "s1"], ["a"], name="resize_a", mode="nearest"),
        helper.make_node("Resize", ["x", "", "s2"], ["b"], name="resize_b", mode="linear"),
    ]
    side = int(4 * second)
    return _model(nodes, [_vi("x", [1, 2, 4, 4])], [_vi("a", [1, 2, 12, 12]), _vi("b", [1, 2, side, side])], [s1, s2])


def resize_sizes() -> onnx.ModelProto:
    sizes = numpy_helper.from_array(np.array([1, 2, 6, 10], np.int64), "sizes_c")
    node = helper.make_node("Resize", ["x", "", "", "sizes_c"], ["y"], name="resize", mode="linear")
    return _model([node], [_vi("x", [1, 2, 4, 4])], [_vi("y", [1, 2, 6, 10])], [sizes])


def upsample(opset: int) -> onnx.ModelProto:
    """Legacy Upsample: scales an attribute (opset 7-8) or an input (opset 9)."""
    if opset < 9:
        nodes = [helper.make_node("Upsample", ["x"], ["y"], name="up", mode="nearest", scales=[1.0, 1.0, 2.0, 2.0])]
        inits = []
    else:
        nodes = [helper.make_node("Upsample", ["x", "sc"], ["y"], name="up", mode="nearest")]
        inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")]
    return _model(nodes, [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 2, 6, 6])], inits, opset=opset)


def no_resize() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", [1, 2])], [_vi("y", [1, 2])])


# -- initializers and Constant nodes ------------------------------------------------------------


def add_reshape() -> onnx.ModelProto:
    """y = Reshape(x + bias, shape) with ``bias`` an initializer and ``shape`` a Constant node."""
    bias = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "bias")
    nodes = [
        helper.make_node("Add", ["x", "bias"], ["sum"], name="add"),
        _const("shape", np.array([3, 2], np.int64)),
        helper.make_node("Reshape", ["sum", "shape"], ["y"], name="reshape"),
    ]
    return _model(nodes, [_vi("x", [2, 3])], [_vi("y", [3, 2])], [bias], value_info=[_vi("sum", [2, 3])])


# -- dynamic / static dims ----------------------------------------------------------------------


def slice_expand(batch: int = 2) -> onnx.ModelProto:
    """x[B,4] -> Slice ends [B] on axis 0 (traced full extent) -> Expand to [B, 4] -> Add."""
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([batch], np.int64), "ends"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([batch, 4], np.int64), "expand_shape"),
    ]
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"], name="slice"),
        helper.make_node("Expand", ["s", "expand_shape"], ["e"], name="expand"),
        helper.make_node("Add", ["e", "x"], ["y"], name="add"),
    ]
    return _model(nodes, [_vi("x", [batch, 4])], [_vi("y", [batch, 4])], inits)


def concat_constant() -> onnx.ModelProto:
    """Concat of the input with a constant [1, 4] along axis 1: cannot run at another batch."""
    c = numpy_helper.from_array(np.ones((1, 4), np.float32), "c")
    node = helper.make_node("Concat", ["x", "c"], ["y"], name="concat", axis=1)
    return _model([node], [_vi("x", [1, 4])], [_vi("y", [1, 8])], [c])


def cls_token(batch: int = 2, opset: int = 17) -> onnx.ModelProto:
    """ViT style: Expand(cls [1,1,4], constant [B,1,4]) -> Concat with x[B,3,4] along axis 1."""
    inits = [
        numpy_helper.from_array(np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 1, 4), "cls"),
        numpy_helper.from_array(np.array([batch, 1, 4], np.int64), "cls_shape"),
    ]
    nodes = [
        helper.make_node("Expand", ["cls", "cls_shape"], ["cls_b"], name="expand"),
        helper.make_node("Concat", ["cls_b", "x"], ["y"], name="concat", axis=1),
    ]
    return _model(nodes, [_vi("x", [batch, 3, 4])], [_vi("y", [batch, 4, 4])], inits, opset=opset)


def filled_add(batch: int = 2) -> onnx.ModelProto:
    """``torch.full((x.shape[0], 4), 0.5) + x`` traced: ConstantOfShape(constant [B, 4]) -> Add."""
    nodes = [
        _const("fill_shape", np.array([batch, 4], np.int64)),
        helper.make_node(
            "ConstantOfShape",
            ["fill_shape"],
            ["fill"],
            name="fill",
            value=numpy_helper.from_array(np.array([0.5], np.float32)),
        ),
        helper.make_node("Add", ["fill", "x"], ["y"], name="add"),
    ]
    return _model(nodes, [_vi("x", [batch, 4])], [_vi("y", [batch, 4])])


def tile_mul(batch: int = 2, rows: int = 1) -> onnx.ModelProto:
    """``p.repeat(B // rows, 1) * x`` traced: Tile(p [rows, 4], constant [B/rows, 1]) -> Mul."""
    inits = [
        numpy_helper.from_array(np.arange(4 * rows, dtype=np.float32).reshape(rows, 4) + 1, "p"),
        numpy_helper.from_array(np.array([batch // rows, 1], np.int64), "repeats"),
    ]
    nodes = [
        helper.make_node("Tile", ["p", "repeats"], ["t"], name="tile"),
        helper.make_node("Mul", ["t", "x"], ["y"], name="mul"),
    ]
    return _model(nodes, [_vi("x", [batch, 4])], [_vi("y", [batch, 4])], inits)


def constant_of_shape_output(batch: int = 2) -> onnx.ModelProto:
    """Outputs y = 2x and mask = ConstantOfShape(constant [B, 3]) (an output that reads no input)."""
    inits = [
        numpy_helper.from_array(np.array([batch, 3], np.int64), "mask_shape"),
        numpy_helper.from_array(np.array(2, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y"], name="mul"),
        helper.make_node(
            "ConstantOfShape",
            ["mask_shape"],
            ["mask"],
            name="mask",
            value=numpy_helper.from_array(np.array([1], np.int64)),
        ),
    ]
    return _model(
        nodes, [_vi("x", [batch, 4])], [_vi("y", [batch, 4]), _vi("mask", [batch, 3], TensorProto.INT64)], inits
    )


def expand_constant_rows(batch: int = 2) -> onnx.ModelProto:
    """Expand(constant [B, 4] of equal rows, [B, 4]) -> Concat with x[B, 3]: the size is the input's."""
    inits = [
        numpy_helper.from_array(np.tile(np.arange(4, dtype=np.float32), (batch, 1)), "rows"),
        numpy_helper.from_array(np.array([batch, 4], np.int64), "rows_shape"),
    ]
    nodes = [
        helper.make_node("Expand", ["rows", "rows_shape"], ["e"], name="expand"),
        helper.make_node("Concat", ["e", "x"], ["y"], name="concat", axis=1),
    ]
    return _model(nodes, [_vi("x", [batch, 3])], [_vi("y", [batch, 7])], inits)


def merge_axes(opset: int = 17) -> onnx.ModelProto:
    """Reshape x[B, S, 2, T] to constant [B, 2S, T]: two output axes carry dynamic sizes."""
    shape = numpy_helper.from_array(np.array([2, 6, 5], np.int64), "merge_shape")
    node = helper.make_node("Reshape", ["x", "merge_shape"], ["y"], name="merge")
    return _model([node], [_vi("x", [2, 3, 2, 5])], [_vi("y", [2, 6, 5])], [shape], opset=opset)


def concat_data(batch: int = 2) -> onnx.ModelProto:
    """Concat of x[B,4] with a constant [B,4] whose rows differ: per-row data, not a broadcast."""
    c = numpy_helper.from_array(np.arange(4 * batch, dtype=np.float32).reshape(batch, 4), "c")
    node = helper.make_node("Concat", ["x", "c"], ["y"], name="concat", axis=1)
    return _model([node], [_vi("x", [batch, 4])], [_vi("y", [batch, 8])], [c])


def transposed_add(batch: int = 2) -> onnx.ModelProto:
    """Add(Transpose(constant [4, B]), x[B, 4]): the batch-sized constant comes from a Transpose."""
    c = numpy_helper.from_array(np.ones((4, batch), np.float32), "c")
    nodes = [
        helper.make_node("Transpose", ["c"], ["ct"], name="transpose", perm=[1, 0]),
        helper.make_node("Add", ["ct", "x"], ["y"], name="add"),
    ]
    return _model(nodes, [_vi("x", [batch, 4])], [_vi("y", [batch, 4])], [c])


def flat_add(batch: int = 2) -> onnx.ModelProto:
    """Reshape(x[B,3], [3B]) + constant [3B]: the constant's size is B*3, which no symbol alone is."""
    inits = [
        numpy_helper.from_array(np.array([3 * batch], np.int64), "flat_shape"),
        numpy_helper.from_array(np.arange(3 * batch, dtype=np.float32), "c"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Add", ["flat", "c"], ["y"], name="add"),
    ]
    return _model(nodes, [_vi("x", [batch, 3])], [_vi("y", [3 * batch])], inits)


def symbolic_mlp() -> onnx.ModelProto:
    """x[batch, 4] @ W -> Relu, with a stale value_info and symbolic output."""
    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
        helper.make_node("Relu", ["mm"], ["y"], name="relu"),
    ]
    return _model(nodes, [_vi("x", ["batch", 4])], [_vi("y", ["batch", 3])], [w], value_info=[_vi("mm", ["batch", 3])])


# -- checks -------------------------------------------------------------------------------------


def assert_shapes_hold(proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> None:
    """Every shape the model declares (value_info and outputs) holds when it runs on each feed:
    static dims have that size, and a symbol means one size across all tensors of a run."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    declared = {vi.name: vi for vi in list(probe.graph.value_info) + list(probe.graph.output)}
    have = {o.name for o in probe.graph.output}
    for vi in probe.graph.value_info:
        if vi.name not in have and vi.type.tensor_type.HasField("shape"):
            probe.graph.output.append(vi)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    for feed in feeds:
        symbols: dict[str, int] = {}
        for name, value in zip(names, sess.run(names, feed)):
            vi = declared[name]
            if not vi.type.tensor_type.HasField("shape"):
                continue
            dims = vi.type.tensor_type.shape.dim
            assert len(dims) == value.ndim, f"{name}: declared rank {len(dims)}, actual {value.shape}"
            for axis, d in enumerate(dims):
                if d.HasField("dim_value"):
                    assert d.dim_value == value.shape[axis], (
                        f"{name} axis {axis}: declared {d.dim_value}, actual {value.shape}"
                    )
                elif d.dim_param:
                    seen = symbols.setdefault(d.dim_param, value.shape[axis])
                    assert seen == value.shape[axis], (
                        f"{name} axis {axis}: '{d.dim_param}' is {value.shape[axis]} here, {seen} elsewhere"
                    )


# -- torch --------------------------------------------------------------------------------------


def torch_classifier(seed: int = 0) -> Any:
    """Conv -> adaptive pool -> ``view(1, -1)`` -> Linear: the traced batch baked into a Reshape."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8 * 2 * 2, 5)

        def forward(self, x: Any) -> Any:
            y = nn.functional.adaptive_avg_pool2d(torch.relu(self.c(x)), 2)
            return self.fc(y.view(1, -1))

    torch.manual_seed(seed)
    return Net().eval()


def torch_cls_token(seed: int = 0) -> Any:
    """ViT style: ``cls.expand(x.shape[0], -1, -1)`` concatenated with the tokens, then Linear."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls = nn.Parameter(torch.randn(1, 1, 4))
            self.fc = nn.Linear(4, 4)

        def forward(self, x: Any) -> Any:
            return self.fc(torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1))

    torch.manual_seed(seed)
    return Net().eval()


def torch_zeros_add() -> Any:
    """``torch.zeros(x.shape[0], 4) + 1 + x``: the traced batch in a constant shape."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def forward(self, x: Any) -> Any:
            return torch.zeros(x.shape[0], 4) + 1 + x

    return Net().eval()


def torch_repeat(seed: int = 0) -> Any:
    """``p.repeat(x.shape[0], 1) * x``: Tile of a parameter along the batch."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.randn(1, 4))

        def forward(self, x: Any) -> Any:
            return self.p.repeat(x.shape[0], 1) * x

    torch.manual_seed(seed)
    return Net().eval()
