"""set-metadata: producer, model version, domain, doc string, metadata_props."""

from __future__ import annotations

import onnx
import pytest
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError
from surgeon.passes.set_metadata import SetMetadata

TEXT = (
    '<ir_version: 10, opset_import: ["" : 17], producer_name: "pytorch"> '
    "g (float[batch, 4] x) => (float[batch, 4] y) { y = Relu(x) }"
)


def _model():
    m = onnx.parser.parse_model(TEXT)
    m.metadata_props.add(key="old", value="1")
    m.metadata_props.add(key="keep", value="2")
    return m


def _run(model, **params):
    return Pipeline([SetMetadata(**params)], verify={"dims": {"batch": 2}}).run(model)


def test_sets_fields_and_props():
    res = _run(
        _model(),
        producer_name="acme",
        producer_version="2.1",
        model_version=3,
        domain="com.acme",
        doc_string="detector",
        metadata_props={"license": "MIT", "keep": "3"},
        remove_props=["old"],
    )
    assert res.ok and res.steps[0].modified
    p = res.model.proto
    assert (p.producer_name, p.producer_version, p.model_version, p.domain, p.doc_string) == (
        "acme",
        "2.1",
        3,
        "com.acme",
        "detector",
    )
    assert [(q.key, q.value) for q in p.metadata_props] == [("keep", "3"), ("license", "MIT")]
    assert "producer_name: 'pytorch' -> 'acme'" in res.steps[0].notes


def test_same_values_untouched():
    res = _run(_model(), producer_name="pytorch", metadata_props={"keep": "2"})
    assert res.ok and not res.steps[0].modified
    assert not _run(_model()).steps[0].modified


def test_preconditions_and_bad_params():
    with pytest.raises(PassPreconditionError, match="no metadata_props key 'nope' to remove; the model has: old, keep"):
        _run(_model(), remove_props=["nope"])
    with pytest.raises(PassPreconditionError, match="reserved"):
        _run(_model(), metadata_props={"surgeon.recipe": "x"})
    with pytest.raises(ValidationError):
        SetMetadata(model_version=-1)
    with pytest.raises(ValidationError):
        SetMetadata(producer="x")
