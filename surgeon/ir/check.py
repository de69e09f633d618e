"""``onnx.checker.check_model(full_check=True)`` on model files, without reading external weights
and, above a size, not at all (the checker holds the whole model file in memory)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import short_error
from surgeon.ir.external import external_ref, set_external_ref
from surgeon.ir.walk import external_tensors

if TYPE_CHECKING:
    import onnx

    from surgeon.ir.model import Model

FULL_CHECK_LIMIT = 512 << 20
"""Model files (inline weights included, external data not) above this many bytes are not checked."""


PROOF_CHECK_NODES = 20_000
"""Graphs with more main-graph nodes than this, proved node for node the source's, are not handed
to ``onnx.checker`` whole: it costs 1.8 s and 170 MB at 100 000 nodes, more than the rest of an
interface recipe. What the proof does not cover is checked (:func:`interface_problem`)."""


def interface_problem(proto: onnx.ModelProto) -> str | None:
    """What ``onnx.checker.check_model(full_check=True)`` says of the parts of a model a structural
    proof does not compare: the graph's name, the main graph's input and output declarations
    (``check_value_info``) and the model's metadata keys. None when they pass."""
    import onnx

    if not proto.graph.name:
        return "Field 'name' of 'graph' is required to be non-empty."
    keys = [p.key for p in proto.metadata_props]
    if len(set(keys)) != len(keys):
        return "Your model has duplicate keys in metadata_props."
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = proto.ir_version
    ctx.opset_imports = {o.domain: o.version for o in proto.opset_import}
    for vi in [*proto.graph.input, *proto.graph.output]:
        try:
            onnx.checker.check_value_info(vi, ctx)
        except Exception as exc:  # ValidationError
            return short_error(exc)
    return None


def too_big_to_check(model: Model | Path) -> bool:
    """Whether the model file (or, for a model in memory, its proto) is over :data:`FULL_CHECK_LIMIT`."""
    if isinstance(model, Path):
        return model.stat().st_size > FULL_CHECK_LIMIT
    # the model as loaded, not its file now: another process may have replaced that since
    return model.proto.ByteSize() > FULL_CHECK_LIMIT


def full_check(path: Path) -> str | None:
    """Run the full checker on the model file at ``path``: None when it passes, else the first
    line of its complaint. External data files are not read; where the checker wants them in
    place and they are not (a model file saved under a temporary name while its data files
    wait for their rename, or the like), it checks a copy pointing at an empty stand-in file."""
    import onnx

    problem = _run(str(path))
    if problem is None:
        return None
    proto = onnx.load(str(path), load_external_data=False)
    if not external_tensors(proto):
        return problem
    return _run_standalone(proto)


def _run_standalone(proto: onnx.ModelProto) -> str | None:
    """The full checker on ``proto`` written to a private folder, every external tensor pointing
    at an empty stand-in file there: nothing outside that folder is read."""
    proto = _copy(proto)
    external = external_tensors(proto)
    with tempfile.TemporaryDirectory(prefix="surgeon-check-") as tmp:
        folder = Path(tmp)
        (folder / "weights.data").write_bytes(b"")
        for t in external:
            ref = external_ref(t)
            set_external_ref(t, type(ref)("weights.data", ref.offset, ref.length))
        copy = folder / "model.onnx"
        copy.write_bytes(proto.SerializeToString())
        return _run(str(copy))


def model_full_check(model: Model) -> str | None:
    """:func:`full_check` for a loaded model: the model *as it was loaded* (its proto in memory,
    external weights pointed at a stand-in), never its file re-read. The file may have been
    replaced since — by another in-place run, say, while this one ran — and its verdict is not
    this model's: with the file re-read, a source that failed the checker could pass it, and the
    pipeline's output, failing as its source does, was blamed on the last step (exit 1, even with
    verification off)."""
    return _run_standalone(model.proto)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _run(path: str) -> str | None:
    import onnx

    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, and whatever C++ raises
        return short_error(exc)
    return None
