"""Models for the output and subgraph surgery passes (add-outputs, remove-outputs, extract,
append-op, prepend-op): the example model of recipes/debug-outputs.yaml and
recipes/postprocess.yaml, and tiny torch exports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


def tiny_classifier(seed: int = 0) -> onnx.ModelProto:
    """Image classifier with readable names: ``image`` float[batch, 3, 8, 8] -> Conv (conv_out) ->
    Relu (relu_out) -> GlobalAveragePool (pooled) -> Flatten (features) -> Gemm -> ``logits``
    float[batch, 10]. No value_info for inner tensors (types come from shape inference)."""
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
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10, producer_name="surgeon-examples")


def tiny_mlp():  # type: ignore[no-untyped-def]
    """Linear(4, 8) -> ReLU -> Linear(8, 3), fixed weights (needs torch)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


def export_mlp(folder: Path, dynamo: bool) -> Path:
    """``tiny_mlp`` exported with input ``x`` float[batch, 4] and output ``y`` float[batch, 3]."""
    import contextlib
    import io
    import warnings

    import torch

    path = folder / f"mlp_{'dynamo' if dynamo else 'ts'}.onnx"
    x = torch.randn(2, 4)
    batch = {"x": {0: "batch"}, "y": {0: "batch"}}
    kwargs = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamo else {"dynamic_axes": batch}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_mlp(), (x,), str(path), dynamo=dynamo, opset_version=17, input_names=["x"], output_names=["y"], verbose=False, **kwargs)
    _downgrade_ir(path)
    return path


def _downgrade_ir(path: Path) -> None:
    """onnxruntime here reads IR <= 13; keep the export's external data where it is."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if model.ir_version > 10:
        model.ir_version = 10
        onnx.save(model, str(path))
