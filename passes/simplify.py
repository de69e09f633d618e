"""Simplify the graph with onnx-simplifier (onnxsim)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from surgeon.errors import PassError, PassPreconditionError, short_error
from surgeon.ir.model import PROTOBUF_LIMIT
from surgeon.ir.walk import signature
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.fold import FoldBrokeGraph, fold
from surgeon.passkit.ops import names, require_names
from surgeon.verify.contract import IOContract, io_types, unknown_axes

if TYPE_CHECKING:
    import onnx

    from surgeon.ir.adapter import ModelIR

INLINE_CALL_LIMIT = PROTOBUF_LIMIT - 10_000
"""The largest model handed to onnxsim as one message (in memory, or a file with its weights
inline). Kept a margin below protobuf's limit: onnxsim serialises that message and parses the one
it makes, which can be a little larger (shape inference adds value_info), so a model at the very
edge goes through files with external data instead of failing in onnxsim."""


def graph_key(graph: onnx.GraphProto) -> tuple[Any, ...]:
    """What a proto-level rewrite can change: nodes (op, wiring, attributes; not node names),
    initializers (name, type, shape) and the graph's I/O."""
    nodes = tuple(
        (n.domain, n.op_type, tuple(n.input), tuple(n.output), tuple(a.SerializeToString() for a in n.attribute))
        for n in graph.node
    )
    inits = tuple(sorted((t.name, t.data_type, tuple(t.dims)) for t in graph.initializer))
    io_ = tuple(v.SerializeToString() for v in list(graph.input) + list(graph.output))
    return nodes, inits, io_


@register_pass("simplify")
class Simplify(Pass):
    """Simplify the graph with onnx-simplifier: constant folding, shape inference, onnx-optimizer fusions.

    Inputs stay inputs (an input with an initializer default is hidden from onnxsim, which would
    fold it as a constant, and restored afterwards); symbolic input/output dims stay symbolic unless
    ``input_shapes`` fixes them. onnxsim's own random-input check is off (``check_n=0``): the
    surgeon verifier checks the result. Where onnxsim fails (it does on some If/Loop bodies that
    read outer-scope values), the pass folds constants itself (as ``fold-constants``, constant work
    inside If/Loop bodies included; around a node onnxruntime cannot run alone, with basic
    partitioning) and removes dead nodes instead, and its notes say so.

    Weights: onnxsim's C++ core holds every weight in memory while it works (library
    limitation). A model with external data is handed to onnxsim as a file (its path-based entry
    point reads the weights itself, and writes results over the 2 GB protobuf limit with external
    data), never as one protobuf message; surgeon itself does not load the weights into Python:
    result tensors byte-equal to a source weight are pointed back at the source file (compared in
    chunks), only tensors onnxsim created or changed are kept in memory.

    Contract: same interface (with ``input_shapes``: those dims become static), outputs equal
    within the pipeline tolerance (folding and fusion reorder float arithmetic).
    """

    class Params(PassParams):
        optimize: bool = Field(True, description="run onnx-optimizer's fusion and elimination passes")
        skip_optimizers: list[str] = Field(
            default_factory=list, description="onnx-optimizer passes not to run, by name (e.g. fuse_bn_into_conv)"
        )
        constant_folding: bool = Field(True, description="fold nodes whose inputs are all constant")
        shape_inference: bool = Field(True, description="run shape inference (turn off if it crashes on the model)")
        input_shapes: dict[str, list[int]] = Field(
            default_factory=dict,
            description="input name -> static shape; makes those dims static (verify.dims must match)",
        )
        max_tensor_size: str = Field(
            "1.5GB",
            pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB)?$",
            description="folded tensors larger than this stay unfolded (e.g. '64MB')",
        )
        include_subgraphs: bool = Field(False, description="also simplify If/Loop/Scan bodies")

    params: Params

    def requires(self, model: ModelIR) -> None:
        g = model.graph
        require_names(self.params.input_shapes, names(g.inputs), "input", "input_shapes")
        for name, shape in self.params.input_shapes.items():
            t = next(t for t in g.inputs if t.name == name)
            if t.shape is not None and len(t.shape) != len(shape):
                raise PassPreconditionError(
                    f"input_shapes['{name}'] has {len(shape)} dims but the input has rank "
                    f"{len(t.shape)} ({list(t.shape)})",
                    field=("input_shapes", name),
                )
            if any(d <= 0 for d in shape):
                raise PassPreconditionError(
                    f"input_shapes['{name}'] = {shape}: every dim must be positive", field=("input_shapes", name)
                )

    def run(self, model: ModelIR) -> PassResult:
        from surgeon.ir.external import is_external
        from surgeon.ir.walk import iter_model_tensors

        proto = model.to_proto()
        io_before = io_types(model.graph)
        before = graph_key(proto.graph)
        work = _copy(proto)
        hidden = _hide_input_defaults(work)
        # IR < 4 requires every initializer to be an input; onnxsim's new constants are not
        work.ir_version = max(work.ir_version, 4)
        external = any(is_external(t) for t in iter_model_tensors(work))
        try:
            result = (
                self._via_files(model, work) if external or work.ByteSize() > INLINE_CALL_LIMIT else self._call(work)
            )
        except OnnxsimFailed as exc:
            return self._fallback(model, exc)
        result.graph.initializer.extend(hidden)
        _restore_io(proto.graph, result.graph, set(self.params.input_shapes))
        if graph_key(result.graph) == before:
            return PassResult(False, IOContract())
        model.replace_graph(result)
        contract = IOContract()
        if self.params.input_shapes:  # the shapes given, and the output dims they fix, become known
            contract.declare_changes(io_before, io_types(model.graph), axes=unknown_axes(io_before))
        return PassResult(True, contract, notes=_notes(proto.graph, result.graph, hidden))

    def _fallback(self, model: ModelIR, failure: OnnxsimFailed) -> PassResult:
        """Where onnxsim fails (e.g. on If/Loop bodies that read outer-scope values), do what surgeon
        can itself: fold constants (subgraphs too), then remove dead nodes and sort."""
        if self.params.input_shapes:
            raise PassError(f"{failure}; input_shapes needs onnxsim (fix-dims binds input dims without it)")
        g = model.graph
        before, n_before = signature(g), len(g.nodes)
        try:
            if self.params.constant_folding:
                limit = size_bytes(self.params.max_tensor_size)
                try:
                    fold(model, max_tensor_bytes=limit)
                except FoldBrokeGraph:
                    raise
                except PassError:  # a node onnxruntime cannot run alone: fold what it can around it
                    fold(model, max_tensor_bytes=limit, partitioning="basic")
            g.cleanup(recurse_subgraphs=True)
            g.toposort(recurse_subgraphs=True)
        except PassError as exc:
            raise PassError(f"{failure}; the fallback failed too: {exc}") from None
        except Exception as exc:  # onnx-graphsurgeon reports cycles as plain exceptions
            raise PassError(f"{failure}; the fallback failed too: {short_error(exc)}") from None
        orphans, model.orphans = model.orphans, []
        modified = signature(g) != before or bool(orphans)
        what = "folded constants and removed dead nodes" if self.params.constant_folding else "removed dead nodes"
        notes = [f"{failure.reason}; {what} instead", f"nodes {n_before} -> {len(g.nodes)}"]
        return PassResult(modified, IOContract(), notes)

    def _kwargs(self) -> dict[str, Any]:
        p = self.params
        return {
            "check_n": 0,
            "perform_optimization": p.optimize,
            "skipped_optimizers": list(p.skip_optimizers),
            "skip_constant_folding": not p.constant_folding,
            "skip_shape_inference": not p.shape_inference,
            "overwrite_input_shapes": {k: list(v) for k, v in p.input_shapes.items()} or None,
            "tensor_size_threshold": p.max_tensor_size.replace(" ", ""),
            "include_subgraph": p.include_subgraphs,
        }

    def _call(self, source: onnx.ModelProto | str, output_path: str | None = None) -> onnx.ModelProto:
        import onnxsim

        kwargs = self._kwargs()
        if output_path is not None:
            kwargs["output_path"] = output_path
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                result, _ = onnxsim.simplify(source, **kwargs)
        except Exception as exc:  # onnxsim raises plain exceptions (and C++ errors)
            raise OnnxsimFailed(" ".join(str(exc).split())[:300] or type(exc).__name__) from None
        return result

    def _via_files(self, model: ModelIR, work: onnx.ModelProto) -> onnx.ModelProto:
        """Simplify through files so no protobuf message holds the weights (2 GB limit)."""
        import onnx

        with tempfile.TemporaryDirectory(prefix="surgeon-simplify-") as tmp:
            out_path = Path(tmp) / "out.onnx"
            with _input_file(model, work, Path(tmp)) as in_path:
                self._call(str(in_path), str(out_path))
            result = onnx.load(str(out_path), load_external_data=False)
            _reconcile(result, out_path.parent, work, model.base_dir)
        return result


class OnnxsimFailed(PassError):
    """onnxsim raised: ``simplify`` falls back to surgeon's own folding and cleanup."""

    def __init__(self, detail: str) -> None:
        self.reason = f"onnxsim failed ({detail})"
        super().__init__(f"onnxsim failed: {detail}")


_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def size_bytes(text: str) -> int:
    """``'1.5GB'`` -> bytes (the units onnxsim's tensor_size_threshold takes)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB)?", text.strip())
    if m is None:
        raise PassError(f"not a size: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2) or "B"])


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def _hide_input_defaults(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Remove initializers that are also graph inputs (onnxsim folds them as constants even with
    ``mutable_initializer``); returns them so they can be put back."""
    import onnx

    inputs = {v.name for v in proto.graph.input}
    hidden: list[onnx.TensorProto] = []
    keep: list[onnx.TensorProto] = []
    for t in proto.graph.initializer:
        (hidden if t.name in inputs else keep).append(t)
    if hidden:
        copies = []
        for t in hidden:
            c = onnx.TensorProto()
            c.CopyFrom(t)
            copies.append(c)
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
        return copies
    return []


def _restore_io(before: onnx.GraphProto, after: onnx.GraphProto, fixed: set[str]) -> None:
    """Put back input types (unless fixed by ``input_shapes``) and symbolic output dims onnxsim
    renamed, dropped or made static (the interface keeps its symbols; inputs fixed by
    ``input_shapes`` let output dims become static)."""
    old_in = {v.name: v for v in before.input}
    for vi in after.input:
        if vi.name in old_in and vi.name not in fixed:
            vi.type.CopyFrom(old_in[vi.name].type)
    old_out = {v.name: v for v in before.output}
    for vi in after.output:
        old = old_out.get(vi.name)
        if old is None or not old.type.HasField("tensor_type") or not old.type.tensor_type.HasField("shape"):
            continue
        odims = old.type.tensor_type.shape.dim
        if not vi.type.tensor_type.HasField("shape") or len(vi.type.tensor_type.shape.dim) != len(odims):
            vi.type.CopyFrom(old.type)
            continue
        for od, nd in zip(odims, vi.type.tensor_type.shape.dim):
            if od.dim_param and nd.dim_param != od.dim_param and not (fixed and nd.HasField("dim_value")):
                nd.dim_param = od.dim_param


@contextlib.contextmanager
def _input_file(model: ModelIR, work: onnx.ModelProto, tmp: Path) -> Any:
    """The model as a file onnxsim can open: beside its weights (a hidden temporary file) when
    that folder is writable and the rest fits in one message, else saved with external data."""
    base = model.base_dir
    if base is not None and os.access(base, os.W_OK) and work.ByteSize() < INLINE_CALL_LIMIT:
        fd, name = tempfile.mkstemp(prefix=".surgeon-simplify-", suffix=".onnx", dir=base)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(work.SerializeToString())
            yield Path(name)
        finally:
            Path(name).unlink(missing_ok=True)
        return
    from surgeon.ir.external import check_external_data
    from surgeon.ir.model import Model
    from surgeon.ir.save import SavePolicy, save

    src = Model(work, base_dir=base, data_files=check_external_data(work, base, "<model>"))
    path = tmp / "in.onnx"
    save(src, path, SavePolicy(external="always"))
    yield path


def _reconcile(result: onnx.ModelProto, out_dir: Path, work: onnx.ModelProto, base_dir: Path | None) -> None:
    """Point result tensors byte-equal to a source weight back at the source file; read the
    other externally stored results (onnxsim's temporary output) into memory."""
    from surgeon.ir.external import inline_copy, is_external, tensor_digest
    from surgeon.ir.walk import iter_graph_tensors

    sources = {t.name: t for t in iter_graph_tensors(work.graph) if is_external(t)}
    for t in iter_graph_tensors(result.graph):
        src = sources.get(t.name)
        if src is not None and src.data_type == t.data_type and list(src.dims) == list(t.dims):
            mine = tensor_digest(t, out_dir)
            if mine is not None and mine == tensor_digest(src, base_dir):
                t.CopyFrom(src)
                continue
        if is_external(t):
            t.CopyFrom(inline_copy(t, out_dir))


def _notes(before: onnx.GraphProto, after: onnx.GraphProto, hidden: list[onnx.TensorProto]) -> list[str]:
    ops_b = Counter(n.op_type for n in before.node)
    ops_a = Counter(n.op_type for n in after.node)
    notes = [f"nodes {len(before.node)} -> {len(after.node)}"]
    gone = ops_b - ops_a
    new = ops_a - ops_b
    if gone:
        notes.append("removed: " + ", ".join(f"{k} x{v}" for k, v in sorted(gone.items())))
    if new:
        notes.append("added: " + ", ".join(f"{k} x{v}" for k, v in sorted(new.items())))
    if hidden:
        notes.append("kept input(s) with defaults unfolded: " + ", ".join(t.name for t in hidden))
    return notes
