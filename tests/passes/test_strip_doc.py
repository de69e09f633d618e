"""strip-doc: doc strings (and optionally metadata_props) removed everywhere."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.passes.strip_doc import StripDoc


def _model():
    x = helper.make_tensor_value_info("x", 1, ["batch", 4], doc_string="the input")
    y = helper.make_tensor_value_info("y", 1, ["batch", 4])
    relu = helper.make_node("Relu", ["x"], ["h"], name="relu", doc_string="File model.py, line 3")
    relu.metadata_props.add(key="pkg.torch.stack", value="Net/ReLU")
    neg = helper.make_node("Neg", ["h"], ["y"], name="neg")
    neg.metadata_props.add(key="pkg.torch.stack", value="Net/Neg")
    g = helper.make_graph([relu, neg], "g", [x], [y], doc_string="graph doc")
    g.metadata_props.add(key="graph.key", value="v")
    m = helper.make_model(g, ir_version=10, opset_imports=[helper.make_opsetid("", 17)], doc_string="model doc")
    m.metadata_props.add(key="author", value="me")
    return m


def _run(model, **params):
    return Pipeline([StripDoc(**params)], verify={"dims": {"batch": 2}}).run(model)


def test_strips_every_doc_string_keeps_metadata():
    res = _run(_model())
    assert res.ok and res.steps[0].modified
    p = res.model.proto
    assert p.doc_string == "" and p.graph.doc_string == "" and p.graph.input[0].doc_string == ""
    assert [n.doc_string for n in p.graph.node] == ["", ""]
    assert [(q.key, q.value) for q in p.graph.node[0].metadata_props] == [("pkg.torch.stack", "Net/ReLU")]
    assert [(q.key, q.value) for q in p.graph.metadata_props] == [("graph.key", "v")]
    assert [(q.key, q.value) for q in p.metadata_props] == [("author", "me")]


def test_metadata_option_clears_node_and_graph_props():
    res = _run(_model(), metadata=True)
    assert res.ok
    p = res.model.proto
    assert all(len(n.metadata_props) == 0 for n in p.graph.node)
    assert len(p.graph.metadata_props) == 0
    assert [(q.key, q.value) for q in p.metadata_props] == [("author", "me")]  # model level: set-metadata's job


def test_doc_free_model_untouched_and_idempotent():
    m = onnx.parser.parse_model(
        '<ir_version: 10, opset_import: ["" : 17]> g (float[batch, 4] x) => (float[batch, 4] y) { y = Relu(x) }'
    )
    assert not _run(m).steps[0].modified
    assert not _run(_run(_model()).model.proto).steps[0].modified


def test_bad_params():
    with pytest.raises(ValidationError):
        StripDoc(docs=False)
    with pytest.raises(ValidationError):
        StripDoc(metadata="sometimes")


@pytest.mark.parametrize("metadata", [False, True])
def test_on_a_built_graph_modified_says_whether_anything_was_removed(metadata: bool) -> None:
    """After a pass that builds the graph (dedupe-initializers), strip-doc tells what it removed
    without exporting the graph to compare (two exports of a big graph cost seconds): a model with
    doc strings is modified and comes out without them; run again, it is left unchanged."""
    from surgeon.passes.dedupe_initializers import DedupeInitializers

    def run(model: onnx.ModelProto):  # type: ignore[no-untyped-def]
        steps = [DedupeInitializers(), StripDoc(metadata=metadata)]
        return Pipeline(steps, verify={"dims": {"batch": 2}}).run(model)

    first = run(_model())
    assert first.steps[1].modified and first.ok
    out = first.model.proto
    assert not out.doc_string and not out.graph.doc_string and not out.graph.input[0].doc_string
    assert not any(n.doc_string for n in out.graph.node)
    assert any(len(n.metadata_props) for n in out.graph.node) != metadata
    again = run(out)
    assert not again.steps[1].modified, again.steps[1].notes
    bare = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", 1, ["batch", 4])],
        [helper.make_tensor_value_info("y", 1, ["batch", 4])],
    )
    plain = helper.make_model(bare, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    assert not run(plain).steps[1].modified
