"""Many models: one recipe over a glob in parallel processes, one report per model with its
failure class, nothing written for a failed model, the others unaffected; doctor over several."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon.cli import main
from surgeon.errors import ModelError, PassError, PassPreconditionError, RecipeError, UsageError, VerificationError
from surgeon.many import expand_inputs
from surgeon.report import device_info, failure_class


def _mlp(input_name: str = "input.1", seed: int = 0) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    for i in range(3):
        onnx.save(_mlp(seed=i), str(folder / f"m{i}.onnx"))
    onnx.save(_mlp("x"), str(folder / "other_names.onnx"))  # the recipe's input name is missing
    (folder / "broken.onnx").write_bytes(b"not a model")
    (tmp_path / "recipe.yaml").write_text(
        "version: 1\npasses:\n  - rename-io: {inputs: {input.1: image}}\n  - mark-dynamic: {batch: batch}\n"
    )
    (tmp_path / "fixed").mkdir()
    return tmp_path


def test_apply_many_in_processes(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = {p.name: p.read_bytes() for p in (models / "models").iterdir()}
    code = main(
        [
            "apply",
            str(models / "recipe.yaml"),
            "-i",
            str(models / "models" / "*.onnx"),
            "--out-dir",
            str(models / "fixed"),
            "-j",
            "2",
            "--report",
            str(models / "summary.json"),
        ]
    )
    assert code == 3  # the worst per-model failure: a corrupt file (model); a missing name is usage (2)
    out = models / "fixed"
    written = sorted(p.name for p in out.glob("*.onnx"))
    assert written == ["m0.onnx", "m1.onnx", "m2.onnx"]  # nothing for the failed ones
    reports = {p.name.removesuffix(".report.json"): json.loads(p.read_text()) for p in out.glob("*.report.json")}
    assert set(reports) == {"m0", "m1", "m2", "other_names", "broken"}
    assert reports["broken"]["failure_class"] == "model" and "not a valid ONNX model" in reports["broken"]["message"]
    assert (
        reports["other_names"]["failure_class"] == "usage"
        and "unknown input 'input.1'" in reports["other_names"]["message"]
    )
    good = reports["m1"]
    assert good["ok"] and good["failure_class"] is None and good["output"] == str(out / "m1.onnx")
    assert good["input"] == str(models / "models" / "m1.onnx") and len(good["recipe_sha256"]) == 64
    assert good["device"]["provider"] in ("CPU", "CUDA") and good["device"]["execution_provider"].endswith(
        "ExecutionProvider"
    )
    assert [s["verdict"] for s in good["steps"]] == ["proved (structural)", "ok"]  # the rename is proved
    fixed = onnx.load(str(out / "m1.onnx"))
    assert (
        fixed.graph.input[0].name == "image" and fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    )
    summary = json.loads((models / "summary.json").read_text())
    assert not summary["ok"] and len(summary["models"]) == 5
    assert {p.name: p.read_bytes() for p in (models / "models").iterdir()} == src  # inputs untouched
    assert "5 models, 2 failed" in capsys.readouterr().out


def test_apply_many_usage_errors(models: Path) -> None:
    recipe = str(models / "recipe.yaml")
    pattern = str(models / "models" / "m*.onnx")
    assert main(["apply", recipe, "-i", pattern]) == 2  # several models need --out-dir
    assert main(["apply", recipe, "-i", pattern, "--out-dir", str(models / "nope" / "deeper")]) == 2  # no parent
    assert not (models / "nope").exists()
    assert main(["apply", recipe, "-i", str(models / "none" / "*.onnx"), "--out-dir", str(models / "fixed")]) == 2
    assert (
        main(["apply", recipe, "-i", pattern, "--out-dir", str(models / "models")]) == 2
    )  # would overwrite the inputs
    assert not list((models / "fixed").iterdir())


def test_dry_run_many_writes_only_reports(models: Path) -> None:
    code = main(
        [
            "apply",
            str(models / "recipe.yaml"),
            "-i",
            str(models / "models" / "m*.onnx"),
            "--out-dir",
            str(models / "fixed"),
            "-j",
            "1",
            "--dry-run",
            "-q",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in (models / "fixed").iterdir()) == [
        "m0.report.json",
        "m1.report.json",
        "m2.report.json",
    ]
    assert all(json.loads(p.read_text())["output"] is None for p in (models / "fixed").iterdir())


def test_doctor_many(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(models / "models" / n) for n in ("m0.onnx", "other_names.onnx", "broken.onnx")]
    assert main(["doctor", *paths, "-j", "2", "--json"]) == 5
    reports = json.loads(capsys.readouterr().out)
    assert [Path(r["model"]).name for r in reports] == ["m0.onnx", "other_names.onnx", "broken.onnx"]
    assert {f["code"] for f in reports[0]["findings"]} == {"auto-io-names", "static-batch"}
    assert reports[2]["failure_class"] == "model"


def test_single_apply_report_has_the_same_fields(models: Path) -> None:
    report = models / "r.json"
    m = models / "models" / "m0.onnx"
    assert (
        main(
            [
                "apply",
                str(models / "recipe.yaml"),
                "-i",
                str(m),
                "-o",
                str(models / "o.onnx"),
                "-q",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    data = json.loads(report.read_text())
    assert data["input"] == str(m) and data["output"] == str(models / "o.onnx") and data["failure_class"] is None
    assert len(data["recipe_sha256"]) == 64 and "provider" in data["device"]
    assert (
        main(
            [
                "apply",
                str(models / "recipe.yaml"),
                "-i",
                str(models / "models" / "other_names.onnx"),
                "-o",
                str(models / "o2.onnx"),
                "-q",
                "--report",
                str(report),
            ]
        )
        == 2
    )
    data = json.loads(report.read_text())
    assert data["failure_class"] == "usage" and data["output"] is None and not (models / "o2.onnx").exists()


def test_failure_classes_and_device() -> None:
    assert (
        failure_class(UsageError("x"))
        == failure_class(RecipeError("x"))
        == failure_class(PassPreconditionError("x"))
        == "usage"
    )
    assert failure_class(ModelError("x")) == failure_class(PassError("x")) == "model"
    assert failure_class(VerificationError("x")) == "verification"
    assert failure_class(KeyError("x")) == "bug"
    d = device_info("CPU (CUDAExecutionProvider is listed but did not load: libcublasLt.so.13: cannot open)")
    assert d == {
        "provider": "CPU",
        "execution_provider": "CPUExecutionProvider",
        "reason": "CUDAExecutionProvider is listed but did not load: libcublasLt.so.13: cannot open",
        "cuda_error": "CUDAExecutionProvider is listed but did not load: libcublasLt.so.13: cannot open",
    }
    assert device_info("CPU (device: cpu)")["cuda_error"] is None
    with pytest.raises(UsageError, match="matches no file"):
        expand_inputs(["/nonexistent-surgeon/*.onnx"])


def test_workers_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker's onnxruntime sessions get the cores divided by the workers (SURGEON_ORT_THREADS)."""
    import onnxruntime as ort

    from surgeon.verify.runtime import Runtime

    seen: list[int] = []
    real = ort.InferenceSession

    def spy(src, so=None, **kw):  # type: ignore[no-untyped-def]
        seen.append(so.intra_op_num_threads)
        return real(src, so, **kw)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    monkeypatch.setenv("SURGEON_ORT_THREADS", "3")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        onnx.save(_mlp(), str(path))
        Runtime("cpu").session(path)
    assert seen == [3]


def test_shards_split_the_models_deterministically(models: Path) -> None:
    from surgeon.cli.many import shard

    found = expand_inputs([str(models / "models" / "*.onnx")])
    slices = [shard(list(reversed(found)), f"{k}/3") for k in (1, 2, 3)]  # listed in another order
    assert slices == [shard(found, f"{k}/3") for k in (1, 2, 3)]  # the same slice for the same set
    flat = [p for s in slices for p in s]
    assert sorted(flat) == sorted(found) and len(flat) == len(set(flat))  # the whole set, no model twice
    for bad in ("0/3", "4/3", "x", "1/0", "2"):
        with pytest.raises(UsageError):
            shard(found, bad)


def test_shards_then_report_merge(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe, pattern = str(models / "recipe.yaml"), str(models / "models" / "m*.onnx")
    for k in (1, 2):
        args = ["apply", recipe, "-i", pattern, "--out-dir", str(models / f"shard{k}"), "--shard", f"{k}/2", "-j", "1"]
        assert main([*args, "-q"]) == 0
    names = [sorted(p.name for p in (models / f"shard{k}").glob("*.onnx")) for k in (1, 2)]
    assert sorted(names[0] + names[1]) == ["m0.onnx", "m1.onnx", "m2.onnx"] and names[0] and names[1]
    reports = [str(p) for k in (1, 2) for p in (models / f"shard{k}").glob("*.report.json")]
    capsys.readouterr()
    assert main(["report", "merge", *reports, "-o", str(models / "summary.json")]) == 0
    summary = json.loads((models / "summary.json").read_text())
    assert summary["kind"] == "many" and summary["ok"] and len(summary["models"]) == 3
    assert summary["recipe"] == recipe
    assert "3 models, 0 failed" in capsys.readouterr().out
    # a failed model's report makes the merged exit code that of the failure; -o never overwrites an input
    assert main(["apply", recipe, "-i", str(models / "models" / "*.onnx"), "--out-dir", str(models / "all")]) == 3
    all_reports = [str(p) for p in (models / "all").glob("*.report.json")]
    assert main(["report", "merge", *all_reports, "-q"]) == 3
    before = Path(all_reports[0]).read_bytes()
    assert main(["report", "merge", *all_reports, "-o", all_reports[0], "-q"]) == 2
    assert Path(all_reports[0]).read_bytes() == before
    assert main(["report", "merge", str(models / "recipe.yaml"), "-q"]) == 2  # not a report


def test_the_table_says_why_a_model_failed(
    models: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one table row on one line
    (models / "strict.yaml").write_text("version: 1\npasses:\n  - to-fp16: {}\n    verify: {rtol: 0, atol: 0}\n")
    code = main(
        ["apply", str(models / "strict.yaml"), "-i", str(models / "models" / "m0.onnx"), "--out-dir", str(models / "o")]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "1 model, 1 failed" in out and "1 models" not in out
    assert "1 pass: 1 modified, 0 verified, 1 failed" in out
    report = json.loads((models / "o" / "m0.report.json").read_text())
    assert report["message"].startswith("passes[0] (to-fp16): output 'y': max abs error")  # the first failing check
    assert "rtol 0" in report["message"] and report["message"] in out  # on the row, whole
