"""Writing models: atomically, with external data when it is needed, copying untouched weights
file-to-file and never through Python objects."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field

from surgeon.errors import ModelError, UsageError
from surgeon.ir.external import (
    ExternalRef,
    copy_range,
    external_ref,
    inline_copy,
    is_external,
    iter_model_tensors,
    safe_data_path,
    set_external_ref,
)

if TYPE_CHECKING:
    import onnx

    from surgeon.ir.model import Model

PROTOBUF_LIMIT = 2**31 - 1
SAFE_INLINE_LIMIT = 2**31 - (64 << 20)
"""Above this many bytes of weights, ``external: auto`` writes external data."""


class SavePolicy(BaseModel):
    """How the output model is written."""

    model_config = ConfigDict(extra="forbid")

    external: Literal["auto", "always", "never"] = Field(
        "auto",
        description="auto: external data when the source used it or the model would pass 2 GB; "
        "always / never force it",
    )
    threshold: int = Field(1024, ge=0, description="tensors of at least this many bytes go to the external data file")
    location: str | None = Field(
        None, description="external data file name, relative to the output (default: '<output file name>.data')"
    )
    one_file_per_tensor: bool = Field(False, description="write each external tensor to its own file")
    share_weights: bool = Field(
        False,
        description="an output written next to its source references the source's weights file "
        "instead of copying it (never for a weight a pass changed)",
    )
    align: int = Field(4096, ge=1, description="alignment of tensors of 1 MiB or more in the data file (for mmap)")


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


def _file_name_for(tensor_name: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", tensor_name).lstrip(".") or "tensor"
    name, i = stem, 1
    while name.lower() in used:
        name, i = f"{stem}_{i}", i + 1
    used.add(name.lower())
    return name


@contextmanager
def _atomic(path: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """A temporary file beside ``path``; renamed over it only when the body succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp_path
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def check_output_path(output: Path, inputs: list[Path], in_place: bool) -> None:
    if not output.parent.is_dir():
        raise UsageError(f"{output}: output folder '{output.parent}' does not exist")
    if output.is_dir():
        raise UsageError(f"{output}: is a folder; give an output file name")
    for src in inputs:
        if src.exists() and output.exists() and os.path.samefile(src, output) and not in_place:
            raise UsageError(f"{output}: is the input model; refusing to overwrite it without --in-place")


def save(model: Model, output: str | Path, policy: SavePolicy | None = None, changed: set[str] | None = None, check: Callable[[Path], None] | None = None) -> list[Path]:
    """Write ``model`` to ``output`` atomically. Returns the files written.

    ``changed`` names tensors whose values a pass replaced (they are never shared with the source).
    ``check`` is called with the complete temporary model file before anything is renamed into
    place; when it raises, nothing is written.
    """
    import onnx

    policy = policy or SavePolicy()
    out = Path(output)
    if not out.parent.is_dir():
        raise UsageError(f"{out}: output folder '{out.parent}' does not exist")
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    external = policy.external == "always" or (
        policy.external == "auto"
        and (model.uses_external_data or model.source_external or _weights_bytes(proto) > SAFE_INLINE_LIMIT)
    )
    pending: list[tuple[Path, Path]] = []
    with ExitStack() as stack:
        if external:
            pending += _write_external(proto, model, out, policy, changed or set(), stack)
        else:
            for t in iter_model_tensors(proto):
                if is_external(t):
                    assert model.base_dir is not None
                    t.CopyFrom(inline_copy(t, model.base_dir))
            if proto.ByteSize() > PROTOBUF_LIMIT:
                raise ModelError(f"{out}: the model is over 2 GB; save it with external data (save: {{external: auto}})")
        f, tmp = stack.enter_context(_atomic(out))
        f.write(proto.SerializeToString())
        pending.append((tmp, out))
    # every file is complete and closed: move them into place, the model file last
    try:
        if check is not None:
            check(tmp)
        for tmp_path, final in pending:
            os.replace(tmp_path, final)
    finally:
        for tmp_path, _ in pending:
            tmp_path.unlink(missing_ok=True)
    return [final for _, final in pending]


def _write_external(
    proto: onnx.ModelProto, model: Model, out: Path, policy: SavePolicy, changed: set[str], stack: ExitStack
) -> list[tuple[Path, Path]]:
    import onnx

    location = policy.location or f"{out.name}.data"
    safe_data_path(out.parent, location, f"{out}: save.location")
    share = (
        policy.share_weights
        and model.base_dir is not None
        and out.parent.resolve() == model.base_dir.resolve()
    )
    sources: dict[str, BinaryIO] = {}
    pending: list[tuple[Path, Path]] = []
    main: tuple[BinaryIO, Path] | None = None
    shared = {external_ref(t).location for t in iter_model_tensors(proto) if share and is_external(t) and t.name not in changed}
    protected = _source_data_files(model, out)
    used_names: set[str] = {out.name.lower()} | {p.name.lower() for p in protected if p.parent == out.parent.resolve()}
    for tensor in iter_model_tensors(proto):
        src_ref = external_ref(tensor) if is_external(tensor) else None
        if src_ref is not None and src_ref.location in shared and tensor.name not in changed:
            continue  # the reference stays as it is: same folder, same file
        if src_ref is None and (tensor.ByteSize() < policy.threshold or tensor.data_type == onnx.TensorProto.STRING):
            continue
        if policy.one_file_per_tensor:
            name = _file_name_for(tensor.name, used_names)
            f, tmp = stack.enter_context(_atomic(out.parent / name))
            pending.append((tmp, out.parent / name))
            _append_tensor(tensor, f, name, model, sources, 1, stack)
        else:
            if main is None:
                if location in shared:
                    raise ModelError(f"{out}: save.location '{location}' is the shared source weights file")
                if (out.parent / location).resolve() in protected:
                    raise UsageError(
                        f"{out}: save.location '{location}' is the weights file of the source model; writing it "
                        "would corrupt the source (choose another save.location, or write in place with --in-place)"
                    )
                main = stack.enter_context(_atomic(out.parent / location))
                pending.append((main[1], out.parent / location))
            align = policy.align if (src_ref and (src_ref.length or 0) >= 1 << 20) or tensor.ByteSize() >= 1 << 20 else 64
            _append_tensor(tensor, main[0], location, model, sources, align, stack)
    return pending


def _source_data_files(model: Model, out: Path) -> set[Path]:
    """Data files the model's tensors read from that the output must not overwrite: all of them,
    unless ``out`` is the model file that uses them (writing in place)."""
    import onnx

    if model.base_dir is None or not model.data_files:
        return set()
    files = {safe_data_path(model.base_dir, f, f"{out}") for f in model.data_files}
    if out.is_file():
        try:
            current = onnx.load(str(out), load_external_data=False)
        except Exception:  # not a model: nothing of the source's is owned by it
            return files
        for t in iter_model_tensors(current):
            if is_external(t):
                files.discard((out.parent / external_ref(t).location).resolve())
    return files


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
