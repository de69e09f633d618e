"""Shared fixtures: small models built in code."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper


def pytest_configure(config: pytest.Config) -> None:
    """The node tests generated from onnx's case generators are kept in pytest's cache folder
    (tests/sweep.py), keyed by the onnx and numpy versions; ``--cache-clear`` regenerates them."""
    from tests import sweep

    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        sweep.CACHE_DIR = cache.mkdir("surgeon-node-tests")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Before each test body, what is alive (imported modules, torch's and the exporters' caches,
    fixtures) is moved out of the garbage collector's sight with ``gc.freeze()``.

    surgeon's verifier calls ``gc.collect()`` after every onnxruntime run (to hand a closed
    session's memory back); in a process that has imported torch and run dynamo exports, each full
    collection walks millions of live objects, about 0.3 s here, and that was most of the suite's
    time. What the test body creates stays collectable; objects frozen here are never collected if
    they later become cyclic garbage (a little memory, in a test run only)."""
    gc.collect()
    gc.freeze()
    yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Frozen objects are collectable again before the interpreter exits (native extensions such
    as onnxsim's report leaked instances when their objects outlive the interpreter)."""
    gc.unfreeze()
    gc.collect()


class TorchExports:
    """Torch exports that several test modules repeat, each made once per session (lazily, on
    first use) and handed out as a fresh copy: a file in the test's own folder, or a new proto."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._made: dict[tuple[object, ...], Any] = {}

    def mlp(self, folder: Path, dynamo: bool) -> Path:
        """``tests.models_surgery.export_mlp(folder, dynamo)``, copied into ``folder``."""
        import shutil

        from tests.models_surgery import export_mlp

        key = ("mlp", dynamo)
        if key not in self._made:
            self._made[key] = export_mlp(self.folder, dynamo)
        src: Path = self._made[key]
        for path in sorted(self.folder.glob(f"{src.name}*")):  # the model and any external data
            shutil.copyfile(path, folder / path.name)
        return folder / src.name

    def classifier(self, dynamo: bool, output_name: str = "out") -> onnx.ModelProto:
        """``mi.export(mi.torch_classifier(), (1, 3, 4, 4), dynamo=dynamo, output_name=...)``."""
        from tests import models_interface as mi

        key = ("classifier", dynamo, output_name)
        if key not in self._made:
            proto = mi.export(mi.torch_classifier(), (1, 3, 4, 4), dynamo=dynamo, output_name=output_name)
            self._made[key] = proto.SerializeToString()
        return onnx.load_from_string(self._made[key])


@pytest.fixture(scope="session")
def torch_exports(tmp_path_factory: pytest.TempPathFactory) -> TorchExports:
    return TorchExports(tmp_path_factory.mktemp("torch_exports"))


def exported_like_model() -> onnx.ModelProto:
    """MatMul -> Relu with TorchScript-style names, a symbolic batch, a dead node, an unused
    initializer, model/node metadata and doc strings."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "fc.weight")
    unused = numpy_helper.from_array(np.ones(3, np.float32), "unused")
    mm = helper.make_node(
        "MatMul", ["onnx::MatMul_0", "fc.weight"], ["/fc/MatMul_output_0"], name="/fc/MatMul", doc_string="matmul doc"
    )
    mm.metadata_props.add(key="origin", value="fc")
    relu = helper.make_node("Relu", ["/fc/MatMul_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu")
    dead = helper.make_node("Neg", ["onnx::MatMul_0"], ["dead_out"], name="/dead/Neg")
    graph = helper.make_graph(
        [mm, relu, dead],
        "main_graph",
        [helper.make_tensor_value_info("onnx::MatMul_0", onnx.TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("/relu/Relu_output_0", onnx.TensorProto.FLOAT, ["batch", 3])],
        [w, unused],
        value_info=[helper.make_tensor_value_info("/fc/MatMul_output_0", onnx.TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=9,
        producer_name="pytorch",
        producer_version="2.13.0",
        doc_string="model doc",
    )
    model.model_version = 7
    model.metadata_props.add(key="author", value="someone")
    return model


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(exported_like_model(), str(path))
    return path


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def apply_repo_recipe(name: str, folder: Path):  # type: ignore[no-untyped-def]
    """Copy ``recipes/<name>``, build the example model it names (surgeon.examples) next to it and
    apply it with verification on. Returns (pipeline result, saved output proto)."""
    import shutil

    from surgeon.examples import build_all
    from surgeon.recipe import load_recipe

    recipe_path = folder / name
    shutil.copy(Path(__file__).parents[1] / "recipes" / name, recipe_path)
    recipe = load_recipe(recipe_path)
    assert recipe.model is not None and recipe.output is not None
    build_all(folder, [recipe.model.name])
    result = recipe.pipeline.apply(recipe.model, recipe.output, base_dir=recipe.base_dir)
    return result, onnx.load(str(recipe.output))
