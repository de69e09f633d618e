"""Big graphs: passes that touch only the interface, metadata or dead nodes work on the protobuf,
and the onnx-graphsurgeon graph is imported only when a pass needs it (once per recipe)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon.pass_api import get_pass
from surgeon.pipeline import Pipeline

FLOAT = TensorProto.FLOAT


def _if_model() -> onnx.ModelProto:
    """y = If(c) then x + one (``one`` an outer initializer only the branch reads) else x; a dead
    Neg in the main graph and one in the branch; an unused initializer."""
    then = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["t"]), helper.make_node("Neg", ["x"], ["t_dead"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", FLOAT, [2])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", FLOAT, [2])]
    )
    graph = helper.make_graph(
        [
            helper.make_node("Neg", ["x"], ["dead"], name="dead"),
            helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="if"),
        ],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [2]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", FLOAT, [2])],
        [
            numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "one"),
            numpy_helper.from_array(np.zeros(3, np.float32), "unused"),
        ],
        value_info=[helper.make_tensor_value_info("dead", FLOAT, [2])],
    )
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def no_import(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("onnx-graphsurgeon imported the graph")

    monkeypatch.setattr(gs, "import_onnx", refuse)


STEPS = [
    ("rename-io", {"inputs": {"x": "input"}, "outputs": {"y": "output"}}),
    ("set-metadata", {"producer_name": "me"}),
    ("strip-doc", {"metadata": True}),
    ("cleanup", {}),
]


def test_interface_passes_and_cleanup_never_build_the_graph(no_import: None) -> None:
    res = Pipeline([get_pass(n)(p) for n, p in STEPS], verify={"mode": "off"}).run(_if_model())
    g = res.model.proto.graph
    assert [i.name for i in g.input] == ["input", "c"] and [o.name for o in g.output] == ["output"]
    assert [n.op_type for n in g.node] == ["If"] and [t.name for t in g.initializer] == ["one"]
    then = next(a.g for a in g.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in then.node] == ["Add"] and list(then.node[0].input) == ["input", "one"]
    assert not g.value_info and res.model.proto.producer_name == "me"
    assert [s.modified for s in res.steps] == [True, True, False, True]


def test_proto_cleanup_computes_what_the_source_did() -> None:
    """Proved structurally, and by a run (the branch's capture of ``one`` kept)."""
    for prove in (True, False):
        res = Pipeline([get_pass("cleanup")()], verify={"device": "cpu", "prove": prove}).run(_if_model())
        assert res.ok and res.steps[0].verdict == ("proved (structural)" if prove else "ok")


def test_a_pass_that_needs_the_graph_imports_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = gs.import_onnx

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(gs, "import_onnx", counting)
    steps = [*STEPS[:2], ("dedupe-initializers", {}), ("remove-outputs", {"outputs": ["gone"], "missing_ok": True})]
    res = Pipeline([get_pass(n)(p) for n, p in steps], verify={"mode": "off"}).run(_if_model())
    assert calls == [1] and [o.name for o in res.model.proto.graph.output] == ["output"]


def test_with_verification_off_the_graph_is_exported_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Imported once, exported once per recipe (the save's), however many passes edit it."""
    counts = {"import": 0, "export": 0}
    real_import, real_export = gs.import_onnx, gs.export_onnx

    def importing(*args: Any, **kwargs: Any) -> Any:
        counts["import"] += 1
        return real_import(*args, **kwargs)

    def exporting(*args: Any, **kwargs: Any) -> Any:
        counts["export"] += 1
        return real_export(*args, **kwargs)

    monkeypatch.setattr(gs, "import_onnx", importing)
    monkeypatch.setattr(gs, "export_onnx", exporting)
    steps = [*STEPS[:2], ("dedupe-initializers", {}), ("cleanup", {}), ("strip-doc", {})]
    res = Pipeline([get_pass(n)(p) for n, p in steps], verify={"mode": "off"}).apply(_if_model(), tmp_path / "o.onnx")
    assert counts == {"import": 1, "export": 1}, counts
    assert (tmp_path / "o.onnx").exists() and [o.name for o in res.model.proto.graph.output] == ["output"]


@pytest.mark.slow
def test_bench_graph_and_bench_large_proofs_run_end_to_end(tmp_path: Any) -> None:
    """Both issue-21 benchmarks at a tiny size (no timing assertions)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    out = tmp_path / "g.json"
    cmd = [sys.executable, str(bench / "bench_graph.py"), "--nodes", "300", "--shapes", "chain", "--json", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    [result] = json.loads(out.read_text())
    assert [r["name"] for r in result["rows"]][:2] == ["floor", "graphsurgeon"] and len(result["targets"]) == 5
    assert result["rows"][-1]["name"] == "ort default"  # 300 nodes: surgeon runs the default-level session
    out = tmp_path / "l.json"
    cmd = [sys.executable, str(bench / "bench_large.py"), "--proofs", "--size-mb", "2", "--layers", "4"]
    res = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1), res.stdout + res.stderr  # 1: a timing target missed on a busy machine
    [result] = json.loads(out.read_text())
    assert [r["rc"] for r in result["rows"]] == [0, 0]


def test_remove_outputs_prunes_on_the_protobuf(no_import: None) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["y"]),
            helper.make_node("Mul", ["x", "k"], ["aux0"]),
            helper.make_node("Neg", ["aux0"], ["aux"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [2])],
        [helper.make_tensor_value_info("y", FLOAT, [2]), helper.make_tensor_value_info("aux", FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "k")],
    )
    proto = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    res = Pipeline([get_pass("remove-outputs")({"outputs": ["aux"]})], verify={"mode": "off"}).run(proto)
    g = res.model.proto.graph
    assert [o.name for o in g.output] == ["y"] and [n.op_type for n in g.node] == ["Relu"] and not g.initializer
    assert res.steps[0].notes[-1] == "pruned 2 node(s) and 1 initializer(s) no output needs"


def test_proved_steps_on_the_protobuf_copy_no_graph(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Each step of an interface recipe is proved on the working model itself (from the source,
    through the steps' contracts composed): no copy of the graph per step, and the saved model is
    the working one handed over (one copy in all: the working copy of the source)."""
    from surgeon.ir.adapter import ModelIR

    copies: list[bool] = []
    real = ModelIR.to_proto

    def counted(self: ModelIR, final: bool = False) -> onnx.ModelProto:
        copies.append(final)
        return real(self, final)

    monkeypatch.setattr(ModelIR, "to_proto", counted)
    src = tmp_path / "m.onnx"
    onnx.save(_if_model(), str(src))
    steps = [*STEPS, ("cleanup", {})]
    result = Pipeline([get_pass(n)(p) for n, p in steps], verify={"device": "cpu"}).apply(src, tmp_path / "o.onnx")
    assert result.ok
    verdicts = [s.verdict for s in result.steps if s.modified]
    assert len(verdicts) >= 3 and set(verdicts) == {"proved (structural)"}
    assert False not in copies  # no snapshot: at most the final hand-over of the working message
    out = onnx.load(str(tmp_path / "o.onnx"))
    assert [i.name for i in out.graph.input] == ["input", "c"] and out.producer_name == "me"
    assert "dead" not in [n.name for n in out.graph.node]


def test_a_planted_bug_after_proved_steps_is_caught_on_the_working_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """After two steps proved on the working model, a strip-doc that also swaps the If's branches
    is not proved (the proof from the source, through the composed contracts, sees it): it is
    run, fails, and nothing is written; the failure is localized from a model that passed, not
    from the working model the bad step edited."""
    import surgeon.passes.strip_doc as strip_doc

    real = strip_doc.StripDoc._run_proto

    def damaged(self: Any, model: Any) -> Any:
        res = real(self, model)
        node = next(n for n in model.proto_graph.node if n.op_type == "If")
        a, b = node.attribute
        ga, gb = onnx.GraphProto(), onnx.GraphProto()
        ga.CopyFrom(a.g)
        gb.CopyFrom(b.g)
        a.g.CopyFrom(gb)
        b.g.CopyFrom(ga)
        return res

    monkeypatch.setattr(strip_doc.StripDoc, "_run_proto", damaged)
    src = tmp_path / "m.onnx"
    model = _if_model()
    model.graph.node[0].doc_string = "a doc string strip-doc removes"
    onnx.save(model, str(src))
    pipeline = Pipeline([get_pass(n)(p) for n, p in STEPS], verify={"device": "cpu", "mode": "proof"})
    result = pipeline.run(str(src))
    verdicts = [s.verdict for s in result.steps]
    assert verdicts[:2] == ["proved (structural)"] * 2 and verdicts[2] == "FAIL"
    pipeline = Pipeline([get_pass(n)(p) for n, p in STEPS], verify={"device": "cpu", "dims": {}})
    with pytest.raises(Exception, match="verification failed"):
        pipeline.apply(src, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()
    result = pipeline.run(str(src))
    bad = result.steps[2]
    assert bad.verdict == "FAIL" and bad.check is not None and bad.check.divergence is not None


def test_the_passes_that_edit_the_protobuf_say_so_and_build_no_graph(no_import: None) -> None:
    """``edits_protobuf`` (the pipeline keeps no copy of the model for such a pass) is said by the
    passes that work on the protobuf, and by no other built-in pass."""
    from surgeon.pass_api import registry

    declared = {
        name for name, cls in registry().items() if cls.edits_protobuf and cls.__module__.startswith("surgeon.")
    }
    assert declared == {"rename-io", "set-metadata", "strip-doc", "cleanup", "remove-outputs"}
    # (each runs without an import: test_interface_passes_and_cleanup_never_build_the_graph and
    # test_remove_outputs_prunes_on_the_protobuf)
