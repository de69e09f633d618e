"""rename-io: graph inputs/outputs renamed; consumers, subgraphs and value_info follow."""

from __future__ import annotations

import onnx
import pytest
from onnx import parser
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import load
from surgeon.passes.rename_io import RenameIO
from tests.conftest import exported_like_model


def _run(model: onnx.ModelProto, **params: object):
    return Pipeline([RenameIO(**params)], verify={"dims": {"batch": 2}, "device": "cpu"}).run(model)


def test_renames_inputs_outputs_and_value_info() -> None:
    res = _run(exported_like_model(), inputs={"onnx::MatMul_0": "x"}, outputs={"/relu/Relu_output_0": "y"})
    assert res.ok and res.steps[0].modified
    g = res.model.proto.graph
    assert [i.name for i in g.input] == ["x"] and [o.name for o in g.output] == ["y"]
    assert list(g.node[0].input) == ["x", "fc.weight"] and list(g.node[2].input) == ["x"]
    assert [v.name for v in g.value_info] == ["/fc/MatMul_output_0"]
    assert [d.dim_param for d in g.input[0].type.tensor_type.shape.dim] == ["batch", ""]
    (check,) = res.steps[0].check.outputs  # a rename is the same computation: proved, not run
    assert check.kind == "proof" and check.ok and res.steps[0].verdict == "proved (structural)"


def test_regex_renames() -> None:
    res = _run(
        exported_like_model(),
        regex=[{"pattern": r"onnx::MatMul_(\d+)", "replacement": r"input_\1", "apply_to": "inputs"}],
    )
    assert [i.name for i in res.model.proto.graph.input] == ["input_0"]
    assert [o.name for o in res.model.proto.graph.output] == ["/relu/Relu_output_0"]


def test_no_match_is_unmodified_and_idempotent() -> None:
    res = _run(exported_like_model(), regex=[{"pattern": "nothing.*", "replacement": "x"}])
    assert res.steps[0].modified is False and res.steps[0].check is None
    res = _run(exported_like_model(), inputs={"onnx::MatMul_0": "onnx::MatMul_0"})
    assert res.steps[0].modified is False


def test_subgraph_capturing_a_renamed_input_follows() -> None:
    model = parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] a, bool c) => (float[2] out) {
            out = If (c) <then_branch = t () => (float[2] r) { r = Neg (a) },
                          else_branch = e () => (float[2] r2) { r2 = Abs (a) }>
        }"""
    )
    res = Pipeline([RenameIO(inputs={"a": "features"})], verify={"device": "cpu"}).run(model)
    assert res.ok
    text = onnx.printer.to_text(res.model.proto.graph)
    assert "Neg (features)" in text and "Abs (features)" in text and "(a)" not in text
    onnx.checker.check_model(res.model.proto)


def test_tensor_both_input_and_output_gets_one_name() -> None:
    model = parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] a) => (float[2] a, float[2] b) { b = Neg (a) }"""
    )
    res = Pipeline([RenameIO(inputs={"a": "x"})], verify={"device": "cpu"}).run(model)
    assert res.ok
    g = res.model.proto.graph
    assert [i.name for i in g.input] == ["x"] and [o.name for o in g.output] == ["x", "b"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"inputs": {"inptu": "x"}}, "unknown input 'inptu'; graph inputs are: onnx::MatMul_0"),
        (
            {"outputs": {"/relu/Relu_output": "y"}},
            "unknown output '/relu/Relu_output'; did you mean '/relu/Relu_output_0'?",
        ),
        ({"inputs": {"onnx::MatMul_0": "fc.weight"}}, "a tensor named 'fc.weight' already exists"),
        ({"inputs": {"onnx::MatMul_0": "z"}, "outputs": {"/relu/Relu_output_0": "z"}}, "would both be named 'z'"),
        ({"regex": [{"pattern": "(", "replacement": "x"}]}, "invalid pattern '('"),
    ],
)
def test_preconditions(params: dict, message: str) -> None:
    with pytest.raises(PassPreconditionError, match=message.replace("(", r"\(").replace("?", r"\?")):
        RenameIO(**params).requires(ModelIR.from_model(load(exported_like_model())))


def test_bad_params() -> None:
    with pytest.raises(ValidationError):
        RenameIO(inputs=["a"])
    with pytest.raises(ValidationError):
        RenameIO(renames={"a": "b"})


def test_torch_exports_both_exporters(tmp_path) -> None:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return torch.relu(self.fc(x))

    for dynamo in (False, True):
        path = tmp_path / f"net_{dynamo}.onnx"
        torch.onnx.export(Net().eval(), (torch.randn(2, 4),), str(path), dynamo=dynamo, opset_version=18, verbose=False)
        m = onnx.load(str(path))
        old_in, old_out = m.graph.input[0].name, m.graph.output[0].name
        res = Pipeline(
            [RenameIO(inputs={old_in: "features"}, outputs={old_out: "scores"})], verify={"device": "cpu"}
        ).run(path)
        assert res.ok and res.steps[0].check is not None
        assert [i.name for i in res.model.proto.graph.input] == ["features"]
        assert [o.name for o in res.model.proto.graph.output] == ["scores"]


def test_clashes_are_found_on_the_protobuf_without_building_the_graph() -> None:
    """On a lazily loaded model the clash check reads the serialized graph: a weight's name, an
    intermediate's, a name inside an If branch all clash; a name whose bytes only a weight's data
    holds by chance does not."""
    branch = "then_out = Neg (a)"
    model = parser.parse_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y) <float[2] w = {{1.0, 2.0}}> {{
            a = Add (x, w)
            y = If (c) <then_branch = t () => (float[2] then_out) {{ {branch} }},
                        else_branch = e () => (float[2] a2) {{ a2 = Relu (a) }}>
        }}"""
    )
    # w's data: protobuf's bytes for a node input named "q" (0x0a 0x01 'q'), twice over
    model.graph.initializer[0].ClearField("float_data")
    model.graph.initializer[0].raw_data = b"\x0a\x01q\x00\x0a\x01q\x00"
    for new in ("w", "a", "then_out"):
        ir = ModelIR.from_model(load(model), lazy=True)
        with pytest.raises(PassPreconditionError, match=f"a tensor named '{new}' already exists"):
            RenameIO(inputs={"x": new}).requires(ir)
        assert not ir.built
    ir = ModelIR.from_model(load(model), lazy=True)
    res = RenameIO(inputs={"x": "q"})(ir)
    assert res.modified and not ir.built
    assert [i.name for i in ir.proto_graph.input] == ["q", "c"]
