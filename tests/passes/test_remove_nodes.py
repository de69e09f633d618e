"""remove-nodes: bypass pass-through nodes."""

from __future__ import annotations

import onnx
import pytest
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError
from surgeon.passes.remove_nodes import RemoveNodes

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'
MODEL = (
    HEADER
    + """
g (float[2, 4] x) => (float[2, 4] y, float[2, 4] z) <int64[2] shp = {2, 4}, int64[2] other = {4, 2}>
{
  [id1] a = Identity(x)
  [drop] b = Dropout(a)
  [relu] c = Relu(b)
  [cast] d = Cast<to=1>(c)
  [resh] e = Reshape(d, shp)
  [id2] y = Identity(e)
  [id3] z = Identity(x)
}"""
)


def _run(model, **params):
    return Pipeline([RemoveNodes(**params)]).run(onnx.parser.parse_model(model) if isinstance(model, str) else model)


def _nodes(res):
    return [(n.name, n.op_type, list(n.input), list(n.output)) for n in res.model.proto.graph.node]


def test_default_removes_identity_and_dropout_keeps_output_names():
    res = _run(MODEL)
    assert res.ok and res.steps[0].modified
    assert _nodes(res) == [
        ("relu", "Relu", ["x"], ["c"]),
        ("cast", "Cast", ["c"], ["d"]),
        ("resh", "Reshape", ["d", "shp"], ["y"]),
        ("id3", "Identity", ["x"], ["z"]),
    ]
    notes = res.steps[0].notes
    assert "removed Identity 'id1' (x -> a)" in notes
    assert "removed Identity 'id2' (e -> y)" in notes
    assert any(n.startswith("kept Identity 'id3'") for n in notes)


def test_noop_cast_and_reshape():
    res = _run(MODEL, ops=["Cast", "Reshape"])
    assert res.ok
    assert [n[1] for n in _nodes(res)] == ["Identity", "Dropout", "Relu", "Identity", "Identity"]
    changing = MODEL.replace("Reshape(d, shp)", "Reshape(d, other)").replace("float[2, 4] y", "float[4, 2] y")
    res = _run(changing, ops=["Reshape"])
    assert not res.steps[0].modified


def test_by_name_and_refusals():
    res = _run(MODEL, ops=[], names=["cast"])
    assert [n[0] for n in _nodes(res)] == ["id1", "drop", "relu", "resh", "id2", "id3"]
    with pytest.raises(PassPreconditionError, match="unknown node 'rleu'; did you mean 'relu'"):
        _run(MODEL, names=["rleu"])
    with pytest.raises(PassPreconditionError, match="node 'relu' \\(Relu\\) cannot be removed"):
        _run(MODEL, names=["relu"])
    training = MODEL.replace("Dropout(a)", "Dropout(a, ratio, train)").replace(
        "<int64[2] shp", "<float ratio = {0.5}, bool train = {1}, int64[2] shp"
    )
    with pytest.raises(PassPreconditionError, match="training_mode"):
        _run(training, names=["drop"])


def test_nothing_to_remove_is_untouched():
    m = HEADER + "g (float[2, 4] x) => (float[2, 4] y) { y = Relu(x) }"
    res = _run(m)
    assert res.ok and not res.steps[0].modified
    once = _run(MODEL).model.proto
    assert not _run(once).steps[0].modified


def test_bad_params():
    with pytest.raises(ValidationError):
        RemoveNodes(ops=["Relu"])
    with pytest.raises(ValidationError):
        RemoveNodes(nodes=["a"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_export_dropout_identity():
    import io

    import torch

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Identity(), torch.nn.ReLU()).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.randn(2, 4),),
        buf,
        dynamo=False,
        opset_version=17,
        do_constant_folding=False,
        keep_initializers_as_inputs=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        input_names=["x"],
        output_names=["y"],
    )
    m = onnx.load_from_string(buf.getvalue())
    m.ir_version = 10
    res = _run(m)
    assert res.ok
    assert "Dropout" not in [n[1] for n in _nodes(res)]
