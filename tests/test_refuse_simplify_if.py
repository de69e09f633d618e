"""simplify on an If-heavy model (a voice-activity model's shape: a sample-rate test picks the
branch that holds the network, and the branches read outer-scope weights and values). onnxsim
fails on it; the fallback folds the constant work inside the branches and verifies."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from surgeon import Pipeline
from surgeon.passes.simplify import Simplify

W = ", ".join(str(v) for v in np.linspace(-2, 2, 32).round(3))
VAD = f"""<ir_version: 10, opset_import: ["" : 17]>
g (float[1, 4] x, int64 sr) => (float[1, 8] y)
  <float[4, 8] W1 = {{{W}}}, float[8] B = {{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8}},
   int64 rate = {{16000}}, float two = {{2.0}}>
{{
  one = Constant<value = int64 {{1}}>()
  zero = Constant<value = int64 {{0}}>()
  c = Equal(one, zero)
  h = Sigmoid(x)
  is16k = Equal(sr, rate)
  y = If(c) <then_branch = t () => (float[1, 8] a) {{ a = MatMul(h, W1) }},
             else_branch = e () => (float[1, 8] b) {{
                hm = Mul(h, two)
                b = If(is16k) <then_branch = t2 () => (float[1, 8] p) {{
                                  w2 = Mul(W1, two)
                                  bb = Add(B, B)
                                  p0 = MatMul(hm, w2)
                                  p1 = Add(p0, bb)
                                  p = Relu(p1) }},
                               else_branch = e2 () => (float[1, 8] q) {{
                                  q0 = MatMul(hm, W1)
                                  q = Tanh(q0) }}>
             }}>
}}"""


def _branch_ops(graph: onnx.GraphProto) -> list[list[str]]:
    ops = []
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                ops.append([m.op_type for m in a.g.node])
                ops += _branch_ops(a.g)
    return ops


def test_fallback_folds_inside_if_branches_that_read_outer_scope_values():
    src = onnx.parser.parse_model(VAD)
    onnx.checker.check_model(src, full_check=True)
    given = src.SerializeToString()
    res = Pipeline([Simplify()]).run(src)
    assert src.SerializeToString() == given  # the caller's model is not edited (folding renamed its weights)
    step = res.steps[0]
    assert res.ok and step.modified
    assert step.notes[0].startswith("onnxsim failed (") and "folded constants" in step.notes[0]
    out = res.model.proto
    onnx.checker.check_model(out, full_check=True)
    # the constant If is gone; in the sample-rate branch, W1 * 2 and B + B are folded
    assert [n.op_type for n in out.graph.node] == ["Sigmoid", "Equal", "Mul", "If"]
    assert ["MatMul", "Add", "Relu"] in _branch_ops(out.graph)
    # both branches give the source's results (the verifier's random sr takes one of them)
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (src, out)]
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    for sr in (16000, 8000):
        before, after = (s.run(None, {"x": x, "sr": np.array(sr, np.int64)})[0] for s in sessions)
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_round_trip_keeps_weights_that_branches_read_in_the_main_graph_once():
    from surgeon.ir.adapter import ModelIR
    from surgeon.ir.model import load
    from surgeon.ir.walk import iter_proto_graphs

    src = onnx.parser.parse_model(VAD)
    out = ModelIR.from_model(load(src)).to_proto()
    # onnx-graphsurgeon wrote W1 into each body that reads it, beside the main graph's copy
    assert sorted(t.name for g in iter_proto_graphs(out.graph) for t in g.initializer) == sorted(
        t.name for t in src.graph.initializer
    )
    onnx.checker.check_model(out, full_check=True)
