"""Ordered passes over one model, each verified against onnxruntime through its contract."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.contract import IOContract, Tolerance
from surgeon.errors import PassError, PassPreconditionError, SurgeonError, VerificationError
from surgeon.pass_api import Pass, get_pass
from surgeon.save import SavePolicy
from surgeon.verify import StepCheck, StepVerify, Verifier, VerifyConfig

if TYPE_CHECKING:
    from surgeon.model import Model, ModelIR

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One pass in a pipeline, with its step keywords and where it came from (for messages)."""

    pass_: Pass
    name: str | None = None
    verify: StepVerify | None = None
    where: str = ""
    """``recipe.yaml:7:5: passes[1] (rename-io)`` — prefix of every message about this step."""
    locate: Callable[[tuple[str | int, ...]], str] | None = None
    """Maps a param path to ``file:line:col`` of the recipe node that holds it."""

    @property
    def label(self) -> str:
        return self.name or self.pass_.name

    def message(self, exc: SurgeonError) -> str:
        field_path = getattr(exc, "field", ())
        if self.locate is not None:
            pos = self.locate(tuple(field_path))
            suffix = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in field_path[:1])
            return f"{pos}: {self.where}{suffix}: {exc}"
        return f"{self.where or self.label}: {exc}"


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

    @property
    def verdict(self) -> str:
        if self.check is None:
            return "unchanged" if not self.modified else "not verified"
        return "ok" if self.check.ok else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pass": self.pass_name,
            "name": self.label,
            "modified": self.modified,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "seconds": round(self.seconds, 4),
            "verdict": self.verdict,
            "max_abs_error": self.check.max_abs if self.check else None,
            "outputs": [o.as_dict() for o in self.check.outputs] if self.check else [],
            "notes": self.notes,
        }


@dataclass
class PipelineResult:
    model: Model
    steps: list[StepReport]
    device: str = ""
    final_check: StepCheck | None = None
    changed_tensors: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        checks = [s.check for s in self.steps if s.check] + ([self.final_check] if self.final_check else [])
        return all(c.ok for c in checks)

    def failures(self) -> list[str]:
        lines = []
        for s in self.steps:
            if s.check and not s.check.ok:
                for o in s.check.failures():
                    lines.append(f"passes[{s.index}] ({s.pass_name}): output '{o.name}': {_describe(o)}")
        if self.final_check and not self.final_check.ok:
            for o in self.final_check.failures():
                lines.append(f"end of pipeline: output '{o.name}': {_describe(o)}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "device": self.device,
            "steps": [s.as_dict() for s in self.steps],
            "final_check": [o.as_dict() for o in self.final_check.outputs] if self.final_check else None,
        }


def _describe(o: Any) -> str:
    if o.note and not o.max_abs:
        return o.note
    text = f"max abs error {o.max_abs:.3g}, max rel error {o.max_rel:.3g} > atol {o.atol:g} + rtol {o.rtol:g}"
    return f"{text}; {o.note}" if o.note else text


def count_nodes(graph: Any) -> int:
    return len(graph.nodes)


class Pipeline:
    """Passes applied in order to a model, each verified (``verify.mode: each``) or the whole
    checked once (``end``) against the source model's outputs through the passes' contracts."""

    def __init__(
        self,
        passes: Sequence[Pass | Step],
        verify: VerifyConfig | Mapping[str, Any] | None = None,
        save: SavePolicy | Mapping[str, Any] | None = None,
        provenance: bool = True,
    ) -> None:
        self.steps = [p if isinstance(p, Step) else Step(p, where=f"passes[{i}] ({p.name})") for i, p in enumerate(passes)]
        self.verify = verify if isinstance(verify, VerifyConfig) else VerifyConfig.model_validate(verify or {})
        self.save = save if isinstance(save, SavePolicy) else SavePolicy.model_validate(save or {})
        self.provenance = provenance

    # -- recipes --------------------------------------------------------------------------------
    def to_recipe(self) -> dict[str, Any]:
        """This pipeline as a recipe mapping (defaults left out); ``from_recipe`` reads it back."""
        steps: list[dict[str, Any]] = []
        for s in self.steps:
            entry = s.pass_.to_step()
            if s.verify is not None:
                entry["verify"] = s.verify.model_dump(exclude_defaults=True)
            if s.name:
                entry["name"] = s.name
            steps.append(entry)
        out: dict[str, Any] = {"version": 1}
        verify = self.verify.model_dump(mode="json", exclude_defaults=True)
        if verify:
            out["verify"] = verify
        save = self.save.model_dump(mode="json", exclude_defaults=True)
        if save:
            out["save"] = save
        if not self.provenance:
            out["provenance"] = False
        out["passes"] = steps
        return out

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any]) -> Pipeline:
        from surgeon.recipe import parse_recipe_data

        return parse_recipe_data(dict(recipe), "<recipe>").pipeline

    # -- running --------------------------------------------------------------------------------
    def check_requirements(self, model: Model | ModelIR) -> list[str]:
        """Run every pass (unverified, on a copy) to check its preconditions at its place in the
        pipeline. Returns every problem, one line each."""
        from surgeon.model import Model as _Model

        ir = model.ir() if isinstance(model, _Model) else model
        problems = []
        for step in self.steps:
            try:
                step.pass_.requires(ir)
                step.pass_.run(ir)
            except SurgeonError as exc:
                problems.append(step.message(exc))
        return problems

    def run(self, model: Any, on_step: Callable[[StepReport], None] | None = None, base_dir: Path | None = None) -> PipelineResult:
        """Apply the passes to ``model`` (path, bytes, ModelProto or Model) and verify them."""
        from surgeon.model import load

        source = load(model)
        ir = source.ir()
        cfg = self.verify
        verifier: Verifier | None = None
        tol = Tolerance(cfg.rtol, cfg.atol)
        contracts: list[IOContract] = []
        reports: list[StepReport] = []
        candidate: Model | None = None
        unverified = False  # a modification no check has covered yet
        for i, step in enumerate(self.steps):
            before = count_nodes(ir.graph)
            t0 = time.perf_counter()
            try:
                step.pass_.requires(ir)
            except PassPreconditionError as exc:
                raise PassPreconditionError(step.message(exc), exc.field) from None
            except SurgeonError as exc:
                raise PassError(step.message(exc)) from None
            if verifier is None and cfg.mode != "off":
                # after the first precondition check, before any edit: the reference run
                verifier = Verifier(source, cfg, base_dir)
                verifier.reference()
            try:
                result = step.pass_.run(ir)
            except PassPreconditionError as exc:
                raise PassPreconditionError(step.message(exc), exc.field) from None
            except SurgeonError as exc:
                raise PassError(step.message(exc)) from None
            seconds = time.perf_counter() - t0
            contract = result.contract
            contracts.append(contract)
            tol = tol.loosest(_step_tolerance(step, contract, cfg))
            report = StepReport(i, step.pass_.name, step.label, result.modified, before, count_nodes(ir.graph), seconds, notes=list(contract.notes))
            candidate = None
            if verifier is not None and cfg.mode == "each" and result.modified and not (step.verify and step.verify.skip):
                candidate = ir.to_model()
                report.check = verifier.check(candidate, contracts, tol)
                report.check.outputs += verifier.probe(candidate, contracts, i, tol)
                report.seconds = time.perf_counter() - t0
            unverified = (unverified or result.modified) and report.check is None
            reports.append(report)
            if on_step is not None:
                on_step(report)
        final = candidate or ir.to_model()
        res = PipelineResult(final, reports, changed_tensors=_changed_tensors(ir))
        if verifier is not None:
            if unverified:
                check = verifier.check(final, contracts, tol)
                if cfg.mode == "end":
                    for k in range(len(contracts)):
                        check.outputs += verifier.probe(final, contracts, k, tol)
                res.final_check = check
            res.device = verifier.device_line
        return res

    def apply(self, model: Any, output: str | Path, *, force: bool = False, in_place: bool = False, on_step: Callable[[StepReport], None] | None = None, recipe_text: str | None = None, base_dir: Path | None = None) -> PipelineResult:
        """Run and write the result to ``output`` (only when verification passed, or ``force``)."""
        from surgeon.model import load
        from surgeon.save import check_output_path, save

        source = load(model)
        out = Path(output)
        check_output_path(out, [source.path] if source.path else [], in_place)
        result = self.run(source, on_step=on_step, base_dir=base_dir)
        if not result.ok and not force:
            raise VerificationError(
                "verification failed; nothing written (--force writes it anyway):\n" + "\n".join(result.failures()), result
            )
        if self.provenance:
            add_provenance(result.model, source, recipe_text or _dump_yaml(self.to_recipe()))
        save(result.model, out, self.save, result.changed_tensors)
        return result


def _step_tolerance(step: Step, contract: IOContract, cfg: VerifyConfig) -> Tolerance | None:
    tol = contract.tolerance or step.pass_.tolerance
    if step.verify is not None and (step.verify.rtol is not None or step.verify.atol is not None):
        base = tol or Tolerance(cfg.rtol, cfg.atol)
        tol = Tolerance(
            step.verify.rtol if step.verify.rtol is not None else base.rtol,
            step.verify.atol if step.verify.atol is not None else base.atol,
        )
    return tol


def _changed_tensors(ir: ModelIR) -> set[str]:
    """Constants whose values are in memory (a pass built or replaced them)."""
    import onnx_graphsurgeon as gs

    return {
        name
        for name, t in ir.graph.tensors().items()
        if isinstance(t, gs.Constant) and not isinstance(t._values, gs.ir.tensor.LazyValues)
    }


def _dump_yaml(data: Mapping[str, Any]) -> str:
    from surgeon.yaml12 import dump

    return dump(dict(data))


def add_provenance(model: Model, source: Model, recipe_text: str) -> None:
    """Record in the output's metadata_props how it was made: recipe, surgeon version, source hash."""
    from surgeon import __version__

    entries = {
        "surgeon.version": __version__,
        "surgeon.recipe": recipe_text,
        "surgeon.source_sha256": source.sha256(),
    }
    props = model.proto.metadata_props
    keep = [(p.key, p.value) for p in props if p.key not in entries]
    del props[:]
    for key, value in keep + list(entries.items()):
        props.add(key=key, value=value)


def passes_from_names(names: Sequence[str]) -> list[Pass]:
    return [get_pass(n)() for n in names]
