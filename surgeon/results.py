"""What a pipeline run reports: one :class:`StepReport` per step and the :class:`PipelineResult`
(the data the terminal summary and ``--report`` JSON are made from)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from surgeon.verify.compare import CheckKind, Verdict

if TYPE_CHECKING:
    from surgeon.ir.model import Model
    from surgeon.verify.compare import OutputCheck, StepCheck


@dataclass
class StepReport:
    index: int
    pass_name: str
    label: str
    modified: bool
    nodes_before: int
    nodes_after: int
    seconds: float
    check: StepCheck | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """The pass's own figures (:attr:`surgeon.pass_api.PassResult.details`)."""

    params: dict[str, Any] = field(default_factory=dict)
    """The step as the recipe gives it: the pass's params (defaults left out) and, under
    ``verify``, the step's own verification keywords that were set."""

    structure: dict[str, Any] | None = None
    """Op counts before and after, and for a step that modified the model what it added, removed,
    rewired and renamed, with the changed region (``surgeon.graphdiff.diff``)."""

    @property
    def verdict(self) -> Verdict:
        if self.check is None:
            return Verdict.UNCHANGED if not self.modified else Verdict.NOT_VERIFIED
        if self.check.ok and self.check.outputs and all(o.kind is CheckKind.PROOF for o in self.check.outputs):
            return Verdict.PROVED
        return Verdict.OK if self.check.ok else Verdict.FAIL

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pass": self.pass_name,
            "name": self.label,
            "modified": self.modified,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "seconds": round(self.seconds, 4),
            "verdict": self.verdict.value,
            "max_abs_error": self.check.max_abs if self.check else None,
            "outputs": [o.as_dict() for o in self.check.outputs] if self.check else [],
            "sizes": list(self.check.sizes) if self.check else [],
            "divergence": self.check.divergence.as_dict() if self.check and self.check.divergence else None,
            "notes": self.notes,
            "params": self.params,
            "details": self.details,
            "structure": self.structure,
        }


@dataclass
class PipelineResult:
    model: Model
    steps: list[StepReport]
    device: str = ""
    final_check: StepCheck | None = None
    changed_tensors: set[str] = field(default_factory=set)
    checker: str = ""
    """What ``onnx.checker.check_model(full_check=True)`` said of the saved model (empty: not saved)."""
    default_session: str = ""
    """The model loaded and run once at onnxruntime's default optimization level in a child
    process before it was written: "ran", "skipped (...)" or "FAIL: <line>" (empty: not run)."""
    sizes: list[str] = field(default_factory=list)
    """The size chosen for each symbolic dim of the source's inputs, and why ("batch=1 (default)")."""
    values: list[str] = field(default_factory=list)
    """How integer inputs' values were chosen ("ids in [0, 30) (indexes 'emb' (30 rows))")."""
    ops_before: dict[str, int] = field(default_factory=dict)
    """Op histogram of the source model (every graph, subgraphs included)."""
    models: dict[str, Any] = field(default_factory=dict)
    """The source's identity (``before``: name, producer, IR, opsets, inputs and outputs with
    their types, sha256) and the result's (``after``), by :func:`model_identity`."""
    export: dict[str, Any] | None = None
    """The recipe's ``source:`` export, verified against torch before the first pass (exporter,
    ok, outputs, warnings, notes); None when the model came from a file."""

    @property
    def ops_after(self) -> dict[str, int]:
        return count_ops(self.model.proto.graph)

    @property
    def ok(self) -> bool:
        checks = [s.check for s in self.steps if s.check] + ([self.final_check] if self.final_check else [])
        return all(c.ok for c in checks) and not self.default_session.startswith("FAIL")

    def failures(self) -> list[str]:
        lines = []
        if self.default_session.startswith("FAIL: "):
            lines.append(self.default_session.removeprefix("FAIL: "))
        for s in self.steps:
            if s.check and not s.check.ok:
                for o in s.check.failures():
                    lines.append(f"passes[{s.index}] ({s.pass_name}): {_what(o)}: {_describe(o)}")
                if s.check.divergence is not None:
                    lines.append(f"passes[{s.index}] ({s.pass_name}): {s.check.divergence.line()}")
        if self.final_check and not self.final_check.ok:
            for o in self.final_check.failures():
                lines.append(f"end of pipeline: {_what(o)}: {_describe(o)}")
            if self.final_check.divergence is not None:
                lines.append(f"end of pipeline: {self.final_check.divergence.line()}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "device": self.device,
            "sizes": self.sizes,
            "values": self.values,
            "steps": [s.as_dict() for s in self.steps],
            "final_check": [o.as_dict() for o in self.final_check.outputs] if self.final_check else None,
            "onnx_checker": self.checker or None,
            "default_session": self.default_session or None,
            "final_divergence": self.final_check.divergence.as_dict()
            if self.final_check and self.final_check.divergence
            else None,
            "ops": {"before": self.ops_before, "after": self.ops_after},
            "models": self.models,
            "export": self.export,
        }


def _what(check: OutputCheck) -> str:
    """A check as a failure line names it: an output by its name, the other kinds (interface,
    probe, proof) by what their name already says (``interface: input 'x'``, ``probe batch=3: y ...``)."""
    return f"output '{check.name}'" if check.kind is CheckKind.OUTPUT else check.name


def _describe(o: Any) -> str:
    if o.note and not o.max_abs:
        return o.note
    text = f"max abs error {o.max_abs:.3g}, max rel error {o.max_rel:.3g} > atol {o.atol:g} + rtol {o.rtol:g}"
    return f"{text}; {o.note}" if o.note else text


def count_nodes(graph: Any) -> int:
    return len(graph.nodes)


def count_ops(graph: Any) -> dict[str, int]:
    """Op histogram of an ``onnx.GraphProto`` and its subgraphs, most frequent first
    (``domain::Op`` outside the default domain)."""
    from collections import Counter

    from surgeon.ir.walk import iter_proto_graphs

    counts = Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        for g in iter_proto_graphs(graph)
        for n in g.node
    )
    return dict(counts.most_common())


HASH_LIMIT = 512 << 20
"""Model files hashed for the report at most (bigger ones: no sha256 in the report)."""


def model_identity(model: Model) -> dict[str, Any]:
    """What identifies a model in a report: its file and hash, graph name, producer, IR version,
    opsets, node count, and its inputs and outputs with their element types and shapes."""
    from onnx import TensorProto

    proto = model.proto

    def io(values: Any) -> list[dict[str, Any]]:
        out = []
        for vi in values:
            tt = vi.type.tensor_type
            dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim]
            dtype = TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else vi.type.WhichOneof("value")
            out.append({"name": vi.name, "dtype": dtype, "shape": dims if tt.HasField("shape") else None})
        return out

    weights = {t.name for t in proto.graph.initializer}
    digest = None
    if model.path is not None:
        try:
            if model.path.stat().st_size <= HASH_LIMIT:
                digest = model.sha256()
        except OSError:
            digest = None
    return {
        "path": str(model.path) if model.path is not None else None,
        "sha256": digest,
        "graph": proto.graph.name,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "ir_version": proto.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "nodes": len(proto.graph.node),
        "inputs": io(vi for vi in proto.graph.input if vi.name not in weights),
        "outputs": io(proto.graph.output),
    }
