"""remove-outputs: outputs dropped, nodes only they needed pruned, the rest verified."""

from __future__ import annotations

import onnx
import pytest
from onnx import parser
from pydantic import ValidationError

from surgeon import Pipeline
from surgeon.errors import PassPreconditionError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import load
from surgeon.passes.add_outputs import AddOutputs
from surgeon.passes.remove_outputs import RemoveOutputs

TEXT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y, float[N, 4] aux, float[N, 4] h) <float[4] b = {1.0, 2.0, 3.0, 4.0}> {
  h = Relu(x)
  y = Sigmoid(h)
  t = Add(h, b)
  aux = Neg(t)
}"""


def _run(model: object, *passes: object):
    return Pipeline(list(passes), verify={"dims": {"N": 2}, "device": "cpu"}).run(model)  # type: ignore[arg-type]


def test_removes_outputs_and_prunes_what_only_they_needed() -> None:
    res = _run(parser.parse_model(TEXT), RemoveOutputs(outputs=["aux", "h"]))
    assert res.ok and res.steps[0].modified
    g = res.model.proto.graph
    assert [o.name for o in g.output] == ["y"]
    assert [n.op_type for n in g.node] == ["Relu", "Sigmoid"]
    assert not g.initializer
    assert res.steps[0].verdict == "proved (structural)"  # the kept output is computed as before
    assert res.steps[0].notes == [
        "removed output aux",
        "removed output h",
        "pruned 2 node(s) and 1 initializer(s) no output needs",
    ]


def test_without_prune_nodes_stay() -> None:
    res = _run(parser.parse_model(TEXT), RemoveOutputs(outputs=["aux"], prune=False))
    assert res.ok
    assert [n.op_type for n in res.model.proto.graph.node] == ["Relu", "Sigmoid", "Add", "Neg"]
    assert [o.name for o in res.model.proto.graph.output] == ["y", "h"]


def test_undoes_add_outputs() -> None:
    res = _run(
        parser.parse_model(TEXT),
        RemoveOutputs(outputs=["aux", "h"]),
        AddOutputs(tensors=["h"]),
        RemoveOutputs(outputs=["h"]),
    )
    assert res.ok and [o.name for o in res.model.proto.graph.output] == ["y"]
    assert [n.op_type for n in res.model.proto.graph.node] == ["Relu", "Sigmoid"]


def test_missing_output_is_an_error_or_skipped_with_missing_ok() -> None:
    ir = ModelIR.from_model(load(parser.parse_model(TEXT)))
    with pytest.raises(
        PassPreconditionError, match=r"unknown output 'auxx'; did you mean 'aux'\?; graph outputs are: y, aux, h"
    ) as err:
        RemoveOutputs(outputs=["auxx"]).requires(ir)
    assert err.value.field == ("outputs", "auxx")
    res = _run(parser.parse_model(TEXT), RemoveOutputs(outputs=["t"], missing_ok=True))
    assert res.steps[0].modified is False and res.steps[0].check is None
    assert [o.name for o in res.model.proto.graph.output] == ["y", "aux", "h"]
    twice = _run(
        parser.parse_model(TEXT), RemoveOutputs(outputs=["aux"]), RemoveOutputs(outputs=["aux"], missing_ok=True)
    )
    assert [s.modified for s in twice.steps] == [True, False]


def test_removing_every_output_is_refused() -> None:
    ir = ModelIR.from_model(load(parser.parse_model(TEXT)))
    with pytest.raises(
        PassPreconditionError, match="would leave the model without outputs; graph outputs are: y, aux, h"
    ):
        RemoveOutputs(outputs=["y", "aux", "h"]).requires(ir)


def test_bad_params() -> None:
    with pytest.raises(ValidationError, match="at least 1"):
        RemoveOutputs(outputs=[])
    with pytest.raises(ValidationError):
        RemoveOutputs()
    with pytest.raises(ValidationError, match="extra"):
        RemoveOutputs(outputs=["y"], keep=["h"])


def test_result_passes_the_checker() -> None:
    res = _run(parser.parse_model(TEXT), RemoveOutputs(outputs=["y"]))
    onnx.checker.check_model(res.model.proto, full_check=True)
    assert [o.name for o in res.model.proto.graph.output] == ["aux", "h"]
