"""Small models and runs for the HTML report tests, with hostile names: every text from a model
must reach the page escaped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HOSTILE = "<script>alert('x')</script>\"q\x1b[31m"
"""A node name that would run a script, break an attribute and colour a terminal."""
OUT_NAME = "<img src=x onerror=alert(1)>"


def hostile_model(path: Path) -> Path:
    """x[N,4] -> MatMul -> Relu -> Add -> Sigmoid -> y, a dead Identity, hostile names."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name=HOSTILE),
        helper.make_node("Relu", ["mm"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "b"], ["a"], name="add"),
        helper.make_node("Sigmoid", ["a"], ["y"], name="sigmoid"),
        helper.make_node("Identity", ["a"], ["dead"], name="dead"),
    ]
    graph = helper.make_graph(
        nodes,
        "g<b>",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    model.producer_name = "<b>producer</b>"
    onnx.save(model, str(path))
    return path


def recipe(folder: Path, fail: bool = False) -> Path:
    """rename-io (the output gets a hostile name), cleanup (drops the dead node), to-fp16 (with
    ``fail``: a tolerance it cannot meet, so the step fails and its error is localized)."""
    fp16: dict[str, object] = {"to-fp16": {"keep_io_types": True}}
    if fail:
        fp16["verify"] = {"rtol": 0, "atol": 1e-9}
    data = {
        "version": 1,
        "verify": {"dims": {"N": 2}, "seed": 0},
        "passes": [{"rename-io": {"outputs": {"y": OUT_NAME}}}, {"cleanup": {}}, fp16],
    }
    path = folder / "recipe.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML, and keeps the names exact
    return path
