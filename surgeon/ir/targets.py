"""Where a save may write: the output model, its data file(s) and nothing else.

Every output path is checked before any work starts. A data file name is always one that no
file on disk has (so no model that exists refers to it): the output model's rename is the
commit point of a save, and until then the previous (model, data) pair is intact.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import ModelError, UsageError
from surgeon.ir.external import external_ref, safe_data_path
from surgeon.ir.files import check_target, fresh_name
from surgeon.ir.walk import external_tensors, unused_name

if TYPE_CHECKING:
    import onnx

    from surgeon.ir.model import Model
    from surgeon.ir.policy import SavePolicy

_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
MAX_NAME = 200


def same_file(a: Path, b: Path) -> bool:
    """One path (its folder resolved), or two paths to one file. The paths are compared first:
    two stats of one path see two files while another writer replaces it (an --in-place run
    refused its own input as "a file this run reads")."""
    if write_location(a) == write_location(b):
        return True
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def write_location(path: Path) -> Path:
    """Where a write to ``path`` lands: its folder resolved, its own name kept (a symlink there is
    replaced by the write, never followed)."""
    try:
        return path.parent.resolve() / path.name
    except OSError:
        return Path(os.path.abspath(path))


@dataclass(frozen=True)
class Target:
    """A file a run will write, and how messages name it. ``replaces``: the input this target may
    replace (the output model written in place, ``--in-place``)."""

    path: Path
    what: str
    replaces: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.what} {self.path}" if self.what else str(self.path)


def guard_writes(targets: Sequence[Target], reads: Sequence[Path | None] = ()) -> None:
    """The one check of every file a run writes, made before any work starts (UsageError, exit 2):
    each target passes :func:`check_target`; none is a file the run reads (``reads``: input
    models, their weights, the recipe) unless it ``replaces`` that input, and no two targets are
    the same file. An error about a target writes nothing: callers run this before any work."""
    seen: dict[Path, Target] = {}
    for t in targets:
        check_target(t.path, t.label)
        key = write_location(t.path)
        other = seen.get(key) or next((o for k, o in seen.items() if k.exists() and same_file(k, key)), None)
        if other is not None:
            raise UsageError(f"{t.label}: is also {other.label}; two outputs of one run cannot be the same file")
        seen[key] = t
        for src in reads:
            if src is None or (t.replaces is not None and same_file(src, t.replaces)):
                continue
            if key == write_location(src) or same_file(t.path, src):
                raise UsageError(f"{t.label}: is {src}, a file this run reads; refusing to overwrite it")


def referenced_files(model_file: Path) -> set[Path]:
    """The data files (resolved) an existing model file refers to; none when it is not a model."""
    import onnx

    if not model_file.is_file() or model_file.stat().st_size >= 2**31:
        return set()
    if not _may_refer(model_file):
        return set()
    try:
        proto = onnx.load(str(model_file), load_external_data=False)
    except Exception:  # not a model (or not one onnx can read): it refers to nothing
        return set()
    return proto_files(proto, model_file.parent)


_LOCATION_KEY = b"\x0a\x08location"
"""How protobuf writes the key ``location`` of an external data entry (field 1, 8 bytes)."""


def _may_refer(model_file: Path, chunk: int = 1 << 20) -> bool:
    """Whether the file may hold an external data reference: its bytes hold the entry key
    ``location`` somewhere. Read in chunks (never the whole file at once), and nothing parsed: a
    model file without external data (most, and every big graph with tiny weights) is ruled out
    without building its protobuf."""
    tail = b""
    try:
        with open(model_file, "rb") as f:
            while block := f.read(chunk):
                if _LOCATION_KEY in tail + block[: len(_LOCATION_KEY)] or _LOCATION_KEY in block:
                    return True
                tail = block[-len(_LOCATION_KEY) + 1 :]
    except OSError:
        return True  # let the load say what it can
    return False


def proto_files(proto: onnx.ModelProto, folder: Path) -> set[Path]:
    files = set()
    for t in external_tensors(proto):
        try:
            files.add(safe_data_path(folder, external_ref(t).location, str(folder)))
        except ModelError:
            continue
    return files


def model_data_files(model: Model) -> set[Path]:
    if model.base_dir is None:
        return set()
    return {safe_data_path(model.base_dir, f, model.name) for f in model.data_files}


def check_location(out: Path, policy: SavePolicy, model: Model, protect: Sequence[Path], previous: set[Path]) -> None:
    """Refuse a ``save.location`` that would overwrite anything but the output's own previous data."""
    if policy.location is None:
        return
    loc = policy.location
    path = safe_data_path(out.parent, loc, f"{out}: save.location")
    if policy.one_file_per_tensor:
        return
    what = f"{out}: save.location '{loc}'"
    check_target(path, what)
    if same_file(path, out):
        raise UsageError(f"{what}: is the output model itself")
    if path in previous:
        return  # the output's own data: the new data goes to a fresh name, the old file goes after
    if path in model_data_files(model):
        if policy.share_weights and model.base_dir is not None and same_file(model.base_dir, out.parent):
            raise ModelError(f"{what}: is the shared source weights file")
        raise UsageError(
            f"{what}: is the weights file of the source model; writing it would corrupt the source "
            "(choose another save.location, or write in place with --in-place)"
        )
    for p in protect:
        if same_file(p, path):
            raise UsageError(f"{what}: is {p}, a file this run reads; refusing to overwrite it")
    if os.path.lexists(path):
        raise UsageError(
            f"{what}: is an existing file that is not this output's data; surgeon never overwrites a "
            "file it was not asked to write (choose another save.location)"
        )


def data_location(out: Path, policy: SavePolicy) -> str:
    """The data file name the new model refers to: ``save.location`` (default ``<out>.data``)
    when no file has it, else a fresh ``<stem>.<8 hex>.<suffix>`` beside it."""
    loc = policy.location or f"{out.name}.data"
    return fresh_name(out.parent, loc) if os.path.lexists(out.parent / loc) else loc


class TensorFileNames:
    """File names for ``one_file_per_tensor``: sanitised tensor names, unique case-insensitively,
    never the name of a file in the folder (nor of the output model)."""

    def __init__(self, out: Path) -> None:
        self.used = {n.lower() for n in os.listdir(out.parent)} | {out.name.lower()}

    def __call__(self, tensor_name: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", tensor_name).lstrip(".")[:MAX_NAME] or "tensor"
        if stem.split(".")[0].lower() in _RESERVED:
            stem = f"_{stem}"
        name = unused_name(stem, self.used, key=str.lower)
        self.used.add(name.lower())
        return name
