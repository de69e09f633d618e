"""The file side of a model: an ``onnx.ModelProto`` loaded *without* its external data, plus the
folder its weights live in (:class:`Model`). ``surgeon.ir.adapter`` turns it into the graph passes edit."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import ModelError, UsageError, short_error
from surgeon.ir.external import check_external_data
from surgeon.ir.files import FILE_KINDS

if TYPE_CHECKING:
    import onnx


@dataclass
class Model:
    """An ONNX model whose external weights stay on disk until something needs them."""

    proto: onnx.ModelProto
    path: Path | None = None
    """The file it was loaded from (None for bytes or a ModelProto)."""
    base_dir: Path | None = None
    """The folder external data locations are relative to."""
    data_files: list[str] = field(default_factory=list)
    """External data files the model references, relative to ``base_dir``."""
    source_external: bool = False
    """Made from a model that stored weights externally (``save: {external: auto}`` keeps it so)."""

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "<model>"

    @property
    def uses_external_data(self) -> bool:
        return bool(self.data_files)

    def sha256(self) -> str:
        """Hash of the model file as stored (not of its external data)."""
        if self.path is not None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return h.hexdigest()
        return hashlib.sha256(self.proto.SerializeToString()).hexdigest()


def load(source: str | Path | bytes | onnx.ModelProto | Model) -> Model:
    """Load a model from a path, serialized bytes or a ModelProto, leaving external data on disk."""
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(source, Model):
        return source
    if isinstance(source, onnx.ModelProto):
        # a private copy: onnx-graphsurgeon edits the protos it imported from in place (folding
        # a constant If renames the source's initializers), and the caller's model is never edited
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        model = Model(proto)
    elif isinstance(source, (bytes, bytearray)):
        try:
            proto = onnx.load_model_from_string(bytes(source))
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"<bytes>: not a valid ONNX model ({short_error(exc)})") from None
        model = Model(proto)
    else:
        path = Path(source)
        _check_model_file(path)
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"{path}: not a valid ONNX model ({short_error(exc)})") from None
        model = Model(proto, path=path, base_dir=path.parent)
    _check_is_model(model)
    model.data_files = check_external_data(model.proto, model.base_dir, model.name)
    return model


PROTOBUF_LIMIT = 2**31 - 1
"""protobuf refuses to parse or serialise a message larger than this: a model file this large is
not a model, and a model saved with its weights inline must stay under it (the one copy of the
limit; saving and the simplify pass import it)."""


def _check_model_file(path: Path) -> None:
    """Refuse what is not a regular file (a FIFO would block the read, a device never ends) and a
    file protobuf cannot parse, from its ``stat`` alone: nothing is opened or read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:  # permission, name too long, embedded NUL...
        raise UsageError(f"{path}: cannot read it ({short_error(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((what for test, what in FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise UsageError(f"{path}: is {kind}, not an ONNX model file")
    if st.st_size > PROTOBUF_LIMIT:
        raise ModelError(
            f"{path}: is {st.st_size} bytes, over protobuf's 2 GiB limit; an ONNX model file must be "
            "smaller (models this large keep their weights in external data files)"
        )


def _check_is_model(model: Model) -> None:
    proto = model.proto
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelError(f"{model.name}: not an ONNX model (no ir_version or graph; is this the right file?)")
    if not proto.graph.output:
        raise ModelError(f"{model.name}: the graph has no outputs")
