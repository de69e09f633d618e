"""Example models the recipes in ``recipes/`` run on, built here so nothing is downloaded.

``python -m surgeon.examples recipes/`` writes them all. Builders that need torch say so and are
skipped with a message when torch is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """A small classifier as the TorchScript exporter names it: input ``input.1``, output
    ``/fc/Gemm_output_0``, a fixed batch of 1, a dead branch and an unused initializer."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, name)

    nodes = [
        helper.make_node(
            "Conv",
            ["input.1", "conv1.weight", "conv1.bias"],
            ["/conv1/Conv_output_0"],
            name="/conv1/Conv",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["/conv1/Conv_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        helper.make_node(
            "GlobalAveragePool",
            ["/relu/Relu_output_0"],
            ["/pool/GlobalAveragePool_output_0"],
            name="/pool/GlobalAveragePool",
        ),
        helper.make_node("Flatten", ["/pool/GlobalAveragePool_output_0"], ["onnx::Gemm_7"], name="/Flatten", axis=1),
        helper.make_node(
            "Gemm", ["onnx::Gemm_7", "fc.weight", "fc.bias"], ["/fc/Gemm_output_0"], name="/fc/Gemm", transB=1
        ),
        helper.make_node("Sigmoid", ["/relu/Relu_output_0"], ["/unused/Sigmoid_output_0"], name="/unused/Sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("input.1", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("/fc/Gemm_output_0", onnx.TensorProto.FLOAT, [1, 10])],
        [
            init("conv1.weight", 8, 3, 3, 3),
            init("conv1.bias", 8),
            init("fc.weight", 10, 8),
            init("fc.bias", 10),
            init("unused.weight", 64, 64),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
        producer_name="pytorch",
        producer_version="2.13.0",
    )
    model.metadata_props.add(key="example", value="tiny-cnn")
    return model


def tiny_classifier(seed: int = 0) -> onnx.ModelProto:
    """An image classifier with readable names and a symbolic batch: ``image`` float[batch, 3, 8, 8]
    -> Conv (conv_out) -> Relu (relu_out) -> GlobalAveragePool (pooled) -> Flatten (features) -> Gemm
    -> ``logits`` float[batch, 10]. No value_info for inner tensors (types come from inference)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu_out"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1),
        helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 10])],
        [init("conv.weight", 8, 3, 3, 3), init("conv.bias", 8), init("fc.weight", 10, 8), init("fc.bias", 10)],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10, producer_name="surgeon-examples"
    )


def optimize_example(seed: int = 0) -> onnx.ModelProto:
    """What an exporter in a hurry leaves behind (opset 13, IR 7): doc strings, an Identity and an
    inference Dropout, Conv + BatchNormalization, a Gather with negative indices, a constant
    subgraph and two byte-equal initializers. ``image`` float[batch, 3, 8, 8] -> ``probs``
    float[batch, 4]."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, values: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(values), name)

    offset = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    inits = [
        init("conv.weight", rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3),
        init("conv.bias", rng.standard_normal(8).astype(np.float32) * 0.1),
        init("bn.scale", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        init("bn.bias", rng.standard_normal(8).astype(np.float32) * 0.1),
        init("bn.mean", rng.standard_normal(8).astype(np.float32) * 0.1),
        init("bn.var", rng.uniform(0.5, 2.0, 8).astype(np.float32)),
        init("pick", np.array([-1, -2, 0, 1], np.int64)),
        init("scale.base", np.array([1.0, 0.5, 2.0, 1.5], np.float32)),
        init("two", np.array(2.0, np.float32)),
        init("offset.a", offset),
        init("offset.b", offset.copy()),
    ]
    doc = 'File "model.py", line 12, in forward'
    nodes = [
        helper.make_node("Identity", ["image"], ["image.copy"], name="/Identity", doc_string=doc),
        helper.make_node(
            "Conv",
            ["image.copy", "conv.weight", "conv.bias"],
            ["conv"],
            name="/conv/Conv",
            pads=[1, 1, 1, 1],
            doc_string=doc,
        ),
        helper.make_node(
            "BatchNormalization",
            ["conv", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
            ["bn"],
            name="/bn/BatchNormalization",
        ),
        helper.make_node("Relu", ["bn"], ["relu"], name="/relu/Relu"),
        helper.make_node("Dropout", ["relu"], ["drop"], name="/dropout/Dropout"),
        helper.make_node("GlobalAveragePool", ["drop"], ["pool"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["pool"], ["features"], name="/Flatten", axis=1),
        helper.make_node("Gather", ["features", "pick"], ["picked"], name="/Gather", axis=1),
        helper.make_node("Mul", ["scale.base", "two"], ["scale"], name="/Mul_const"),
        helper.make_node("Mul", ["picked", "scale"], ["scaled"], name="/Mul"),
        helper.make_node("Add", ["scaled", "offset.a"], ["shifted"], name="/Add"),
        helper.make_node("Sub", ["shifted", "offset.b"], ["logits"], name="/Sub"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="/Softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["batch", 4])],
        inits,
        doc_string="exported graph",
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        ir_version=7,
        producer_name="pytorch",
        producer_version="1.13.1",
        doc_string="exported by a script",
    )


def classifier_example(
    seed: int = 0, batch: int = 1, spatial: tuple[Any, Any] = ("height", "width")
) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Reshape [1, 8] (batch traced as 1) -> Gemm: the classic
    ``x.view(1, -1)`` before a classifier. Spatial dims symbolic by default (``classifier.onnx``)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "conv.weight"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "conv.bias"),
        numpy_helper.from_array(np.array([batch, 8], np.int64), "flat_shape"),
        numpy_helper.from_array((rng.standard_normal((5, 8)) * 0.3).astype(np.float32), "fc.weight"),
        numpy_helper.from_array((rng.standard_normal(5) * 0.1).astype(np.float32), "fc.bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["conv"], name="/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="/relu/Relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="/pool/GlobalAveragePool"),
        helper.make_node("Reshape", ["pool", "flat_shape"], ["flat"], name="/Reshape"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm", transB=1),
    ]
    h, w = spatial

    def vi(name: str, shape: list[Any]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)

    value_info = [
        vi("conv", [batch, 8, h, w]),
        vi("relu", [batch, 8, h, w]),
        vi("pool", [batch, 8, 1, 1]),
        vi("flat", [batch, 8]),
    ]
    graph = helper.make_graph(
        nodes, "main_graph", [vi("image", [batch, 3, h, w])], [vi("logits", [batch, 5])], inits, value_info=value_info
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def srcnn_torch(channels: int = 3, scale: float = 3.0, seed: int = 0) -> Any:
    """SRCNN: bicubic upsample, conv 9x9 -> 1x1 -> 5x5 with padding keeping the size (fewer
    channels than the paper's 64/32 so tests are fast), random weights."""
    import torch
    from torch import nn

    class SRCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.Upsample(scale_factor=scale, mode="bicubic", align_corners=False)
            self.c1 = nn.Conv2d(channels, 16, 9, padding=4)
            self.c2 = nn.Conv2d(16, 8, 1)
            self.c3 = nn.Conv2d(8, channels, 5, padding=2)

        def forward(self, x: Any) -> Any:
            x = self.up(x)
            return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))

    torch.manual_seed(seed)
    return SRCNN().eval()


def export(
    module: Any, shape: tuple[int, ...], dynamo: bool, input_name: str = "image", output_name: str = "out"
) -> onnx.ModelProto:
    """Export with TorchScript (``dynamo=False``, opset 17) or dynamo; returns the ModelProto."""
    import io
    import warnings

    import onnx
    import torch

    x = torch.randn(*shape)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(
                module, (x,), dynamo=True, verbose=False, input_names=[input_name], output_names=[output_name]
            )
            return prog.model_proto  # type: ignore[union-attr]
        names = {"input_names": [input_name], "output_names": [output_name]}
        torch.onnx.export(module, (x,), f, dynamo=False, opset_version=17, **names)  # type: ignore[arg-type]
    return onnx.load_from_string(f.getvalue())


def srcnn_example() -> onnx.ModelProto:
    """``srcnn.onnx`` for recipes/srcnn-dynamic-scale.yaml: SRCNN x3, input 1x3x8x8, TorchScript export."""
    return export(srcnn_torch(), (1, 3, 8, 8), dynamo=False)


def mlp_example() -> onnx.ModelProto:
    """``mlp.onnx`` for recipes/fuse-ops.yaml: a 2-layer MLP as exporters write it at opset 20
    (MatMul + Add on 2-D activations, the Erf form of GELU, a Sigmoid gate), input batch x 16."""
    import numpy as np
    import onnx.parser
    from onnx import numpy_helper

    text = """<ir_version: 10, opset_import: ["" : 20]>
    mlp (float[batch, 16] x) => (float[batch, 8] y) {
      p1 = MatMul(x, w1)  h1 = Add(p1, b1)
      d = Div(h1, r2)  e = Erf(d)  f = Add(e, one)  g = Mul(h1, f)  a = Mul(g, half)
      p2 = MatMul(a, w2)  h2 = Add(p2, b2)
      s = Sigmoid(h2)  y = Mul(h2, s)
    }"""
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((16, 32)) / 4,
        "b1": rng.standard_normal(32) / 10,
        "w2": rng.standard_normal((32, 8)) / 6,
        "b2": rng.standard_normal(8) / 10,
        "r2": np.array(2**0.5),
        "one": np.array(1.0),
        "half": np.array(0.5),
    }
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items())
    return model


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "tiny-cnn.onnx": tiny_cnn,
    "tiny-classifier.onnx": tiny_classifier,
    "bloated.onnx": optimize_example,
    "classifier.onnx": classifier_example,
    "srcnn.onnx": srcnn_example,
    "mlp.onnx": mlp_example,
}
NEEDS_TORCH = {"srcnn.onnx"}
"""File name -> builder of the model recipes/ refer to."""


def build_all(folder: str | Path, only: list[str] | None = None) -> list[Path]:
    import onnx

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, builder in BUILDERS.items():
        if only and name not in only:
            continue
        if name in NEEDS_TORCH and importlib.util.find_spec("torch") is None:
            print(f"skipped {name}: needs torch (pip install -e '.[torch]')", file=sys.stderr)
            continue
        onnx.save(builder(), str(out / name))
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m surgeon.examples FOLDER [NAME...]", file=sys.stderr)
        return 2
    for path in build_all(args[0], args[1:] or None):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
