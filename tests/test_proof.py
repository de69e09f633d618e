"""Structural proofs (surgeon.verify.proof): steps that provably compute what their input did are
verified with no onnxruntime run; the proof compares the graphs, not what the pass says, so passes
with planted bugs (copies of real passes that also damage the graph) fail it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import surgeon.verify.session as session_mod
from surgeon.errors import VerificationError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import Model, load
from surgeon.pass_api import PassResult, get_pass
from surgeon.pipeline import Pipeline
from surgeon.verify.contract import IOContract
from surgeon.verify.proof import Prover

FLOAT = TensorProto.FLOAT


def _model(value_info: bool = True) -> onnx.ModelProto:
    """x[1,4], b[1,4] -> MatMul(w) -> Sub(b) -> Transpose -> Softmax(axis 1) -> y; a dead Relu; w
    and w_copy byte-identical (w_copy feeds a second MatMul on another output z); k differs."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w.copy(), "w_copy"),
        numpy_helper.from_array(w + 1, "k"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Sub", ["h", "b"], ["d"], name="sub"),
        helper.make_node("Transpose", ["d"], ["t"], name="tr", perm=[1, 0]),
        helper.make_node("Softmax", ["t"], ["y"], name="sm", axis=1),
        helper.make_node("Relu", ["h"], ["dead"], name="dead_relu"),
        helper.make_node("MatMul", ["x", "w_copy"], ["z0"], name="mm2"),
        helper.make_node("MatMul", ["z0", "k"], ["z"], name="mm3"),
    ]
    vi = [helper.make_tensor_value_info("h", FLOAT, [1, 4])] if value_info else []
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [1, 4]), helper.make_tensor_value_info("b", FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", FLOAT, [4, 1]), helper.make_tensor_value_info("z", FLOAT, [1, 4])],
        inits,
        value_info=vi,
    )
    graph.node[0].doc_string = "a doc string"
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def no_runtime(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if the verifier (the reference run, onnxruntime sessions) is ever built."""
    made: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        made.append("verifier")
        raise AssertionError("an onnxruntime verifier was built")

    monkeypatch.setattr(session_mod, "Verifier", refuse)
    return made


def _saved(tmp_path: Path, proto: onnx.ModelProto | None = None) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(proto or _model(), str(path))
    return path


def _pipeline(*steps: tuple[str, dict[str, Any]], **verify: Any) -> Pipeline:
    return Pipeline([get_pass(name)(params) for name, params in steps], verify={"device": "cpu", **verify})


PROVABLE = [
    ("rename-io", {"inputs": {"x": "input"}, "outputs": {"y": "probs"}}),
    ("set-metadata", {"producer_name": "me", "metadata_props": {"k": "v"}}),
    ("strip-doc", {}),
    ("cleanup", {}),
    ("dedupe-initializers", {}),
    ("remove-outputs", {"outputs": ["z"]}),
    ("add-outputs", {"tensors": ["h"]}),
    ("extract", {"inputs": ["x", "b"], "outputs": ["y"]}),
]


@pytest.mark.parametrize(("name", "params"), PROVABLE, ids=[p[0] for p in PROVABLE])
def test_interface_steps_are_proved_without_a_run(
    tmp_path: Path, no_runtime: list[str], name: str, params: dict[str, Any]
) -> None:
    result = _pipeline((name, params)).apply(_saved(tmp_path), tmp_path / "out.onnx")
    (step,) = result.steps
    assert step.modified
    assert step.verdict == "proved (structural)", step.check
    assert step.as_dict()["verdict"] == "proved (structural)"
    assert result.ok and (tmp_path / "out.onnx").is_file()
    assert no_runtime == []


def test_a_recipe_of_proved_steps_runs_no_session_and_a_rewrite_falls_back_to_execution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[int] = []
    real = session_mod.Verifier

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(session_mod, "Verifier", counting)
    steps = PROVABLE[:4]
    result = _pipeline(*steps).run(_saved(tmp_path))
    assert [s.verdict for s in result.steps] == ["proved (structural)"] * 4
    assert built == [] and result.device == ""
    # a step that rewrites a constant (promote-initializer: a weight becomes an input fed its value)
    # cannot be proved: it is verified by running the model, as without proofs
    result = _pipeline(*steps, ("promote-initializer", {"names": ["k"]})).run(_saved(tmp_path))
    assert [s.verdict for s in result.steps] == ["proved (structural)"] * 4 + ["ok"]
    assert built == [1]
    assert result.steps[-1].check is not None and result.steps[-1].check.outputs[0].kind == "output"


def test_prove_false_runs_every_step(tmp_path: Path) -> None:
    result = _pipeline(PROVABLE[0], prove=False).run(_saved(tmp_path))
    assert result.steps[0].verdict == "ok"


# --- passes with planted bugs: copies of real passes that also damage the graph ----------------


def _run_buggy(pass_name: str, params: dict[str, Any], damage: Any, proto: onnx.ModelProto | None = None) -> Any:
    """Run the real pass, then ``damage(ir)`` (the planted bug); prove the result."""
    source = load(proto or _model())
    ir = ModelIR.from_model(source)
    p = get_pass(pass_name)(params)
    result: PassResult = p(ir)
    damage(ir)
    return Prover().prove(source, ir.to_model(), result.contract)


def _node(ir: ModelIR, name: str) -> Any:
    return next(n for n in ir.graph.nodes if n.name == name)


def test_rename_that_swaps_two_node_inputs_is_not_proved() -> None:
    def swap(ir: ModelIR) -> None:
        sub = _node(ir, "sub")
        sub.inputs[0], sub.inputs[1] = sub.inputs[1], sub.inputs[0]

    ok = _run_buggy("rename-io", {"inputs": {"x": "input"}}, lambda ir: None)
    assert ok.proved, ok.reason
    bad = _run_buggy("rename-io", {"inputs": {"x": "input"}}, swap)
    assert not bad.proved and "output 'y' is computed differently" in bad.reason


def test_rename_that_changes_an_attribute_or_swaps_outputs_is_not_proved() -> None:
    def perm(ir: ModelIR) -> None:
        _node(ir, "sm").attrs["axis"] = 0

    def order(ir: ModelIR) -> None:
        ir.graph.outputs.reverse()

    assert not _run_buggy("rename-io", {"outputs": {"y": "probs"}}, perm).proved
    swapped = _run_buggy("rename-io", {"outputs": {"y": "probs"}}, order)
    assert not swapped.proved and "order" in swapped.reason


def test_dedupe_that_merges_different_tensors_is_not_proved() -> None:
    def merge_k(ir: ModelIR) -> None:  # k is w + 1: not the same bytes
        mm3, mm = _node(ir, "mm3"), _node(ir, "mm")
        mm3.inputs[1] = mm.inputs[1]

    ok = _run_buggy("dedupe-initializers", {}, lambda ir: None)
    assert ok.proved, ok.reason
    bad = _run_buggy("dedupe-initializers", {}, merge_k)
    assert not bad.proved and "'z'" in bad.reason


def test_cleanup_that_drops_a_needed_node_is_not_proved() -> None:
    def drop(ir: ModelIR) -> None:  # drop the Transpose, wire its input to the Softmax
        tr, sm = _node(ir, "tr"), _node(ir, "sm")
        sm.inputs[0] = tr.inputs[0]
        tr.outputs.clear()
        ir.graph.cleanup()

    ok = _run_buggy("cleanup", {}, lambda ir: None)
    assert ok.proved, ok.reason
    assert not _run_buggy("cleanup", {}, drop).proved


def test_a_declaration_saying_more_than_before_is_not_proved() -> None:
    def shape(ir: ModelIR) -> None:  # an intermediate gets a static shape onnxruntime could fold
        ir.graph.tensors()["d"].shape = [1, 4]
        ir.graph.tensors()["d"].dtype = np.float32

    bad = _run_buggy("rename-io", {"inputs": {"x": "input"}}, shape)
    assert not bad.proved and "declared" in bad.reason
    # the same declaration present before is fine
    proto = _model()
    proto.graph.value_info.append(helper.make_tensor_value_info("d", FLOAT, [1, 4]))
    assert _run_buggy("rename-io", {"inputs": {"x": "input"}}, shape, proto).proved


def test_contract_name_mapping_must_match_the_graph() -> None:
    """A pass that renames but declares another mapping (or none) is not proved: names are
    mapped through the contract, never guessed."""
    source = load(_model())
    ir = ModelIR.from_model(source)
    get_pass("rename-io")({"inputs": {"x": "input", "b": "bias"}})(ir)
    after = ir.to_model()
    prover = Prover()
    assert prover.prove(source, after, IOContract(renamed_inputs={"x": "input", "b": "bias"})).proved
    assert not prover.prove(source, after, IOContract(renamed_inputs={"x": "bias", "b": "input"})).proved
    assert not prover.prove(source, after, IOContract()).proved


def test_opset_and_random_ops_are_not_proved() -> None:
    def opset(ir: ModelIR) -> None:
        ir.graph.opset = 18

    assert "opset" in _run_buggy("rename-io", {"inputs": {"x": "input"}}, opset).reason
    graph = helper.make_graph(
        [
            helper.make_node("RandomNormalLike", ["x"], ["r"]),
            helper.make_node("Add", ["x", "r"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [2])],
        [helper.make_tensor_value_info("y", FLOAT, [2])],
    )
    proto = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    proof = _run_buggy("rename-io", {"inputs": {"x": "input"}}, lambda ir: None, proto)
    assert not proof.proved and "random" in proof.reason


def _if_model(then_out: str) -> onnx.ModelProto:
    """y = If(c) then (a captured: x + 1 or x - 1 on ``then_out``) else x."""
    one = numpy_helper.from_array(np.array([1.0], np.float32), "one")
    then = helper.make_graph(
        [helper.make_node(then_out, ["x", "one"], ["t"])], "then", [], [helper.make_tensor_value_info("t", FLOAT, [2])]
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", FLOAT, [2])]
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [2]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", FLOAT, [2])],
        [one],
    )
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def test_subgraphs_are_compared_recursively_with_their_captures() -> None:
    source = load(_if_model("Add"))
    contract = IOContract(renamed_inputs={"x": "input"})
    renamed = ModelIR.from_model(source)
    get_pass("rename-io")({"inputs": {"x": "input"}})(renamed)
    prover = Prover()
    assert prover.prove(source, renamed.to_model(), contract).proved  # the capture followed the rename
    changed = _if_model("Sub")
    changed.graph.input[0].name = "input"
    changed.graph.node[0].attribute[0].g.node[0].input[0] = "input"
    changed.graph.node[0].attribute[1].g.node[0].input[0] = "input"
    assert not prover.prove(source, Model(changed), contract).proved


def test_external_weights_are_compared_by_location_or_hashed_never_loaded(tmp_path: Path) -> None:
    proto = _model()
    onnx.save(
        proto,
        str(tmp_path / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.data",
        size_threshold=0,
    )
    source = load(tmp_path / "m.onnx")
    assert source.uses_external_data
    ir = ModelIR.from_model(source)
    result = get_pass("rename-io")({"inputs": {"x": "input"}})(ir)
    after = ir.to_model()
    assert Prover().prove(source, after, result.contract).proved
    # the same weights inline: their hashes are compared with the data file's byte ranges
    inline = onnx.load(str(tmp_path / "m.onnx"))  # loads the external data
    inline.graph.input[0].name = "input"
    for n in inline.graph.node:
        n.input[:] = ["input" if i == "x" else i for i in n.input]
    assert Prover().prove(source, Model(inline), result.contract).proved
    inline.graph.initializer[2].raw_data = np.zeros((4, 4), np.float32).tobytes()  # k changed
    assert not Prover().prove(source, Model(inline), result.contract).proved


# --- verify.mode: proof --------------------------------------------------------------------------


def test_proof_mode_refuses_a_step_it_cannot_prove_and_writes_nothing(tmp_path: Path, no_runtime: list[str]) -> None:
    out = tmp_path / "out.onnx"
    pipeline = _pipeline(PROVABLE[0], ("promote-initializer", {"names": ["k"]}), mode="proof")
    with pytest.raises(VerificationError) as err:
        pipeline.apply(_saved(tmp_path), out)
    assert "not proved structurally" in str(err.value) and "passes[1]" in str(err.value)
    assert not out.exists() and no_runtime == []
    result = _pipeline(*PROVABLE[:5], mode="proof").apply(_saved(tmp_path), out)
    assert result.ok and out.is_file() and no_runtime == []
    assert all(s.verdict == "proved (structural)" for s in result.steps if s.modified)


def test_proof_mode_from_the_command_line(tmp_path: Path, no_runtime: list[str]) -> None:
    from surgeon.cli import main

    model = _saved(tmp_path)
    report = tmp_path / "r.json"
    code = main(
        [
            "run",
            "rename-io",
            str(model),
            "-o",
            str(tmp_path / "o.onnx"),
            "--proof-only",
            "--set",
            "inputs={x: input}",
            "--report",
            str(report),
            "-q",
        ]
    )
    assert code == 0
    data = json.loads(report.read_text())
    steps = data.get("steps") or data["result"]["steps"]
    assert steps[0]["verdict"] == "proved (structural)"


def test_fix_dims_binds_the_symbol_outputs_declare() -> None:
    """fix-dims makes N a size and the output's declaration follows: the declaration before said
    the output has N rows, so at N=2 it has 2. A size no symbol before gave is not proved."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 4])],
        [w],
    )
    proto = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    assert _run_buggy("fix-dims", {"dims": {"N": 2}}, lambda ir: None, proto).proved

    def wrong(ir: ModelIR) -> None:
        ir.graph.outputs[0].shape = [3, 4]

    assert not _run_buggy("fix-dims", {"dims": {"N": 2}}, wrong, proto).proved


# --- the fast proof: graphs compared node for node, names found in the serialized bytes ----------


def _fan_model(weight: bytes = b"") -> onnx.ModelProto:
    """x -> Relu -> a, x -> Neg -> b, Add(a, b) + w -> y; ``w``'s bytes may be chosen (a weight
    that holds a name's bytes by chance)."""
    raw = (weight + bytes(16))[:16]
    w = onnx.TensorProto(name="w", data_type=FLOAT, dims=[4], raw_data=raw)
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["a"], name="relu"),
            helper.make_node("Neg", ["x"], ["b"], name="neg", doc_string="negates"),
            helper.make_node("Add", ["a", "b"], ["s"], name="add"),
            helper.make_node("Add", ["s", "w"], ["y"], name="bias"),
        ],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [4])],
        [helper.make_tensor_value_info("y", FLOAT, [4])],
        [w],
    )
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def _lazy_step(proto: onnx.ModelProto, pass_name: str, params: dict[str, Any], damage: Any = None) -> Any:
    """The real pass on the protobuf (no graph built), then ``damage(graph_proto)``; the proof."""
    source = load(proto)
    ir = ModelIR.from_model(source, lazy=True)
    result: PassResult = get_pass(pass_name)(params)(ir)
    assert not ir.built
    if damage is not None:
        damage(ir.proto_graph)
    return Prover().prove(source, ir.to_model(), result.contract)


def test_a_protobuf_rename_and_strip_doc_are_proved_node_for_node() -> None:
    proof = _lazy_step(_fan_model(), "rename-io", {"inputs": {"x": "input"}, "outputs": {"y": "output"}})
    assert proof.proved and "equal in order" in proof.reason
    proof = _lazy_step(_fan_model(), "strip-doc", {})
    assert proof.proved, proof.reason


def test_a_rename_that_misses_a_consumer_is_not_proved() -> None:
    def miss(g: onnx.GraphProto) -> None:  # the Neg still reads the old name
        g.node[1].input[0] = "x"

    proof = _lazy_step(_fan_model(), "rename-io", {"inputs": {"x": "input"}}, miss)
    assert not proof.proved and "'x'" in proof.reason


def test_a_rename_onto_a_name_the_graph_has_is_not_proved() -> None:
    """The pass says y became s, which the graph already computes: two values of one name."""
    source = load(_fan_model())
    after = load(_fan_model())
    after.proto.graph.node[3].output[0] = "s"
    after.proto.graph.output[0].name = "s"
    proof = Prover().prove(source, after, IOContract(renamed_outputs={"y": "s"}))
    assert not proof.proved and "defined twice" in proof.reason


def test_weights_that_hold_a_names_bytes_neither_hide_nor_fake_a_proof() -> None:
    """A weight whose bytes are what protobuf writes for a node input named 'x' (0x0a 0x01 'x') and
    an output named 'x' (0x12 0x01 'x'): the rename is still proved, and a consumer the rename
    missed is still caught."""
    weight = b"\x0a\x01x\x12\x01x\x42\x01x"
    proof = _lazy_step(_fan_model(weight), "rename-io", {"inputs": {"x": "input"}})
    assert proof.proved and "equal in order" in proof.reason

    def miss(g: onnx.GraphProto) -> None:
        g.node[0].input[0] = "x"

    assert not _lazy_step(_fan_model(weight), "rename-io", {"inputs": {"x": "input"}}, miss).proved


def test_a_rename_onto_a_weights_name_is_not_proved() -> None:
    """x renamed to w, the name of a weight: the input and the weight become one name (an input
    with a default), not the same computation, though every node reads the names it did."""
    source = load(_fan_model())
    after = load(_fan_model())
    g = after.proto.graph
    g.input[0].name = "w"
    g.node[0].input[0] = g.node[1].input[0] = "w"
    proof = Prover().prove(source, after, IOContract(renamed_inputs={"x": "w"}))
    assert not proof.proved


def test_contracts_compose_renames_removals_and_additions() -> None:
    from surgeon.verify.proof import compose

    c = compose(
        [
            IOContract(renamed_inputs={"x": "a"}, renamed_outputs={"y": "p"}),
            IOContract(renamed_inputs={"a": "b"}, added_outputs={"h"}),
            IOContract(renamed_outputs={"h": "hidden", "p": "q"}, removed_outputs={"z"}),
            IOContract(removed_inputs={"b"}, removed_outputs={"hidden"}, added_outputs={"z"}),
        ]
    )
    assert c is not None
    assert c.renamed_inputs == {} and c.removed_inputs == {"x"}
    assert c.renamed_outputs == {"y": "q"} and c.removed_outputs == {"z"} and c.added_outputs == {"z"}
    assert compose([IOContract(renamed_inputs={"x": "a"}), IOContract(changed_types={"a"})]) is None
