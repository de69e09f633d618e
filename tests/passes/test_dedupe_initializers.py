"""dedupe-initializers: byte-equal initializers merged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.ir.external import is_external
from surgeon.ir.model import load
from surgeon.passes.dedupe_initializers import DedupeInitializers


def _model(inits, extra_inputs=(), outputs=("y",)):
    nodes = [helper.make_node("Add", ["x", inits[0].name], ["h0"])]
    for i, t in enumerate(inits[1:], 1):
        nodes.append(helper.make_node("Add", [f"h{i - 1}", t.name], [f"h{i}"]))
    nodes.append(helper.make_node("Identity", [f"h{len(inits) - 1}"], ["y"]))
    ins = [helper.make_tensor_value_info("x", 1, ["batch", 8])] + list(extra_inputs)
    outs = [helper.make_tensor_value_info(n, 1, None) for n in outputs]
    g = helper.make_graph(nodes, "g", ins, outs, inits)
    return helper.make_model(g, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def _t(name, values):
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def _run(model, **params):
    return Pipeline([DedupeInitializers(**params)], verify={"dims": {"batch": 2}}).run(model)


def test_merges_equal_tensors():
    v = np.arange(8, dtype=np.float32)
    res = _run(_model([_t("a", v), _t("b", v), _t("c", v + 1), _t("d", v)]))
    assert res.ok and res.steps[0].modified
    g = res.model.proto.graph
    assert sorted(t.name for t in g.initializer) == ["a", "c"]
    assert [n.input[1] for n in g.node[:4]] == ["a", "a", "c", "a"]
    assert res.steps[0].notes[0] == "merged 2 duplicate initializer(s), 64 bytes"
    assert "b -> a" in res.steps[0].notes and "d -> a" in res.steps[0].notes


def test_same_bytes_other_dtype_or_shape_not_merged():
    v = np.arange(8, dtype=np.float32)
    ints = numpy_helper.from_array(v.view(np.int32), "i")
    m = _model([_t("a", v), _t("b", v + 1)])
    m.graph.initializer.append(ints)
    m.graph.node.insert(0, helper.make_node("Cast", ["i"], ["i_f"], to=1))
    m.graph.node[1].input[1] = "i_f"
    m.graph.node[1].input[0] = "x"
    res = _run(m)
    assert res.ok and not res.steps[0].modified
    assert not _run(_run(_model([_t("a", v), _t("b", v)])).model.proto).steps[0].modified


def test_inputs_with_defaults_and_min_bytes_respected():
    v = np.arange(8, dtype=np.float32)
    m = _model([_t("a", v), _t("w", v)], extra_inputs=[helper.make_tensor_value_info("w", 1, [8])])
    res = _run(m)
    assert not res.steps[0].modified
    assert not _run(_model([_t("a", v), _t("b", v)]), min_bytes=64).steps[0].modified


def test_external_tensors_hashed_from_file(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.standard_normal(8).astype(np.float32)
    m = _model([_t("a", v), _t("b", v), _t("c", -v)])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    res = _run(load(path))
    assert res.ok and res.steps[0].modified
    inits = {t.name: t for t in res.model.proto.graph.initializer}
    assert sorted(inits) == ["a", "c"] and all(is_external(t) for t in inits.values())
    assert not res.changed_tensors


def test_bad_params():
    with pytest.raises(ValidationError):
        DedupeInitializers(min_bytes=-1)
    with pytest.raises(ValidationError):
        DedupeInitializers(hash="md5")
