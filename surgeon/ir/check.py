"""``onnx.checker.check_model(full_check=True)`` on model files, without reading external weights
and, above a size, not at all (the checker holds the whole model file in memory)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import short_error
from surgeon.ir.external import external_ref, is_external, set_external_ref
from surgeon.ir.walk import iter_model_tensors

if TYPE_CHECKING:
    from surgeon.ir.model import Model

FULL_CHECK_LIMIT = 512 << 20
"""Model files (inline weights included, external data not) above this many bytes are not checked."""


def too_big_to_check(model: Model | Path) -> bool:
    """Whether the model file (or, for a model in memory, its proto) is over :data:`FULL_CHECK_LIMIT`."""
    if isinstance(model, Path):
        return model.stat().st_size > FULL_CHECK_LIMIT
    if model.path is not None:
        return model.path.stat().st_size > FULL_CHECK_LIMIT
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
    external = [t for t in iter_model_tensors(proto) if is_external(t)]
    if not external:
        return problem
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
    """:func:`full_check` for a loaded model: its file as it is when it has one (external data in
    place), else the proto in memory."""
    import onnx

    if model.path is not None:
        return full_check(model.path)
    try:
        onnx.checker.check_model(model.proto, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError...
        return short_error(exc)
    return None


def _run(path: str) -> str | None:
    import onnx

    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, and whatever C++ raises
        return short_error(exc)
    return None
