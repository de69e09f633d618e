"""to-fp16: float32 -> float16 with boundary casts, blocked ops and the known hazards."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.external import is_external
from surgeon.ir.model import load
from surgeon.passes.to_fp16 import ToFP16
from surgeon.verify.compare import Tolerance

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'
MLP = (
    HEADER + """
g (float[batch, 4] x) => (float[batch, 3] y) """
    """<float[4, 3] w = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0}, float[3] b = {0.5, 1e6, -1e6}>
{
  [mm] h = MatMul(x, w)
  [add] a = Add(h, b)
  [sm] y = Softmax<axis=-1>(a)
}"""
)


def _run(model, tol=None, **params):
    m = onnx.parser.parse_model(model) if isinstance(model, str) else model
    verify = {"dims": {"batch": 2}}
    return Pipeline([ToFP16(**params)], verify=verify).run(m)


def _elem(vi):
    return vi.type.tensor_type.elem_type


def _nodes(res):
    return [(n.op_type, list(n.input), list(n.output)) for n in res.model.proto.graph.node]


def test_keep_io_types_casts_at_boundary_and_clamps():
    res = _run(MLP)
    assert res.ok, res.failures()
    g = res.model.proto.graph
    assert _elem(g.input[0]) == TensorProto.FLOAT and _elem(g.output[0]) == TensorProto.FLOAT
    assert _nodes(res) == [
        ("Cast", ["x"], ["x_fp16"]),
        ("MatMul", ["x_fp16", "w"], ["h"]),
        ("Add", ["h", "b"], ["a"]),
        ("Softmax", ["a"], ["y_fp16"]),
        ("Cast", ["y_fp16"], ["y"]),
    ]
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    assert inits["w"].dtype == np.float16 and inits["b"].tolist() == [0.5, 65504.0, -65504.0]
    assert "clamped 2 weight value(s) outside the float16 range to +-65504" in res.steps[0].notes


def test_without_keep_io_types_feeds_and_compares_float16():
    res = _run(MLP, keep_io_types=False)
    assert res.ok, res.failures()
    g = res.model.proto.graph
    assert _elem(g.input[0]) == TensorProto.FLOAT16 and _elem(g.output[0]) == TensorProto.FLOAT16
    assert [n[0] for n in _nodes(res)] == ["MatMul", "Add", "Softmax"]


STATIC = (
    HEADER
    + """
g (float[2, 4] x) => (float[2, 3] y) <float[4, 3] w = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0}>
{
  h = MatMul(x, w)
  y = Relu(h)
}"""
)


def test_declares_the_dtype_of_the_io_it_converts_and_nothing_else():
    def contract(**params):
        ir = ModelIR.from_model(load(onnx.parser.parse_model(STATIC)))
        return ToFP16(**params).run(ir).contract

    kept, half = contract(), contract(keep_io_types=False)
    assert (kept.changed_types, kept.changed_dims) == (set(), set())
    assert (half.changed_types, half.changed_dims) == ({"x", "y"}, set())
    assert sorted(half.feed_transforms) == ["x"] and sorted(half.expectations) == ["y"]


class _Loosen(ToFP16):
    """A buggy to-fp16: also makes a static dim of its converted (type-declared) input and output symbolic."""

    def run(self, model):
        result = super().run(model)
        model.graph.inputs[0].shape = [2, "f"]
        model.graph.outputs[0].shape = [2, "k"]
        return result


def test_declared_types_let_no_dims_change_through():
    assert _run(STATIC, keep_io_types=False).ok
    res = Pipeline([_Loosen(keep_io_types=False)], verify={"device": "cpu"}).run(onnx.parser.parse_model(STATIC))
    assert not res.ok  # before: ok (a port with a feed transform or an expectation was free in dims too)
    failures = [f for f in res.failures() if "interface" in f]
    assert len(failures) == 2, res.failures()
    assert "interface: input 'x'" in failures[0] and "axis 1 is 'f', was 4 (static -> symbolic)" in failures[0]
    assert "interface: output 'y'" in failures[1] and "axis 1 is 'k', was 3 (static -> symbolic)" in failures[1]


def test_blocked_op_gets_casts_both_ways():
    res = _run(MLP, block_ops=["Softmax"])
    assert res.ok, res.failures()
    assert _nodes(res)[-2:] == [("Cast", ["a"], ["a_fp32"]), ("Softmax", ["a_fp32"], ["y"])]
    res = _run(MLP, block_nodes=["mm"])
    assert res.ok, res.failures()
    ops = _nodes(res)
    assert ops[0] == ("MatMul", ["x", "w"], ["h"])  # float32 input straight in, weight untouched
    assert ("Cast", ["h"], ["h_fp16"]) in ops
    assert (
        numpy_helper.to_array(next(t for t in res.model.proto.graph.initializer if t.name == "w")).dtype == np.float32
    )


def test_resize_scales_and_roi_stay_float32():
    text = (
        HEADER + """
g (float[1, 1, 2, 2] x) => (float[1, 1, 4, 4] y) <float[0] roi = {}, float[4] scales = {1.0, 1.0, 2.0, 2.0}, """
        """float[1] k = {2.0}>
{
  a = Mul(x, k)
  y = Resize<mode="nearest">(a, roi, scales)
}"""
    )
    res = _run(text)
    assert res.ok, res.failures()
    inits = {t.name: t.data_type for t in res.model.proto.graph.initializer}
    assert inits == {"k": TensorProto.FLOAT16, "roi": TensorProto.FLOAT, "scales": TensorProto.FLOAT}


def test_cast_to_float_and_tolerance_contract():
    text = (
        HEADER
        + """
g (int64[batch, 4] x) => (float[batch, 4] y) <float[4] k = {0.5, 0.25, 2.0, 4.0}>
{
  c = Cast<to=1>(x)
  y = Mul(c, k)
}"""
    )
    res = _run(text)
    assert res.ok, res.failures()
    cast = res.model.proto.graph.node[0]
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT16
    assert ToFP16.tolerance == Tolerance(1e-2, 1e-2)
    assert res.steps[0].check.outputs[0].rtol == 1e-2


def test_nothing_float_is_untouched():
    text = HEADER + "g (int64[batch, 4] x) => (int64[batch, 4] y) { y = Neg(x) }"
    res = _run(text)
    assert res.ok and not res.steps[0].modified
    assert not _run(_run(MLP, keep_io_types=False).model.proto, keep_io_types=False).steps[0].modified


def test_bad_params_and_unknown_node():
    with pytest.raises(ValidationError):
        ToFP16(keep_io=True)
    with pytest.raises(PassPreconditionError, match="unknown node 'mmm'; did you mean 'mm'"):
        _run(MLP, block_nodes=["mmm"])


def test_external_weights_read_one_at_a_time(tmp_path):
    m = onnx.parser.parse_model(MLP)
    for t in m.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    res = _run(load(path), block_ops=["Add"])
    assert res.ok, res.failures()
    inits = {t.name: t for t in res.model.proto.graph.initializer}
    assert is_external(inits["b"]) and not is_external(inits["w"])  # b (blocked Add) untouched on disk


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_export_conv_upsample(dynamo: bool) -> None:
    """Both exporters: TorchScript puts Resize scales in a Constant node, dynamo in an initializer."""
    import io

    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return torch.nn.functional.interpolate(torch.relu(self.conv(x)), scale_factor=2.0, mode="nearest")

    args = (torch.randn(1, 3, 4, 4),)
    if dynamo:
        m = torch.onnx.export(
            Net().eval(), args, dynamo=True, opset_version=18, input_names=["x"], output_names=["y"], verbose=False
        ).model_proto
    else:
        buf = io.BytesIO()
        torch.onnx.export(
            Net().eval(), args, buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"]
        )
        m = onnx.load_from_string(buf.getvalue())
    m.ir_version = 10
    res = _run(m)
    assert res.ok, res.failures()
    resize = next(n for n in res.model.proto.graph.node if n.op_type == "Resize")
    if dynamo:
        types = {t.name: t.data_type for t in res.model.proto.graph.initializer}
        assert types[resize.input[2]] == TensorProto.FLOAT
        assert types["conv.weight"] == TensorProto.FLOAT16


def test_sequences_stay_float32_with_casts_where_they_meet_converted_tensors():
    """SequenceAt's output type follows the sequence, which to-fp16 does not convert: marking it
    float16 made onnxruntime refuse the model (found by the backend-model sweep)."""
    text = (
        HEADER
        + """
g (float[2, 3] x, float[2, 3] z) => (float[2, 3] y)
{
  r = Relu(x)
  s0 = SequenceEmpty()
  s1 = SequenceInsert(s0, z)
  s = SequenceInsert(s1, r)
  one = Constant<value = int64 {1}>()
  e = SequenceAt(s, one)
  y = Mul(e, r)
}"""
    )
    res = Pipeline([ToFP16()]).run(onnx.parser.parse_model(text))
    assert res.ok, res.failures()
    nodes = _nodes(res)
    assert ("Relu", ["x_fp16"], ["r"]) in nodes
    assert ("Cast", ["r"], ["r_fp32"]) in nodes  # into the float32 sequence
    assert ("SequenceInsert", ["s1", "r_fp32"], ["s"]) in nodes
    assert ("Cast", ["e"], ["e_fp16"]) in nodes and ("Mul", ["e_fp16", "r"], ["y_fp16"]) in nodes


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_function_expanded_constants_follow(keep_io_types: bool) -> None:
    """What exporters write when they inline functions (the onnx node tests' *_expanded models,
    dynamo's output): a Constant with value_float / value_floats, CastLike to a converted tensor,
    ConstantOfShape without a value (float32 zero). Each must produce float16 where its output is
    now declared float16; before, onnxruntime refused the converted model (type mismatch)."""
    model = onnx.parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y) {
            alpha = Constant<value_float = 1.5>()
            two = Constant<value_floats = [2.0, 2.0, 2.0]>()
            a = CastLike(alpha, x)
            s = Shape(x)
            zeros = ConstantOfShape(s)
            m = Mul(a, x)
            n = Mul(m, two)
            y = Add(n, zeros)
        }"""
    )
    res = _run(model, keep_io_types=keep_io_types)
    assert res.ok, res.failures()
    assert res.steps[0].modified and res.steps[0].check is not None
    proto = res.model.proto
    consts = {n.output[0]: n for n in proto.graph.node if n.op_type in ("Constant", "ConstantOfShape")}
    for name in ("alpha", "two", "zeros"):
        value = next(a.t for a in consts[name].attribute if a.name == "value")
        assert value.data_type == TensorProto.FLOAT16, name


def test_generators_stay_float32_with_casts() -> None:
    """EyeLike and RandomUniformLike have no float16 kernels in onnxruntime's CPU provider: they
    run in float32 (their input cast back where it was converted), cast where they meet float16."""
    model = onnx.parser.parse_model(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[3, 3] x) => (float[3, 3] y) {
            r = Relu(x)
            eye = EyeLike(r)
            y = Add(r, eye)
        }"""
    )
    for keep in (True, False):
        res = _run(model, keep_io_types=keep)
        assert res.ok, res.failures()
        eye = next(n for n in res.model.proto.graph.node if n.op_type == "EyeLike")
        assert not [a for a in eye.attribute if a.name == "dtype"]
        assert any(n.op_type == "Cast" and n.input[0] == eye.output[0] for n in res.model.proto.graph.node)


def _sorted(g: onnx.GraphProto) -> bool:
    known = {i.name for i in g.input} | {t.name for t in g.initializer}
    for n in g.node:
        if any(t and t not in known for t in n.input):
            return False
        known.update(n.output)
    return True


BRANCHES = (
    HEADER + """
g (float[batch, 4] x) => (float[batch, 3] y, float[batch, 3] z) """
    """<float[4, 3] w = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0}>
{
  [mm] h = MatMul(x, w)
  [sm] y = Softmax<axis=-1>(h)
  [r] r = Relu(h)
  [z] z = Sigmoid(r)
}"""
)


def test_casts_sit_right_after_what_they_read() -> None:
    res = _run(BRANCHES, block_ops=["Softmax"])
    assert res.ok, res.failures()
    g = res.model.proto.graph
    assert _sorted(g)
    ops = _nodes(res)
    assert ops[0] == ("Cast", ["x"], ["x_fp16"])  # reads a graph input: first
    made = {o: k for k, (_, _, outs) in enumerate(ops) for o in outs}
    for k, (op, ins, _) in enumerate(ops):
        if op == "Cast" and ins[0] in made:
            assert made[ins[0]] == k - 1 or ops[k - 1][0] == "Cast" and made[ins[0]] < k, ops


def test_a_source_out_of_order_converts_into_order() -> None:
    m = onnx.parser.parse_model(BRANCHES)
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend([nodes[3], nodes[1], nodes[2], nodes[0]])  # consumers before producers
    assert not _sorted(m.graph)
    ir = ModelIR.from_model(load(m))
    assert ToFP16(block_ops=["Softmax"])(ir).modified
    out = ir.to_proto()
    assert _sorted(out.graph)
    assert sorted(n.op_type for n in out.graph.node) == sorted(
        ["Cast", "MatMul", "Cast", "Softmax", "Relu", "Sigmoid", "Cast"]
    )
    # the blocked Softmax reads float32: its Cast is made though it came before the MatMul
    maker = {o: n for n in out.graph.node for o in n.output}
    softmax = next(n for n in out.graph.node if n.op_type == "Softmax")
    cast = maker[softmax.input[0]]
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT


def test_a_pass_that_converts_nothing_leaves_the_model_as_it_came() -> None:
    """Every node blocked: nothing converts, and the model is the source, its Cast to the type
    it already has included (the converter drops those when it converts; here it did not)."""
    src = onnx.parser.parse_model(
        HEADER
        + """
g (float[2, 4] x, bool[2, 4] k) => (float[2, 4] y, bool[2, 4] z) {
  z = Cast<to=9>(k)
  c = Cast<to=1>(x)
  y = Relu(c)
}"""
    )
    for lazy in (False, True):
        ir = ModelIR.from_model(load(src), lazy=lazy)
        res = ToFP16(block_ops=["Relu", "Cast"])(ir)
        assert not res.modified
        assert [n.op_type for n in ir.to_proto().graph.node] == ["Cast", "Cast", "Relu"]


SHARED_SCALE = (
    HEADER + """
g (float[batch, 4] x) => (float[batch, 4] y) """
    """<float[4] s = {1.0001, 0.9999, 1.0003, 2.0001}, float[4] b = {0.0, 0.0, 0.0, 0.0},"""
    """ float[4, 4] w = {1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0}>
{
  [share] s2 = Identity(s)
  [three] k = Constant<value = float {3.0001}>()
  [norm] n = LayerNormalization<axis=-1>(x, s2, b)
  [scale] m = Mul(n, k)
  [mm] y = MatMul(m, w)
}"""
)


def test_constants_for_float32_nodes_only_stay_float32_unrounded() -> None:
    """TorchScript shares equal weights through Identity nodes (LayerNorm scales): an Identity of a
    weight, or a Constant, whose consumers all stay float32 stays float32 too. Before, it was
    converted and cast back, so the blocked LayerNormalization read its scale rounded to float16
    (1.0001 -> 1.0) through a Cast, and the blocked Mul its factor (3.0001 -> 3.0)."""
    res = _run(SHARED_SCALE, block_ops=["LayerNormalization", "Mul"])
    assert res.ok, res.failures()
    g = res.model.proto.graph
    by_out = {o: n for n in g.node for o in n.output}
    norm = next(n for n in g.node if n.op_type == "LayerNormalization")
    scale = by_out[norm.input[1]]
    assert scale.op_type == "Identity" and scale.input == ["s"]
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    assert inits["s"].dtype == np.float32
    assert inits["s"].tolist() == np.float32([1.0001, 0.9999, 1.0003, 2.0001]).tolist()
    mul = next(n for n in g.node if n.op_type == "Mul")
    assert by_out[mul.input[1]].op_type == "Constant"
    assert numpy_helper.to_array(by_out[mul.input[1]].attribute[0].t).dtype == np.float32
    casts = [n for n in g.node if n.op_type == "Cast"]
    assert [by_out[c.input[0]].op_type if c.input[0] in by_out else c.input[0] for c in casts] == ["Mul", "MatMul"]
    kept = {k["node"]: k["why"] for k in res.steps[0].details["kept_float32"]}
    assert "constants read only as float32" in kept["share"] and "constants" in kept["three"]
    assert res.steps[0].details["half_compute_nodes"] == 1  # the MatMul


def test_resize_scales_and_roi_from_constant_nodes_stay_float32_unrounded() -> None:
    """The dynamo exporter writes a Resize's scales as Constant nodes, not initializers. Before,
    those were converted to float16 and cast back for the Resize (a scale of 2.3 became 2.30078, a
    roi of 0.1 became 0.099976); they stay float32 now, with no Cast, and the report says why."""
    text = (
        HEADER
        + """
g (float[1, 1, 10, 10] x) => (float[1, 1, 23, 23] y) <float[1] k = {2.0}>
{
  [roi] roi = Constant<value = float[8] {0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9}>()
  [scales] scales = Constant<value = float[4] {1.0, 1.0, 2.3, 2.3}>()
  a = Mul(x, k)
  y = Resize<mode="linear", coordinate_transformation_mode="tf_crop_and_resize">(a, roi, scales)
}"""
    )
    res = _run(text)
    assert res.ok, res.failures()
    g = res.model.proto.graph
    resize = next(n for n in g.node if n.op_type == "Resize")
    assert list(resize.input[1:]) == ["roi", "scales"]
    values = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"}
    assert values["scales"].dtype == np.float32 and values["scales"].tolist() == np.float32([1, 1, 2.3, 2.3]).tolist()
    assert values["roi"].dtype == np.float32 and values["roi"][0] == np.float32(0.1)
    assert [n.input[0] for n in g.node if n.op_type == "Cast"] == ["x", resize.output[0]]
    kept = {k["node"]: k["why"] for k in res.steps[0].details["kept_float32"]}
    assert "read only as float32" in kept["scales"] and "read only as float32" in kept["roi"]


def test_an_output_that_a_float32_node_also_reads_gets_one_cast() -> None:
    """A converted tensor that is a graph output and is read by a node that stays float32: before,
    it got two Casts to float32 named alike ('c_to_fp32': one for the reader, one at the boundary),
    and onnxruntime refused the model ("two nodes with same node name"). Now the reader's Cast makes
    the graph output too."""
    text = (
        HEADER
        + """
g (float[batch, 4] x) => (float[batch, 4] c, float[batch, 4] y) <float[1] k = {2.0}>
{
  [scale] c = Mul(x, k)
  [sm] y = Softmax<axis=-1>(c)
}"""
    )
    res = _run(text, block_ops=["Softmax"])
    assert res.ok, res.failures()
    g = res.model.proto.graph
    assert _nodes(res) == [
        ("Cast", ["x"], ["x_fp16"]),
        ("Mul", ["x_fp16", "k"], ["c_fp16"]),
        ("Cast", ["c_fp16"], ["c"]),
        ("Softmax", ["c"], ["y"]),
    ]
    assert [o.name for o in g.output] == ["c", "y"] and _elem(g.output[0]) == TensorProto.FLOAT
