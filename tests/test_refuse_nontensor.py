"""Models with non-tensor graph inputs and outputs (a classifier's ``seq(map(int64, float))``
probabilities, an optional-typed input): the load/save round trip keeps their types, the passes
work on them (or refuse for a reason of their own, never as a usage error), and the verifier
compares sequences of maps element by element."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper

from surgeon import Pipeline
from surgeon.errors import EXIT_USAGE, PassError, SurgeonError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import load
from surgeon.passes.cleanup import Cleanup
from surgeon.passes.mark_dynamic import MarkDynamic
from surgeon.passes.rename_io import RenameIO
from surgeon.passes.set_metadata import SetMetadata
from surgeon.verify.compare import Tolerance, compare

SEQ_MAP = helper.make_sequence_type_proto(
    helper.make_map_type_proto(TP.INT64, helper.make_tensor_type_proto(TP.FLOAT, []))
)


def classifier() -> onnx.ModelProto:
    """A scikit-learn-style classifier: a label tensor and ZipMap'd probabilities, one map per row."""
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["logits"], name="mm"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="sm", axis=1),
        helper.make_node("ArgMax", ["probs"], ["label"], name="am", axis=1, keepdims=0),
        helper.make_node(
            "ZipMap", ["probs"], ["probabilities"], name="zm", domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]
        ),
    ]
    g = helper.make_graph(
        nodes,
        "clf",
        [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("label", TP.INT64, ["N"]), helper.make_value_info("probabilities", SEQ_MAP)],
        [onnx.numpy_helper.from_array(w, "W")],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 3)], ir_version=10
    )
    onnx.checker.check_model(m, full_check=True)
    return m


def optional_input() -> onnx.ModelProto:
    """``y = x + (bias if bias is given else x)`` with ``bias`` an optional(tensor) input."""
    opt = helper.make_optional_type_proto(helper.make_tensor_type_proto(TP.FLOAT, ["N", 4]))
    then = helper.make_graph(
        [helper.make_node("OptionalGetElement", ["bias"], ["bv"])],
        "then",
        [],
        [helper.make_tensor_value_info("bv", TP.FLOAT, ["N", 4])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["bz"])],
        "else",
        [],
        [helper.make_tensor_value_info("bz", TP.FLOAT, ["N", 4])],
    )
    nodes = [
        helper.make_node("OptionalHasElement", ["bias"], ["has"], name="has"),
        helper.make_node("If", ["has"], ["b"], name="if", then_branch=then, else_branch=other),
        helper.make_node("Add", ["x", "b"], ["y"], name="add"),
    ]
    g = helper.make_graph(
        nodes,
        "opt",
        [helper.make_tensor_value_info("x", TP.FLOAT, ["N", 4]), helper.make_value_info("bias", opt)],
        [helper.make_tensor_value_info("y", TP.FLOAT, ["N", 4])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(m, full_check=True)
    return m


def _types(m: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    return {vi.name: vi.type for vi in list(m.graph.input) + list(m.graph.output)}


@pytest.mark.parametrize("make", [classifier, optional_input])
def test_round_trip_keeps_non_tensor_types(make):
    src = make()
    out = ModelIR.from_model(load(src)).to_proto()
    assert _types(out) == _types(src)
    onnx.checker.check_model(out, full_check=True)
    ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(model, *passes, dims=None, prove=False):
    """Checks that run the models (``prove``: structural proofs first, as by default)."""
    return Pipeline(list(passes), verify={"dims": dims or {"N": 3}, "prove": prove}).run(model)


def test_a_rename_on_a_classifier_with_seq_map_output_is_proved():
    res = _run(classifier(), RenameIO(inputs={"x": "features"}, outputs={"probabilities": "probas"}), prove=True)
    [step] = res.steps
    assert (
        res.ok and step.check is not None and [o.verdict.value for o in step.check.outputs] == ["proved (structural)"]
    )
    assert _types(res.model.proto)["probas"] == SEQ_MAP


def test_passes_on_a_classifier_with_seq_map_output():
    res = _run(
        classifier(),
        RenameIO(inputs={"x": "features"}, outputs={"probabilities": "probas"}),
        SetMetadata(metadata_props={"task": "classify"}),
        Cleanup(),
        MarkDynamic(batch="batch"),
    )
    assert res.ok, res.failures()  # the batch probe joins the sequence of maps of the single runs
    dynamic = next(s for s in res.steps if s.pass_name == "mark-dynamic")
    assert dynamic.check is not None
    probe = next(o for o in dynamic.check.outputs if o.name.startswith("probe batch=") and "probas" in o.name)
    assert probe.ok and probe.verdict.value == "ok", probe
    out = res.model.proto
    assert _types(out)["probas"] == SEQ_MAP
    assert [d.dim_param for d in out.graph.input[0].type.tensor_type.shape.dim] == ["batch", ""]
    onnx.checker.check_model(out, full_check=True)
    renamed = next(s for s in res.steps if s.pass_name == "rename-io")
    check = next(o for o in renamed.check.outputs if o.name == "probas")
    assert check.ok and "compared element-wise" in check.note and check.shape == (3,)
    # the written model runs and gives the source's maps
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    want = ort.InferenceSession(classifier().SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"x": x}
    )[0]
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["probas"], {"features": x}
    )[0]
    assert compare("p", want, got, Tolerance(0, 0)).ok


def test_passes_on_an_optional_input():
    res = _run(optional_input(), SetMetadata(metadata_props={"a": "b"}), Cleanup(), RenameIO(outputs={"y": "out"}))
    out = res.model.proto
    assert _types(out)["bias"] == _types(optional_input())["bias"]
    assert all(s.check is None or s.check.ok for s in res.steps)
    # batch names axis 0 of every input; the optional one's shape cannot be renamed: a pass refusal
    with pytest.raises(PassError, match="'bias' is an optional tensor") as err:
        _run(optional_input(), MarkDynamic(batch="batch"))
    assert err.value.exit_code != EXIT_USAGE


def test_seq_input_is_a_model_property_not_a_usage_error():
    m = classifier()
    # a model whose input is a sequence of maps: the verifier cannot feed it, and says so
    seq_in = helper.make_graph(
        [helper.make_node("SequenceLength", ["s"], ["n"])],
        "g",
        [helper.make_value_info("s", SEQ_MAP)],
        [helper.make_tensor_value_info("n", TP.INT64, [])],
    )
    m = helper.make_model(seq_in, opset_imports=[helper.make_opsetid("", 13)], ir_version=10)
    with pytest.raises(SurgeonError, match=r"seq\(map\(int64, tensor\(float\)\)\)") as err:
        _run(m, SetMetadata(metadata_props={"a": "b"}))
    assert err.value.exit_code != EXIT_USAGE


def test_compare_sequences_of_maps_element_wise():
    tol = Tolerance(1e-3, 0)
    a = [{0: 0.5, 1: 0.5}, {0: 0.25, 1: 0.75}]
    assert compare("p", a, [{0: 0.5, 1: 0.5}, {0: 0.25, 1: 0.7501}], tol).ok
    far = compare("p", a, [{0: 0.5, 1: 0.5}, {0: 0.25, 1: 0.8}], tol)
    assert not far.ok and "[1][1]" in far.note and far.max_abs == pytest.approx(0.05)
    assert "keys differ" in compare("p", a, [{0: 0.5, 1: 0.5}, {0: 0.25, 2: 0.75}], tol).note
    assert "sequence of 1, expected 2" in compare("p", a, a[:1], tol).note
    assert compare("o", None, None, tol).ok and not compare("o", None, np.zeros(2), tol).ok
