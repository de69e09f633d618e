"""simplify where onnxsim fails (If bodies reading outer-scope values) and symbolic output dims
that onnxsim's shape inference would make static."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from surgeon import Pipeline
from surgeon.errors import PassError
from surgeon.passes.simplify import Simplify

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'
# a constant-condition If whose else branch holds an If that reads a value of the enclosing
# branch (xm) and of the main graph (two): onnxsim inlines the outer If and then fails its own
# topological-order check
OUTER_SCOPE_IF = (
    HEADER
    + """
g (float[2, 3] x, bool k) => (float[2, 3] y)
{
  one = Constant<value = int64 {1}>()
  zero = Constant<value = int64 {0}>()
  c = Equal(one, zero)
  two = Constant<value = float {2.0}>()
  unused = Neg(x)
  y = If(c) <then_branch = t () => (float[2, 3] a) { a = Div(two, x) },
             else_branch = e () => (float[2, 3] b) {
                xm = Sub(x, two)
                b = If(k) <then_branch = t2 () => (float[2, 3] p) { p = Identity(x) },
                           else_branch = e2 () => (float[2, 3] q) { q = Div(two, xm) }>
             }>
}"""
)


def _ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


def test_onnxsim_failure_falls_back_to_folding_and_cleanup() -> None:
    m = onnx.parser.parse_model(OUTER_SCOPE_IF)
    onnx.checker.check_model(m)
    res = Pipeline([Simplify()]).run(m)
    assert res.ok, res.failures()
    step = res.steps[0]
    assert step.modified
    assert step.notes[0].startswith("onnxsim failed (Nodes in a graph must be topologically sorted")
    assert step.notes[0].endswith("; folded constants and removed dead nodes instead")
    g = res.model.proto.graph
    # the constant condition folded and its If flattened, the dead Neg gone, the inner If kept
    assert _ops(g) == ["Sub", "If"]
    onnx.checker.check_model(res.model.proto, full_check=True)
    # the verifier ran the branch its random k took: run both
    sessions = [
        ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]) for p in (m, res.model.proto)
    ]
    for k in (True, False):
        feed = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) + 3, "k": np.array(k)}
        before, after = (s.run(None, feed)[0] for s in sessions)
        np.testing.assert_allclose(after, before, rtol=1e-6)


def test_fallback_cannot_apply_input_shapes() -> None:
    with pytest.raises(PassError, match=r"onnxsim failed: Nodes in a graph .*; input_shapes needs onnxsim"):
        Pipeline([Simplify(input_shapes={"x": [2, 3]})]).run(onnx.parser.parse_model(OUTER_SCOPE_IF))


def test_symbolic_output_dims_stay_symbolic_where_inference_finds_a_size() -> None:
    m = onnx.parser.parse_model(
        HEADER
        + """
g (float[2, 3] x) => (float[N, 3] y)
{
  c = Constant<value = float {1.0}>()
  d = Add(c, c)
  y = Mul(x, d)
}"""
    )
    res = Pipeline([Simplify()], verify={"dims": {"N": 2}}).run(m)
    assert res.ok and res.steps[0].modified
    dims = res.model.proto.graph.output[0].type.tensor_type.shape.dim
    assert [(d.dim_param, d.dim_value) for d in dims] == [("N", 0), ("", 3)]


def test_input_shapes_still_let_output_dims_become_static() -> None:
    m = onnx.parser.parse_model(HEADER + "\ng (float[batch, 3] x) => (float[batch, 3] y) { y = Relu(x) }")
    res = Pipeline([Simplify(input_shapes={"x": [2, 3]})], verify={"dims": {"batch": 2}}).run(m)
    assert res.ok
    dims = res.model.proto.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3]
