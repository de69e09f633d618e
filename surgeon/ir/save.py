"""Writing models: atomically as a (model, data) pair, with external data when it is needed,
copying untouched weights file-to-file and never through Python objects."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from surgeon.errors import ModelError, short_error
from surgeon.ir.external import (
    ExternalRef,
    copy_range,
    external_ref,
    inline_copy,
    is_external,
    safe_data_path,
    set_external_ref,
)
from surgeon.ir.files import atomic_file, check_commit_allowed, check_target, remove_stale_temps, replace, sync_folder
from surgeon.ir.model import PROTOBUF_LIMIT
from surgeon.ir.policy import SavePolicy
from surgeon.ir.targets import (
    TensorFileNames,
    check_location,
    data_location,
    model_data_files,
    proto_files,
    referenced_files,
    same_file,
)
from surgeon.ir.walk import external_tensors, iter_model_tensors

if TYPE_CHECKING:
    import onnx

    from surgeon.ir.model import Model

__all__ = ["SavePolicy", "save"]
log = logging.getLogger(__name__)

SAFE_INLINE_LIMIT = 2**31 - (64 << 20)
"""Above this many bytes of weights, ``external: auto`` writes external data."""


def _weights_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in iter_model_tensors(model):
        ref = external_ref(t) if is_external(t) else None
        total += ref.length or 0 if ref else t.ByteSize()
    return total


def _tensor_bytes(tensor: onnx.TensorProto) -> bytes:
    from onnx import numpy_helper

    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data


def save(
    model: Model,
    output: str | Path,
    policy: SavePolicy | None = None,
    changed: set[str] | None = None,
    *,
    protect: Sequence[Path] = (),
    in_place: bool | None = None,
    check: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write ``model`` to ``output``. Returns the files written.

    ``changed`` names tensors whose values a pass replaced (they are never shared with the source).
    ``protect`` names files that must never be written or removed (the recipe, the input model
    and its weights). The new data goes to files no model on disk refers to, the model file is
    renamed last (the commit point), and only then are the data files the previous output used,
    and the new one does not, removed — never the source's, unless ``in_place`` (default: the
    model was loaded from ``output``). ``check`` is called with the complete temporary model file
    before anything is renamed into place; when it raises, nothing is written.
    """
    import onnx

    policy = policy or SavePolicy()
    out = Path(output)
    check_target(out, str(out))
    if in_place is None:
        in_place = model.path is not None and same_file(model.path, out)
    previous = referenced_files(out)
    keep = {Path(p).resolve() for p in protect} | (set() if in_place else model_data_files(model))
    check_location(out, policy, model, protect, previous)
    for folder in {out.parent, (out.parent / (policy.location or out.name)).parent}:
        remove_stale_temps(folder)
    # one read-only walk: a Model made by hand may hold external tensors its data_files do not list
    has_external = model.uses_external_data or bool(external_tensors(model.proto))
    big = (has_external or model.proto.ByteSize() > SAFE_INLINE_LIMIT) and (
        _weights_bytes(model.proto) > SAFE_INLINE_LIMIT
    )  # (without external tensors the serialized size bounds the weights: no second walk below it)
    external = policy.external == "always" or (
        policy.external == "auto" and (model.uses_external_data or model.source_external or big)
    )
    if external or has_external:  # the save edits its copy (data moved out, or read in)
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
    else:  # written as it is: no copy of a big graph
        proto = model.proto
    pending: list[tuple[Path, Path]] = []
    with ExitStack() as stack:
        if external:
            pending += _write_external(proto, model, out, policy, changed or set(), stack)
        else:
            for t in iter_model_tensors(proto) if has_external else ():
                if is_external(t):
                    assert model.base_dir is not None
                    t.CopyFrom(inline_copy(t, model.base_dir))
            if proto.ByteSize() > PROTOBUF_LIMIT:
                raise ModelError(
                    f"{out}: the model is over 2 GB; save it with external data (save: {{external: auto}})"
                )
        f, tmp = stack.enter_context(atomic_file(out))
        f.write(proto.SerializeToString())
        pending.append((tmp, out))
    if check is not None:
        try:
            check(tmp)
        except BaseException:
            for tmp_path, _ in pending:
                tmp_path.unlink(missing_ok=True)
            raise
    _commit(pending)
    if previous:  # data files the previous output used and this one does not
        _remove_unreferenced(previous - proto_files(proto, out.parent) - keep, out)
    return [final for _, final in pending]


def _commit(pending: list[tuple[Path, Path]]) -> None:
    """Rename every complete file into place, the model file last: that rename is the commit
    point. Before it, a failure (or Ctrl-C, SIGTERM) removes the new files, which no model uses."""
    *data, (model_tmp, model_out) = pending
    model_ino = os.stat(model_tmp).st_ino
    done: list[Path] = []
    try:
        check_commit_allowed()
        for tmp, final in data:
            replace(tmp, final)
            done.append(final)
        replace(model_tmp, model_out)
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        try:
            committed = os.stat(model_out).st_ino == model_ino
        except OSError:
            committed = False
        if not committed:
            for final in done:
                final.unlink(missing_ok=True)
        raise
    for folder in {final.parent for _, final in pending}:
        sync_folder(folder)


def _remove_unreferenced(files: set[Path], out: Path) -> None:
    """After the commit: the previous output's data files the new model does not use."""
    for path in sorted(files):
        if path == out.resolve():
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("%s: could not remove the previous output's data file %s (%s)", out, path, short_error(exc))


def _write_external(
    proto: onnx.ModelProto, model: Model, out: Path, policy: SavePolicy, changed: set[str], stack: ExitStack
) -> list[tuple[Path, Path]]:
    import onnx

    share = policy.share_weights and model.base_dir is not None and out.parent.resolve() == model.base_dir.resolve()
    sources: dict[str, BinaryIO] = {}
    pending: list[tuple[Path, Path]] = []
    main: tuple[BinaryIO, Path] | None = None
    location = ""
    shared = {
        external_ref(t).location
        for t in iter_model_tensors(proto)
        if share and is_external(t) and t.name not in changed
    }
    names = TensorFileNames(out) if policy.one_file_per_tensor else None
    for tensor in iter_model_tensors(proto):
        src_ref = external_ref(tensor) if is_external(tensor) else None
        if src_ref is not None and src_ref.location in shared and tensor.name not in changed:
            continue  # the reference stays as it is: same folder, same file
        if src_ref is None and (tensor.ByteSize() < policy.threshold or tensor.data_type == onnx.TensorProto.STRING):
            continue
        if names is not None:
            name = names(tensor.name)
            f, tmp = stack.enter_context(atomic_file(out.parent / name))
            pending.append((tmp, out.parent / name))
            _append_tensor(tensor, f, name, model, sources, 1, stack)
        else:
            if main is None:
                location = data_location(out, policy)
                main = stack.enter_context(atomic_file(out.parent / location))
                pending.append((main[1], out.parent / location))
            align = (
                policy.align if (src_ref and (src_ref.length or 0) >= 1 << 20) or tensor.ByteSize() >= 1 << 20 else 64
            )
            _append_tensor(tensor, main[0], location, model, sources, align, stack)
    return pending


def _append_tensor(
    tensor: onnx.TensorProto,
    f: BinaryIO,
    location: str,
    model: Model,
    sources: dict[str, BinaryIO],
    align: int,
    stack: ExitStack,
) -> None:
    pos = f.seek(0, os.SEEK_END)
    if pos % align:
        f.write(b"\0" * (align - pos % align))
        pos = f.tell()
    if is_external(tensor):
        ref = external_ref(tensor)
        assert model.base_dir is not None
        src_path = safe_data_path(model.base_dir, ref.location, f"tensor '{tensor.name}'")
        src = sources.get(ref.location)
        if src is None:
            src = sources[ref.location] = stack.enter_context(open(src_path, "rb"))
        length = ref.length if ref.length is not None else src_path.stat().st_size - ref.offset
        copy_range(src, f, ref.offset, length)
    else:
        data = _tensor_bytes(tensor)
        length = len(data)
        f.write(data)
        for fd in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            tensor.ClearField(fd)  # type: ignore[arg-type]
        tensor.ClearField("raw_data")
    set_external_ref(tensor, ExternalRef(location, pos, length))
