"""to-fp16 with a budget: what its report says (the FLOPs fraction in half precision, the Cast
count) checked against the converted model itself, no cancelling Cast pair left behind, shape
arithmetic kept in its types, and attribution that lands on one Softmax."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from surgeon.passes import to_fp16
from tests.test_fp16_budget import _apply, _kept, _model, _run, _within

F, F16, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64
BUDGET = {"rtol": 1e-2, "atol": 1e-2}


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor's element type, as the model declares it or shape inference finds it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _to(node: onnx.NodeProto) -> int:
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == "to")


# 1. the half-precision fraction of estimated FLOPs -----------------------------------------------

M, K, N, P = 4, 32, 64, 16


def _two_matmuls(big: float) -> onnx.ModelProto:
    """x[M,K] @ w1[K,N] -> + bias[N] (one entry ``big``) -> @ w2[N,P] -> Reshape to [M*P]."""
    rng = np.random.default_rng(0)
    bias = np.zeros(N, np.float32)
    bias[5] = big
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "bias"], ["hb"], name="add"),
        helper.make_node("MatMul", ["hb", "w2"], ["o"], name="mm2"),
        helper.make_node("Reshape", ["o", "flat"], ["y"], name="flatten"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [M, K])],
        [helper.make_tensor_value_info("y", F, [M * P])],
        [
            nh.from_array((rng.standard_normal((K, N)) * 0.1).astype(np.float32), "w1"),
            nh.from_array(bias, "bias"),
            nh.from_array((rng.standard_normal((N, P)) * 1e-3).astype(np.float32), "w2"),
            nh.from_array(np.array([M * P], np.int64), "flat"),
        ],
    )


def test_half_flops_fraction_is_the_share_of_matmul_and_elementwise_work_left_in_float16() -> None:
    """A bias holding 1e5 (beyond float16) keeps its Add float32, and the 1e5 it puts in 'hb'
    keeps the MatMul reading it float32 too: only the first MatMul runs in float16. Its share of
    the estimated FLOPs (2*M*N*K for a MatMul, the output size for elementwise work, data movement
    not counted) is computed here from the shapes."""
    src = _two_matmuls(1e5)
    out, res = _apply(src, budget=BUDGET)
    kept = _kept(res)
    assert {"add", "mm2"} <= set(kept) and "mm1" not in kept, kept
    assert "outside float16's range" in kept["add"] and "beyond float16's range" in kept["mm2"]
    types = _types(out)
    assert types["h"] == F16 and types["hb"] == F and types["o"] == F
    mm1, add, mm2 = 2.0 * M * N * K, float(M * N), 2.0 * M * P * N
    d = res.details
    assert d["compute_nodes"] == 3 and d["half_compute_nodes"] == 1  # the Reshape is not compute
    assert d["half_fraction"] == pytest.approx(1 / 3, abs=5e-5)
    assert d["half_flops_fraction"] == pytest.approx(mm1 / (mm1 + add + mm2), abs=5e-5)
    assert f"{d['half_flops_fraction']:.0%} of estimated FLOPs" in "\n".join(res.notes)
    x = np.random.default_rng(1).uniform(-1, 1, (M, K)).astype(np.float32)
    assert _within(_run(src, {"x": x})[0], _run(out, {"x": x})[0], 1e-2, 1e-2)


def test_a_fully_converted_model_reports_all_of_its_flops_in_half_precision() -> None:
    src = _two_matmuls(0.5)
    out, res = _apply(src, budget=BUDGET)
    assert res.details["kept_float32"] == []
    assert res.details["half_fraction"] == 1.0 and res.details["half_flops_fraction"] == 1.0
    types = _types(out)
    assert types["h"] == types["hb"] == types["o"] == F16


# 2. no cancelling Cast pair ---------------------------------------------------------------------


def _upcast_attention(seq: int = 8, dim: int = 16) -> onnx.ModelProto:
    """Scores arrive through a Cast to float (as exports write ``.float()``) read by a masked Add
    (a -3.4e38 mask: float32) and by a projection (float16): the converted Cast to float16 then
    feeds a Cast back to float32 in front of the Add."""
    mask = np.triu(np.full((seq, seq), -3.4e38, np.float32), 1)
    w = (np.random.default_rng(0).standard_normal((seq, dim)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["x"], ["u"], to=F, name="upcast"),
        helper.make_node("Add", ["u", "mask"], ["sm"], name="masked"),
        helper.make_node("Softmax", ["sm"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["u", "w"], ["v"], name="proj"),
        helper.make_node("MatMul", ["p", "v"], ["y"], name="ctx"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, seq, seq])],
        [helper.make_tensor_value_info("y", F, [1, seq, dim])],
        [nh.from_array(mask, "mask"), nh.from_array(w, "w")],
    )


def _cancelling_casts(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(first, second) for every Cast fed by a Cast whose input already has the second's type."""
    types = _types(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    pairs = []
    for n in model.graph.node:
        first = producer.get(n.input[0]) if n.op_type == "Cast" else None
        if first is not None and first.op_type == "Cast" and types.get(first.input[0]) == _to(n):
            pairs.append((first.name, n.name))
    return pairs


def test_no_cancelling_cast_pair_is_left_and_the_cast_count_is_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    src = _upcast_attention()
    with monkeypatch.context() as m:  # what the converter writes before it drops the pairs
        m.setattr(to_fp16, "_drop_cast_pairs", lambda g: None)
        raw, _ = _apply(src, budget=BUDGET)
    assert ("upcast", "u_to_fp32") in _cancelling_casts(raw)  # the model does produce such a pair

    out, res = _apply(src, budget=BUDGET)
    kept = _kept(res)
    assert {"masked", "softmax"} <= set(kept) and "proj" not in kept, kept
    assert _cancelling_casts(out) == []
    casts = [n for n in out.graph.node if n.op_type == "Cast"]
    assert res.details["casts"] == len(casts)
    assert f"{len(casts)} Cast node(s)" in "\n".join(res.notes)
    assert len(casts) < sum(n.op_type == "Cast" for n in raw.graph.node)
    masked = next(n for n in out.graph.node if n.name == "masked")
    assert masked.input[0] == "x"  # the Add reads the float32 input itself
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 8, 8)).astype(np.float32)
    assert _within(_run(src, {"x": x})[0], _run(out, {"x": x})[0], 1e-2, 1e-2)


# 3. shape arithmetic keeps its types ------------------------------------------------------------


def test_shape_arithmetic_stays_float32_and_int64_under_a_budget() -> None:
    """Shape(x) -> Cast to float -> Mul -> Cast to int64 gives Tile its repeats and Reshape its
    shape; the float compute around them converts, the arithmetic on sizes does not."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Tanh", ["h"], ["a"], name="act"),
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Cast", ["s"], ["sf"], to=F, name="tofloat"),
        helper.make_node("Mul", ["sf", "rep_k"], ["rf"], name="reps_mul"),
        helper.make_node("Cast", ["rf"], ["reps"], to=I64, name="reps_int"),
        helper.make_node("Tile", ["a", "reps"], ["t"], name="tile"),
        helper.make_node("Mul", ["sf", "shape_k"], ["nf"], name="shape_mul"),
        helper.make_node("Cast", ["nf"], ["newshape"], to=I64, name="shape_int"),
        helper.make_node("Reshape", ["t", "newshape"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="head"),
    ]
    src = _model(
        nodes,
        [helper.make_tensor_value_info("x", F, [2, 8])],
        [helper.make_tensor_value_info("y", F, [2, 4])],
        [
            nh.from_array((rng.standard_normal((8, 8)) * 0.3).astype(np.float32), "w"),
            nh.from_array(np.array([1.0, 2.0], np.float32), "rep_k"),  # Tile: [2, 8] -> [2, 16]
            nh.from_array(np.array([1.0, 32.0], np.float32), "shape_k"),  # Reshape: [2, 16 * 16] = [2, 256]
            nh.from_array((rng.standard_normal((256, 4)) * 0.1).astype(np.float32), "w2"),
        ],
    )
    out, res = _apply(src, budget=BUDGET)
    kept = _kept(res)
    for name in ("tofloat", "reps_mul", "shape_mul"):
        assert "shape/index arithmetic" in kept.get(name, ""), kept
    assert not {"mm", "act", "head"} & set(kept), kept
    types = _types(out)
    assert types["sf"] == types["rf"] == types["nf"] == F
    assert types["s"] == types["reps"] == types["newshape"] == I64
    assert types["h"] == types["a"] == types["t"] == types["r"] == F16  # the compute converts
    by_name = {n.name: n for n in out.graph.node}
    assert _to(by_name["tofloat"]) == F and _to(by_name["reps_int"]) == _to(by_name["shape_int"]) == I64
    assert by_name["reps_mul"].input == ["sf", "rep_k"] and by_name["shape_mul"].input == ["sf", "shape_k"]
    assert {t.name: t.data_type for t in out.graph.initializer}["rep_k"] == F
    x = rng.uniform(-1, 1, (2, 8)).astype(np.float32)
    ref, got = _run(src, {"x": x})[0], _run(out, {"x": x})[0]
    assert got.shape == ref.shape == (2, 4)
    assert _within(ref, got, 1e-2, 1e-2)


# 4. attribution on a Softmax --------------------------------------------------------------------


def test_error_concentrated_in_a_softmax_is_found_by_attribution(tmp_path: Path) -> None:
    """Flat logits around 800 with a spread of a few units, reshaped to rows for a Softmax: float16
    steps by 0.5 there, so the rounded logits move the probabilities by up to ~25%, while the rest
    (a MatMul, a Mul, an Add on values near 1) loses nothing that matters. The first round of
    attribution lands on the Softmax alone; no hazard is involved; the harmless compute stays
    float16 and the result meets the budget on held-out and fresh samples.

    (onnxruntime's CPU Softmax has no float16 kernel: it casts to float32 inside and drops a
    float32->float16->float32 Cast pair, so the rounding shows only where a float16 tensor is
    produced before the Softmax, here by the Reshape.)"""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Reshape", ["logits", "rows"], ["s"], name="rows"),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "wv"], ["h"], name="mix"),
        helper.make_node("Mul", ["z", "gain"], ["zg"], name="gate"),
        helper.make_node("Add", ["h", "zg"], ["y"], name="sum"),
    ]
    src = _model(
        nodes,
        [helper.make_tensor_value_info("logits", F, [64]), helper.make_tensor_value_info("z", F, [4, 8])],
        [helper.make_tensor_value_info("y", F, [4, 8])],
        [
            nh.from_array(np.array([4, 16], np.int64), "rows"),
            nh.from_array(rng.standard_normal((16, 8)).astype(np.float32), "wv"),
            nh.from_array(np.array(0.5, np.float32), "gain"),
        ],
    )

    def draw(n: int) -> dict[str, np.ndarray]:
        return {
            "logits": (800.0 + rng.uniform(-3, 3, (n, 64))).astype(np.float32),
            "z": rng.uniform(-1, 1, (n, 4, 8)).astype(np.float32),
        }

    np.savez(tmp_path / "calib.npz", **draw(6))
    fresh = {k: v[0] for k, v in draw(1).items()}
    ref = _run(src, fresh)[0]
    plain, _ = _apply(src)
    assert not _within(ref, _run(plain, fresh)[0], 1e-2, 1e-2)  # all-float16 misses the budget

    out, res = _apply(src, budget=BUDGET, calibration=str(tmp_path / "calib.npz"))
    kept = _kept(res)
    assert kept.get("softmax", "").startswith("error contribution") and kept["softmax"].endswith("(round 1)"), kept
    # the Reshape before it, read by it alone, stays float32 with it: no Cast pair around it
    assert res.details["round_log"][1].startswith("round 2: 2 node(s) float32"), res.details["round_log"]
    assert kept.pop("rows") == "between float32 nodes: kept with them (fewer Casts)", kept
    assert all(why.startswith("error contribution") for why in kept.values()), kept  # no hazard
    assert not {"mix", "gate", "sum"} & set(kept), kept
    assert res.details["round_log"][-1].endswith("held-out: met")
    types = _types(out)
    assert types["p"] == F and types["h"] == types["zg"] == F16
    assert _within(ref, _run(out, fresh)[0], 1e-2, 1e-2)


def test_value_ranges_leave_non_finite_values_out() -> None:
    from surgeon.passes._fp16_budget import _value_range

    assert _value_range([np.array([1.0, np.inf, -3.0, np.nan], np.float32)]) == (3.0, True)
    assert _value_range([np.array([2.0, 4.0], np.float32), np.array([0.5], np.float32)]) == (4.0, False)
    assert _value_range([np.array([0.5, 2.0], np.float32), np.array([7.0], np.float32)]) == (7.0, False)
    assert _value_range([np.array([np.inf, np.nan], np.float32), np.zeros(0, np.float32)]) == (0.0, False)


def test_a_cast_to_the_type_its_input_has_goes() -> None:
    """An exporter's bool -> bool Cast after a Trilu (the causal mask of a TorchScript decoder)
    computes nothing: the converted model reads the Trilu's output directly, has no such Cast, and
    computes what the source did. A Cast the model's output comes from stays."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Trilu", ["ones"], ["tri"], upper=1, name="trilu"),
        helper.make_node("Cast", ["tri"], ["tri_b"], to=TensorProto.BOOL, name="noop"),
        helper.make_node("MatMul", ["x", "w"], ["s"], name="mm"),
        helper.make_node("Where", ["tri_b", "neg", "s"], ["m"], name="where"),
        helper.make_node("Softmax", ["m"], ["p"], axis=-1, name="softmax"),
        helper.make_node("Cast", ["p"], ["y"], to=TensorProto.FLOAT, name="out_cast"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        [
            nh.from_array(np.ones((4, 4), bool), "ones"),
            nh.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w"),
            nh.from_array(np.array(-1e4, np.float32), "neg"),
        ],
    )
    src = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    out, res = _apply(src, keep_io_types=True)
    ops = {n.name: n for n in out.graph.node}
    assert "noop" not in ops and list(ops["where"].input)[0] == "tri"
    assert res.details["casts"] == sum(n.op_type == "Cast" for n in out.graph.node)
    onnx.checker.check_model(out, full_check=True)
    x = rng.uniform(-1, 1, (4, 4)).astype(np.float32)
    assert _within(_run(src, {"x": x})[0], _run(out, {"x": x})[0], 1e-2, 1e-2)
