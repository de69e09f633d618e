"""``surgeon verify a b`` compares a model with one that added an input (a promoted factor) when
told the value it stands for (``--feed``), and every verifying command takes input data
(``--inputs data.npz``); verify has no ``--no-verify`` (it always verifies)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from surgeon.cli import main
from tests.models_interface import resize_constant_nodes


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(resize_constant_nodes(), str(a))
    args = ["run", "promote-resize-scales", str(a), "-o", str(b), "--set", "form=factor", "--set", "input=factor"]
    assert main([*args, "-q"]) == 0
    return a, b


def test_verify_needs_the_value_of_an_added_input(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = pair
    assert main(["verify", str(a), str(b), "-q"]) == 2
    assert "--feed factor=VALUE" in capsys.readouterr().err
    assert main(["verify", str(a), str(b), "--feed", "factor=3.0", "--report", str(a.parent / "r.json")]) == 0
    report = json.loads((a.parent / "r.json").read_text())
    assert report["ok"] and report["kind"] == "verify"
    assert main(["verify", str(a), str(b), "--feed", "factor=2.0", "-q"]) == 1  # not the factor a computes with
    assert main(["verify", str(a), str(b), "--feed", "nope=1", "-q"]) == 2
    assert main(["verify", str(a), str(b), "--feed", "factor=x", "-q"]) == 2


def test_inputs_npz_feeds_verify_and_apply(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = pair
    x = onnx.load(str(a)).graph.input[0]
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    data = tmp_path / "data.npz"
    np.savez(data, **{x.name: np.full(shape, 0.5, np.float32)})
    report = tmp_path / "v.json"
    code = main(["verify", str(a), str(a), "--inputs", str(data), "--report", str(report), "-q"])
    assert code == 0
    assert main(["run", "cleanup", str(a), "-o", str(tmp_path / "c.onnx"), "--inputs", str(data), "-q"]) == 0
    assert main(["run", "cleanup", str(a), "-o", str(tmp_path / "c.onnx"), "--inputs", "missing.npz", "-q"]) == 2


def test_verify_has_no_no_verify_flag(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = pair
    assert main(["verify", str(a), str(a), "--no-verify"]) == 2
    assert "unrecognized arguments: --no-verify" in capsys.readouterr().err
    assert main(["verify", "--help"]) == 0
    assert "overrides the recipe" not in capsys.readouterr().out


def test_apply_verifies_on_the_inputs_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`surgeon apply --inputs`: to-fp16 held to rtol = atol = 0 fails on random data (float16
    rounding) and passes on the zeros given, so the data given is what the steps ran on; an array
    named after no input is exit 2 before any pass runs."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    w = nh.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), tmp_path / "m.onnx")
    (tmp_path / "r.yaml").write_text("version: 1\nmodel: m.onnx\noutput: o.onnx\npasses:\n  - to-fp16: {}\n")
    np.savez(tmp_path / "zeros.npz", x=np.zeros((2, 4), np.float32))
    np.savez(tmp_path / "wrong.npz", z=np.zeros((2, 4), np.float32))
    strict = ["apply", str(tmp_path / "r.yaml"), "--rtol", "0", "--atol", "0", "-q"]
    assert main(strict) == 1 and not (tmp_path / "o.onnx").exists()
    assert main([*strict, "--inputs", str(tmp_path / "zeros.npz")]) == 0 and (tmp_path / "o.onnx").exists()
    (tmp_path / "o.onnx").unlink()
    capsys.readouterr()
    assert main([*strict, "--inputs", str(tmp_path / "wrong.npz")]) == 2
    assert "wrong.npz" in capsys.readouterr().err and not (tmp_path / "o.onnx").exists()


# --- input data is fed as given: a value its input's type cannot hold is one line, not a guess -----


def _gather_model(index_type: int = onnx.TensorProto.INT64) -> onnx.ModelProto:
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    table = nh.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"])],
        "g",
        [helper.make_tensor_value_info("ids", index_type, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
        [table],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_inputs_whose_values_the_inputs_type_cannot_hold_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify.inputs used to be cast to the input's type whatever it held: token ids 3.7 were fed
    as 3 and the verdict was "ok" on other data than the user's."""
    src = tmp_path / "g.onnx"
    onnx.save(_gather_model(), str(src))
    np.savez(tmp_path / "frac.npz", ids=np.array([[1, 2, 3.7], [4, 5, 6]]))
    assert main(["verify", str(src), str(src), "--inputs", str(tmp_path / "frac.npz"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "frac.npz" in err and "'ids' holds 3.7 at [0, 2]" in err and "int64" in err
    np.savez(tmp_path / "whole.npz", ids=np.array([[1.0, 2, 3], [4, 5, 6]]))  # integers as floats: exact
    assert main(["verify", str(src), str(src), "--inputs", str(tmp_path / "whole.npz"), "-q"]) == 0


@pytest.mark.parametrize(
    ("values", "dtype", "fed"),
    [
        (np.array([1.0, 2.5]), np.float32, [1.0, 2.5]),  # float to float rounds, as a feed does
        (np.array([1, 2], np.int32), np.int64, [1, 2]),
        (np.array([0, 255], np.uint8), np.float32, [0.0, 255.0]),
        (np.array([3.0, -1.0]), np.int64, [3, -1]),
        (np.array([0, 1]), np.bool_, [False, True]),
    ],
)
def test_conform_converts_when_no_value_changes(values: np.ndarray, dtype: type, fed: list[object]) -> None:
    from surgeon.verify.feeds import conform
    from surgeon.verify.specs import InputSpec

    out = conform("data.npz", InputSpec("x", np.dtype(dtype), ("n",)), values)
    assert out.dtype == np.dtype(dtype) and out.tolist() == fed


@pytest.mark.parametrize(
    ("values", "dtype", "message"),
    [
        (
            np.array([1.0, 3.7]),
            np.int64,
            "holds 3.7 at [1], which the input's type int64 cannot hold (it would be fed as 3)",
        ),
        (np.array([1.0, np.nan]), np.int64, "holds nan at [1]"),
        (np.array([2**40, 1], np.int64), np.int32, f"holds {2**40} at [0]"),
        (np.array([2**25 + 1, 1], np.int64), np.float32, f"holds {2**25 + 1} at [0]"),
        (np.array([1e300, 1.0]), np.float32, "holds 1e+300 at [0]"),
        (np.array([2, 1]), np.bool_, "holds 2 at [0]"),
        (np.array(["a", "b"]), np.float32, "holds <U1 values; the input is float32"),
    ],
)
def test_conform_refuses_a_value_that_would_change(values: np.ndarray, dtype: type, message: str) -> None:
    from surgeon.errors import UsageError
    from surgeon.verify.feeds import conform
    from surgeon.verify.specs import InputSpec

    with pytest.raises(UsageError) as info:
        conform("data.npz", InputSpec("x", np.dtype(dtype), ("n",)), values)
    assert str(info.value).startswith("data.npz: 'x' ") and message in str(info.value)


def test_static_dims_of_input_data_are_checked_first() -> None:
    from surgeon.errors import UsageError
    from surgeon.verify.feeds import conform
    from surgeon.verify.specs import InputSpec

    spec = InputSpec("image", np.dtype(np.float32), (1, 3, "h", 32))
    assert conform("d.npz", spec, np.zeros((1, 3, 7, 32), np.float32)).shape == (1, 3, 7, 32)
    assert conform("d.npz", spec, np.zeros((5, 1, 3, 9, 32), np.float32), stacked=True).shape[0] == 5
    with pytest.raises(
        UsageError, match=r"'image' samples have shape \[1, 3, 9, 16\]; the model's input is \[1, 3, \?, 32\]"
    ):
        conform("d.npz", spec, np.zeros((5, 1, 3, 9, 16), np.float32), stacked=True)


def test_a_feed_value_its_inputs_type_cannot_hold_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--feed k=2.5`` for an int64 input was fed as 2: a candidate adding ``k`` for the constant 2
    verified "ok" on a value the user did not give."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    x = helper.make_tensor_value_info("x", TensorProto.INT64, [3])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [3])
    two = nh.from_array(np.array(2, np.int64), "two")
    ref = helper.make_graph([helper.make_node("Add", ["x", "two"], ["y"])], "r", [x], [y], [two])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [])
    cand = helper.make_graph([helper.make_node("Add", ["x", "k"], ["y"])], "c", [x, k], [y])
    a, b = tmp_path / "ref.onnx", tmp_path / "cand.onnx"
    for graph, path in ((ref, a), (cand, b)):
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    assert main(["verify", str(a), str(b), "--feed", "k=2", "-q"]) == 0
    capsys.readouterr()
    assert main(["verify", str(a), str(b), "--feed", "k=2.5", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--feed k=2.5: 'k' holds 2.5, which the input's type int64" in err
