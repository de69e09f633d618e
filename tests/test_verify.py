"""The verifier: comparison, input data, devices, contracts, failure handling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import parser

from surgeon import Pipeline
from surgeon.errors import UsageError, VerificationError
from surgeon.ir.model import load
from surgeon.passes.rename_io import RenameIO
from surgeon.verify.compare import Tolerance, compare
from surgeon.verify.config import VerifyConfig
from surgeon.verify.contract import IOContract
from surgeon.verify.feeds import make_feed, resolve_shape
from surgeon.verify.runtime import Runtime
from surgeon.verify.specs import InputSpec
from surgeon.verify.verifier import Verifier
from tests.conftest import exported_like_model


def test_compare_reports_errors_and_verdicts() -> None:
    tol = Tolerance(1e-3, 1e-5)
    a = np.array([1.0, 2.0, 4.0], np.float32)
    ok = compare("y", a, a + np.float32(1e-6), tol)
    assert ok.ok and ok.verdict == "ok" and 0 < ok.max_abs < 2e-6
    bad = compare("y", a, a * 1.01, tol)
    assert not bad.ok and bad.verdict == "FAIL" and bad.max_abs == pytest.approx(0.04, rel=1e-3)
    assert bad.max_rel == pytest.approx(0.01, rel=1e-3)
    assert "shape" in compare("y", a, a[:2], tol).note
    assert "dtype" in compare("y", a, a.astype(np.float64), tol).note


def test_compare_calls_out_non_finite_and_empty() -> None:
    tol = Tolerance(0, 0)
    a = np.array([np.nan, np.inf, 1.0])
    same = compare("y", a, a.copy(), tol)
    assert same.ok and same.verdict == "ok (non-finite)" and "2 non-finite" in same.note
    worse = compare("y", np.array([1.0, 2.0]), np.array([1.0, np.nan]), tol)
    assert not worse.ok and "non-finite values differ" in worse.note
    empty = compare("y", np.zeros((0, 3)), np.zeros((0, 3)), tol)
    assert empty.ok and empty.verdict == "ok (empty)" and "empty" in empty.note


def test_feed_is_seeded_and_dims_resolved() -> None:
    specs = [
        InputSpec("x", np.dtype(np.float32), ("batch", 3)),
        InputSpec("i", np.dtype(np.int64), (2,)),
        InputSpec("b", np.dtype(bool), ()),
    ]
    cfg = VerifyConfig(dims={"batch": 4}, seed=3)
    f1, f2 = make_feed(specs, cfg), make_feed(specs, cfg)
    assert f1["x"].shape == (4, 3) and f1["x"].dtype == np.float32
    assert np.array_equal(f1["x"], f2["x"]) and np.array_equal(f1["i"], f2["i"])
    assert f1["b"].dtype == bool and f1["b"].shape == ()
    assert not np.array_equal(make_feed(specs, VerifyConfig(dims={"batch": 4}, seed=4))["x"], f1["x"])
    assert resolve_shape(specs[0], {"x:0": 7}) == (7, 3)
    with pytest.raises(UsageError, match="symbolic dim 'batch'; set verify.dims: {batch: N}"):
        resolve_shape(specs[0], {})
    with pytest.raises(UsageError, match=r"a dim with no size; set verify.dims: {'x:0': N}"):
        resolve_shape(InputSpec("x", np.dtype(np.float32), (None,)), {})


def test_npz_inputs(tmp_path: Path) -> None:
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.savez(tmp_path / "in.npz", **{"onnx::MatMul_0": data})
    v = Verifier(load(exported_like_model()), VerifyConfig(inputs="in.npz", device="cpu"), base_dir=tmp_path)
    assert np.array_equal(v.feed["onnx::MatMul_0"], data)
    with pytest.raises(UsageError, match="no array for input"):
        np.savez(tmp_path / "other.npz", z=data)
        Verifier(load(exported_like_model()), VerifyConfig(inputs="other.npz"), base_dir=tmp_path)


def test_device_cuda_is_an_error_when_cuda_does_not_load(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = tmp_path / "m.onnx"
    onnx.save(exported_like_model(), str(path))
    rt = Runtime("auto")
    sess = rt.session(path)
    if "CUDAExecutionProvider" in sess.get_providers():
        pytest.skip("CUDA really loads here: covered by tests/test_gpu.py")
    assert rt.used == "CPU" and rt.reason
    assert "CUDAExecutionProvider" in ort.get_available_providers() or "no CUDAExecutionProvider" in rt.reason
    with pytest.raises(UsageError, match="verify.device is cuda but CUDA is unavailable"):
        Runtime("cuda").session(path)


def test_the_cuda_probe_runs_once_per_process_where_cuda_does_not_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    import surgeon.verify.runtime as runtime

    path = tmp_path / "m.onnx"
    onnx.save(exported_like_model(), str(path))
    if Runtime("auto").session(path).get_providers()[0] == "CUDAExecutionProvider":
        pytest.skip("CUDA loads here: its probe session is the one wanted, covered by tests/test_gpu.py")
    monkeypatch.setattr(runtime, "_NO_CUDA", {})
    asked: list[list[str]] = []
    real = ort.InferenceSession

    def recording(src: object, so: object = None, providers: list[str] | None = None) -> object:
        asked.append(list(providers or []))
        return real(src, so, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    first, second = Runtime("auto"), Runtime("auto")
    first.session(path)
    probes = sum("CUDAExecutionProvider" in p for p in asked)
    second.session(path)
    second.session(path)
    assert sum("CUDAExecutionProvider" in p for p in asked) == probes  # no second probe
    assert asked[-1] == ["CPUExecutionProvider"]
    assert (second.used, second.reason) == (first.used, first.reason) and second.reason


def test_a_probe_that_failed_on_its_model_is_not_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    import surgeon.verify.runtime as runtime

    path = tmp_path / "m.onnx"
    onnx.save(exported_like_model(), str(path))
    monkeypatch.setattr(runtime, "_NO_CUDA", {})
    real = ort.InferenceSession

    def refusing(src: object, so: object = None, providers: list[str] | None = None) -> object:
        if "CUDAExecutionProvider" in (providers or []):
            raise RuntimeError("this model's session failed on CUDA")
        return real(src, so, providers=providers)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", refusing)
    rt = Runtime("auto")
    rt.session(path)
    assert rt.used == "CPU" and "this model's session failed on CUDA" in rt.reason
    assert runtime._NO_CUDA == {}  # the next model is probed again


def test_contract_maps_renamed_and_new_inputs() -> None:
    c = IOContract(
        renamed_inputs={"a": "x"}, new_inputs={"k": np.array(3.0)}, removed_outputs={"dead"}, renamed_outputs={"o": "y"}
    )
    feed = c.map_feed({"a": np.ones(2), "b": np.zeros(1)})
    assert set(feed) == {"x", "b", "k"}
    assert set(c.unmap_feed(feed)) == {"a", "b"}
    outs = c.map_outputs({"o": np.ones(1), "dead": np.ones(1)}, {})
    assert set(outs) == {"y"}


def test_each_mode_verifies_after_every_modifying_pass_end_mode_once() -> None:
    passes = [RenameIO(inputs={"onnx::MatMul_0": "x"}), RenameIO(outputs={"/relu/Relu_output_0": "y"})]
    each = Pipeline(passes, verify={"prove": False, "dims": {"batch": 2}}).run(exported_like_model())
    assert all(s.check is not None for s in each.steps) and each.final_check is None
    end = Pipeline(passes, verify={"prove": False, "dims": {"batch": 2}, "mode": "end"}).run(exported_like_model())
    assert all(s.check is None for s in end.steps) and end.final_check is not None and end.final_check.ok
    off = Pipeline(passes, verify={"mode": "off"}).run(exported_like_model())
    assert off.final_check is None and all(s.check is None for s in off.steps) and off.device == ""


def test_reference_is_computed_once_per_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    import surgeon.verify.verifier as verify

    calls: list[str] = []
    real = verify.run_model

    def counting(runtime, model, feeds, *rest):
        calls.append(str(model.path))
        return real(runtime, model, feeds, *rest)

    monkeypatch.setattr(verify, "run_model", counting)
    passes = [RenameIO(inputs={"onnx::MatMul_0": "x"}), RenameIO(outputs={"/relu/Relu_output_0": "y"})]
    Pipeline(passes, verify={"prove": False, "dims": {"batch": 2}}).run(exported_like_model())
    assert len(calls) == 3  # one reference run, one per verified pass


def test_a_pass_that_breaks_the_function_fails_verification(tmp_path: Path) -> None:
    model = parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) { y = Relu (x) }"""
    )
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))

    class Broken(RenameIO):
        def run(self, ir):
            ir.graph.nodes[0].op = "Sigmoid"
            return super().run(ir)

    res = Pipeline([Broken(inputs={"x": "input"})]).run(src)
    assert not res.ok
    assert res.failures()[0].startswith("passes[0] (rename-io): output 'y': max abs error")
    out = tmp_path / "out.onnx"
    with pytest.raises(VerificationError, match="nothing written"):
        Pipeline([Broken(inputs={"x": "input"})]).apply(src, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_step_tolerance_override_loosens_later_checks() -> None:
    from surgeon.pipeline import Step
    from surgeon.verify.config import StepVerify

    steps = [
        Step(RenameIO(inputs={"onnx::MatMul_0": "x"}), verify=StepVerify(rtol=0.5)),
        Step(RenameIO(outputs={"/relu/Relu_output_0": "y"})),
    ]
    res = Pipeline(steps, verify={"prove": False, "dims": {"batch": 2}}).run(exported_like_model())
    assert res.steps[0].check.outputs[0].rtol == 0.5
    assert res.steps[1].check.outputs[0].rtol == 0.5


def test_auto_device_builds_the_first_session_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    path = tmp_path / "m.onnx"
    onnx.save(exported_like_model(), str(path))
    built: list[object] = []
    real = ort.InferenceSession

    def counting(*args, **kwargs):
        built.append(kwargs.get("providers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    rt = Runtime("auto")
    sess = rt.session(path)
    assert len(built) == 1, built
    assert sess.get_providers()[0] == ("CUDAExecutionProvider" if rt.used == "CUDA" else "CPUExecutionProvider")
    rt.session(path)
    assert len(built) == 2


def test_step_tolerance_replaces_the_pipelines_tighter_or_looser() -> None:
    from surgeon.pipeline import Step
    from surgeon.verify.config import StepVerify

    steps = [
        Step(RenameIO(inputs={"onnx::MatMul_0": "x"}), verify=StepVerify(rtol=0.0, atol=0.0)),
        Step(RenameIO(outputs={"/relu/Relu_output_0": "y"})),
    ]
    res = Pipeline(steps, verify={"prove": False, "dims": {"batch": 2}, "rtol": 0.1, "atol": 0.1, "device": "cpu"}).run(
        exported_like_model()
    )
    first = res.steps[0].check.outputs[0]
    assert (first.rtol, first.atol) == (0.0, 0.0)  # before: the pipeline's 0.1 won (a step could only loosen)
    later = res.steps[1].check.outputs[0]
    assert (later.rtol, later.atol) == (0.1, 0.1)


def test_a_pass_default_applies_only_where_the_user_set_none_and_carries_into_later_checks() -> None:
    from surgeon.passes.to_fp16 import ToFP16
    from surgeon.pipeline import Step
    from surgeon.verify.config import StepVerify

    cfg = {"dims": {"batch": 2}, "device": "cpu", "prove": False}  # runs against the source
    res = Pipeline([ToFP16(), RenameIO(inputs={"onnx::MatMul_0": "x"})], verify=cfg).run(exported_like_model())
    assert [(o.rtol, o.atol) for s in res.steps for o in s.check.outputs] == [(1e-2, 1e-2), (1e-2, 1e-2)]
    steps = [Step(ToFP16()), Step(RenameIO(inputs={"onnx::MatMul_0": "x"}), verify=StepVerify(rtol=1e-7, atol=1e-9))]
    res = Pipeline(steps, verify=cfg).run(exported_like_model())
    out = res.steps[1].check.outputs[0]
    assert (out.rtol, out.atol) == (1e-7, 1e-9) and not out.ok  # exactly what the user wrote: the fp16 error shows


def test_cli_tolerance_wins_over_pass_defaults_and_is_validated(model_path: Path, tmp_path: Path) -> None:
    import json

    from surgeon.cli import main
    from tests.conftest import write_recipe

    report, out = tmp_path / "r.json", tmp_path / "o.onnx"
    argv = [
        "run",
        "to-fp16",
        str(model_path),
        "-o",
        str(out),
        "--dims",
        "batch=2",
        "--device",
        "cpu",
        "--report",
        str(report),
    ]
    assert main([*argv, "--rtol", "0.5", "--atol", "0.25"]) == 0
    check = json.loads(report.read_text())["steps"][0]["outputs"][0]
    assert (check["rtol"], check["atol"]) == (0.5, 0.25)
    assert main([*argv, "--rtol", "1e-7", "--atol", "1e-9"]) == 1
    check = json.loads(report.read_text())["steps"][0]["outputs"][0]
    assert (check["rtol"], check["atol"]) == (1e-7, 1e-9)  # before: to-fp16's 1e-2 overrode them
    recipe = write_recipe(
        model_path.parent,
        f"version: 1\nmodel: {model_path.name}\noutput: o2.onnx\nverify: {{device: cpu}}\npasses:\n  - cleanup: {{}}\n",
    )
    assert main(["apply", str(recipe), "--rtol", "-1"]) == 2
    assert main([*argv, "--atol", "-1"]) == 2
    assert not (model_path.parent / "o2.onnx").exists()


def test_onnxruntime_log_lines_never_reach_the_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A kernel that fails at run time (Expand to a random shape): onnxruntime logs it in red on
    file descriptor 2; surgeon says it once, in its own line naming which model failed, and
    nothing else reaches the terminal."""
    from surgeon.cli import main

    src = tmp_path / "expand.onnx"
    onnx.save(
        parser.parse_model(
            '<ir_version: 10, opset_import: ["" : 17]>\n'
            "g (float[2,3] x, int64[2] s) => (float[?, ?] y) { y = Expand(x, s) }"
        ),
        str(src),
    )
    capfd.readouterr()
    assert main(["run", "strip-doc", str(src), "-o", str(tmp_path / "out.onnx"), "--no-proof"]) == 3
    err = capfd.readouterr().err
    assert "onnxruntime:" not in err and "\x1b[1;31m" not in err, err
    assert (
        err.count("\n") == 1
        and err.startswith("error: strip-doc: the source model fails on the generated inputs")
        and "Expand" in err
    )


def test_a_huge_relative_error_is_inf_without_a_runtime_warning() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning was printed in the middle of a run
        check = compare("y", np.array([1e-310, 1.0]), np.array([1e10, 1.0]), Tolerance(1e-3, 1e-5))
    assert not check.ok and check.max_rel == float("inf") and check.max_abs == 1e10


# --- comparing large outputs: bounded memory, the same answers -------------------------------------


def _traced_peak(fn: Any) -> tuple[Any, int]:
    """``fn()``'s result and the most bytes numpy and Python held at once during it, above what
    was held before (numpy reports its buffers to tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_comparing_a_large_output_holds_a_few_mib_not_float64_copies_of_it() -> None:
    """A language model's logits (1x1024x50257 is 200 MiB in float32): compare made float64 copies
    of both sides, then masks, differences and relative errors of the whole tensor (more than ten
    times the output's size at once). It now compares a chunk at a time."""
    from surgeon.verify.compare import CHUNK

    rng = np.random.default_rng(0)
    expected = rng.standard_normal(4 * 1024 * 1024, dtype=np.float32)  # 16 MiB
    actual = expected + np.float32(1e-4)
    expected[5] = np.inf
    actual[5] = np.inf
    check, peak = _traced_peak(lambda: compare("logits", expected, actual, Tolerance(1e-3, 1e-3)))
    assert check.ok and check.verdict == "ok (non-finite)"
    assert check.max_abs == pytest.approx(1e-4, rel=1e-2)
    assert peak < expected.nbytes // 2, f"{peak / 2**20:.1f} MiB held to compare a 16 MiB output"
    assert peak < 16 * CHUNK * 8


def test_chunked_comparison_matches_the_whole_arrays_at_every_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors, non-finite positions and the cosine sums come out the same however the values fall
    into chunks (several pairs, of several sizes, pieced together and split)."""
    import surgeon.verify.compare as cmp

    rng = np.random.default_rng(1)
    pairs = []
    for size in (1, 5, 13, 40):
        e = rng.standard_normal(size)
        a = e + rng.standard_normal(size) * 1e-3
        pairs.append((e.astype(np.float32), a.astype(np.float32)))
    pairs[2][0][[0, 7]] = [np.nan, -np.inf]
    pairs[2][1][[0, 7]] = [np.nan, -np.inf]
    pairs[3][0][39] = 1e-30  # a relative error of about 1e26 against a value near zero
    e_all = np.concatenate([p[0] for p in pairs]).astype(np.float64)
    a_all = np.concatenate([p[1] for p in pairs]).astype(np.float64)
    fin = np.isfinite(e_all) & np.isfinite(a_all)
    diff = np.abs(e_all[fin] - a_all[fin])
    tol = cmp.Tolerance(1e-3, 1e-3)
    for chunk in (1, 3, 7, 64, 1 << 16):
        monkeypatch.setattr(cmp, "CHUNK", chunk)
        s = cmp.error_stats(iter(pairs), tol)  # a generator: buffers of CHUNK values
        assert s == cmp.error_stats(pairs, tol)  # a list: buffers of its size, if smaller
        assert s.finite_pairs == int(fin.sum()) and s.nonfinite_expected == s.nonfinite_actual == 2
        assert s.nonfinite_ok and s.max_abs == float(diff.max())
        assert s.max_rel == float((diff / np.abs(e_all[fin])).max())
        assert s.within == bool(np.all(diff <= 1e-3 + 1e-3 * np.abs(e_all[fin])))
        assert s.dot == pytest.approx(float(e_all[fin] @ a_all[fin]), rel=1e-12)
        assert s.cosine == pytest.approx(
            float(e_all[fin] @ a_all[fin]) / float(np.linalg.norm(e_all[fin]) * np.linalg.norm(a_all[fin])), rel=1e-12
        )
        moved = [(e.copy(), a.copy()) for e, a in pairs]
        moved[2][1][[0, 7]] = [np.nan, np.inf]  # -inf became +inf: same position, other value
        assert not cmp.error_stats(moved, tol).nonfinite_ok
        moved[2][1][[0, 7]] = [1.0, -np.inf]  # NaN became a number: another position
        assert not cmp.error_stats(moved, tol).nonfinite_ok
