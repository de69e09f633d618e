"""The file side of a model: an ``onnx.ModelProto`` loaded *without* its external data, plus the
folder its weights live in (:class:`Model`). ``surgeon.ir.adapter`` turns it into the graph passes edit."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import ModelError, UsageError, short_error
from surgeon.ir.external import check_external_data

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
        model = Model(source)
    elif isinstance(source, (bytes, bytearray)):
        try:
            proto = onnx.load_model_from_string(bytes(source))
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"<bytes>: not a valid ONNX model ({short_error(exc)})") from None
        model = Model(proto)
    else:
        path = Path(source)
        if not path.exists():
            raise UsageError(f"{path}: no such file")
        if path.is_dir():
            raise UsageError(f"{path}: is a folder, not an ONNX model file")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"{path}: not a valid ONNX model ({short_error(exc)})") from None
        model = Model(proto, path=path, base_dir=path.parent)
    _check_is_model(model)
    model.data_files = check_external_data(model.proto, model.base_dir, model.name)
    return model




def _check_is_model(model: Model) -> None:
    proto = model.proto
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelError(
            f"{model.name}: not an ONNX model (no ir_version or graph; is this the right file?)"
        )
    if not proto.graph.output:
        raise ModelError(f"{model.name}: the graph has no outputs")
