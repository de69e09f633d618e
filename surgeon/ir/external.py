"""External data: find, check, read and copy tensors whose bytes live beside the model.

Weights are never read for nothing: a model is loaded without its external data, tensors keep
their references, and saving copies untouched weights file-to-file (kernel copy where the
platform has one), never through numpy.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, BinaryIO

from surgeon.errors import ModelError, short_error
from surgeon.ir.walk import external_tensors

if TYPE_CHECKING:
    import numpy as np
    import onnx

COPY_CHUNK = 64 << 20


@dataclass(frozen=True)
class ExternalRef:
    """Where one tensor's bytes live: ``location`` relative to the model's folder."""

    location: str
    offset: int
    length: int | None


def is_external(tensor: onnx.TensorProto) -> bool:
    import onnx

    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


MAX_EXTERNAL_INT = 2**63 - 1
"""Offsets and lengths are int64 in onnx and onnxruntime."""


def external_ref(tensor: onnx.TensorProto, what: str | None = None) -> ExternalRef:
    """The reference of an external tensor. A third-party file may hold anything in it: an offset
    or length that is not a non-negative int64 is a :class:`ModelError` naming the tensor
    (``what``, default ``tensor '<name>'``)."""
    info = {e.key: e.value for e in tensor.external_data}
    what = what or f"tensor '{tensor.name}'"
    length = info.get("length")
    return ExternalRef(
        info.get("location", ""),
        _external_int(info.get("offset"), "offset", what) or 0,
        _external_int(length, "length", what),
    )


def _external_int(text: str | None, key: str, what: str) -> int | None:
    if text is None or text == "":
        return None
    value = text.strip()
    if not value.isdigit() or not value.isascii():  # isdigit: no sign, no spaces, no '1e3'
        raise ModelError(f"{what}: external data {key} {text!r} is not a non-negative integer")
    number = int(value)
    if number > MAX_EXTERNAL_INT:
        raise ModelError(f"{what}: external data {key} {text!r} is larger than 2**63-1 (int64)")
    return number


def set_external_ref(tensor: onnx.TensorProto, ref: ExternalRef) -> None:
    import onnx

    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", ref.location), ("offset", ref.offset), ("length", ref.length)):
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)


def safe_data_path(base_dir: Path, location: str, what: str) -> Path:
    """Resolve ``location`` inside ``base_dir``; refuse absolute paths and any ``..`` escape."""
    if not location:
        raise ModelError(f"{what}: external data reference has no location")
    if "\0" in location:
        raise ModelError(f"{what}: external data location {location!r} contains a NUL byte")
    posix, win = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts or ".." in win.parts:
        raise ModelError(
            f"{what}: external data location '{location}' points outside the model's folder; refusing to follow it"
        )
    path = (base_dir / location).resolve()
    root = base_dir.resolve()
    if root != path and root not in path.parents:
        raise ModelError(
            f"{what}: external data location '{location}' resolves outside the model's folder "
            f"(to {path}); refusing to follow it"
        )
    return path


def check_external_data(model: onnx.ModelProto, base_dir: Path | None, model_name: str) -> list[str]:
    """Validate every external reference (inside the folder, file present, range within the
    file) without reading a byte of it. Returns the data files used, relative to ``base_dir``."""
    files: dict[str, int] = {}
    for tensor in external_tensors(model):
        what = f"{model_name}: tensor '{tensor.name}'"
        if base_dir is None:
            raise ModelError(f"{what} stores its data externally, but the model was not loaded from a file")
        ref = external_ref(tensor, what)
        path = safe_data_path(base_dir, ref.location, what)
        if ref.location not in files:
            if not path.exists():
                raise ModelError(f"{what}: external data file '{ref.location}' does not exist")
            if not path.is_file():
                raise ModelError(f"{what}: external data file '{ref.location}' is not a regular file")
            _check_readable(path, ref.location, what)
            files[ref.location] = path.stat().st_size
        end = ref.offset + (ref.length or 0)
        if end > files[ref.location]:
            raise ModelError(
                f"{what}: external data range {ref.offset}..{end} is past the end of "
                f"'{ref.location}' ({files[ref.location]} bytes); the file is truncated"
            )
    return sorted(files)


def _check_readable(path: Path, location: str, what: str) -> None:
    """Open the data file for reading and close it (a regular file: the open does not block):
    permission denied and the like are said at load, naming the file, not later as a model
    that fails on its inputs."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ModelError(
            f"{what}: external data file '{location}' cannot be read: {exc.strerror or short_error(exc)}"
        ) from None
    os.close(fd)


def read_external_bytes(tensor: onnx.TensorProto, base_dir: Path) -> bytes:
    ref = external_ref(tensor)
    path = safe_data_path(base_dir, ref.location, f"tensor '{tensor.name}'")
    with open(path, "rb") as f:
        f.seek(ref.offset)
        data = f.read() if ref.length is None else f.read(ref.length)
    return data


def inline_copy(tensor: onnx.TensorProto, base_dir: Path) -> onnx.TensorProto:
    """A copy of ``tensor`` with its external bytes read into ``raw_data``."""
    import onnx

    out = onnx.TensorProto()
    out.CopyFrom(tensor)
    del out.external_data[:]
    out.data_location = onnx.TensorProto.DEFAULT
    out.raw_data = read_external_bytes(tensor, base_dir)
    return out


def tensor_values(tensor: onnx.TensorProto, base_dir: Path | None) -> np.ndarray:
    """The values of one tensor, reading only its own bytes when they are external."""
    from onnx import numpy_helper

    if is_external(tensor):
        if base_dir is None:
            raise ModelError(f"tensor '{tensor.name}' is external but the model has no folder")
        tensor = inline_copy(tensor, base_dir)
    return numpy_helper.to_array(tensor)


def copy_range(src: BinaryIO, dst: BinaryIO, offset: int, length: int) -> None:
    """Copy ``length`` bytes at ``offset`` of ``src`` to the current end of ``dst``, in the
    kernel where ``os.copy_file_range`` exists, else in bounded chunks."""
    dst.flush()
    remaining = length
    if hasattr(os, "copy_file_range"):
        try:
            src_off, dst_off = offset, dst.tell()
            while remaining:
                n = os.copy_file_range(src.fileno(), dst.fileno(), min(remaining, 1 << 30), src_off, dst_off)
                if n == 0:
                    break
                src_off, dst_off, remaining = src_off + n, dst_off + n, remaining - n
            dst.seek(dst_off)
            if not remaining:
                return
            offset = src_off
        except OSError:
            pass
    src.seek(offset)
    while remaining:
        chunk = src.read(min(remaining, COPY_CHUNK))
        if not chunk:
            raise ModelError(f"external data file '{src.name}' ended early while copying")
        dst.write(chunk)
        remaining -= len(chunk)


def _digest_file(path: Path, offset: int, length: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(left, COPY_CHUNK))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def tensor_digest(tensor: onnx.TensorProto, base_dir: Path | None) -> str | None:
    """sha256 of a tensor's stored bytes (external ranges read in chunks); None when the
    tensor's data is not raw bytes."""
    if is_external(tensor):
        if base_dir is None:
            return None
        ref = external_ref(tensor)
        path = safe_data_path(base_dir, ref.location, f"tensor '{tensor.name}'")
        length = ref.length if ref.length is not None else path.stat().st_size - ref.offset
        return _digest_file(path, ref.offset, length)
    if tensor.HasField("raw_data"):
        return hashlib.sha256(tensor.raw_data).hexdigest()
    return None
