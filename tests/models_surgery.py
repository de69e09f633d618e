"""Models for the output and subgraph surgery passes (add-outputs, remove-outputs, extract,
append-op, prepend-op): the example model of recipes/debug-outputs.yaml and
recipes/postprocess.yaml, and tiny torch exports."""

from __future__ import annotations

from pathlib import Path

from surgeon.examples import tiny_classifier  # noqa: F401  (re-exported for the tests)


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
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tiny_mlp(),
            (x,),
            str(path),
            dynamo=dynamo,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            verbose=False,
            **kwargs,
        )
    _downgrade_ir(path)
    return path


def _downgrade_ir(path: Path) -> None:
    """onnxruntime here reads IR <= 13; keep the export's external data where it is."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if model.ir_version > 10:
        model.ir_version = 10
        onnx.save(model, str(path))
