"""Ordered passes over one model, each verified against onnxruntime through its contract."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon._version import __version__
from surgeon.errors import SurgeonError, VerificationError
from surgeon.ir.adapter import ModelIR
from surgeon.ir.model import load
from surgeon.ir.save import SavePolicy, check_output_path, save
from surgeon.pass_api import Pass
from surgeon.results import PipelineResult, StepReport, count_nodes, count_ops
from surgeon.verify.compare import Tolerance
from surgeon.verify.config import StepVerify, VerifyConfig
from surgeon.verify.contract import IOContract
from surgeon.verify.verifier import Verifier

if TYPE_CHECKING:
    from surgeon.ir.model import Model


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

    # -- running --------------------------------------------------------------------------------
    def check_requirements(self, model: Model) -> list[str]:
        """Check every step's preconditions at its place in the pipeline, without verifying or
        writing anything. Later steps see what earlier ones made (a name ``rename-io`` gave, an
        output ``add-outputs`` exposed), so each step is applied to a private copy of the graph;
        ``model`` itself is never touched. Returns every problem, one line each."""
        ir = ModelIR.from_model(load(model.proto.SerializeToString()) if model.path is None else load(model.path))
        problems = []
        for step in self.steps:
            try:
                step.pass_(ir, step.message)
            except SurgeonError as exc:
                problems.append(str(exc))
        return problems

    def run(self, model: Any, on_step: Callable[[StepReport], None] | None = None, base_dir: Path | None = None) -> PipelineResult:
        """Apply the passes to ``model`` (path, bytes, ModelProto or Model) and verify them.
        A pass's error keeps its class (and so its exit code), with the step named in its text."""
        source = load(model)
        ir = ModelIR.from_model(source)
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

            def reference() -> None:
                # after the first precondition check, before any edit: the reference run
                nonlocal verifier
                if verifier is None and cfg.mode != "off":
                    verifier = Verifier(source, cfg, base_dir)
                    verifier.reference()

            result = step.pass_(ir, step.message, before_edit=reference)
            seconds = time.perf_counter() - t0
            contracts.append(result.contract)
            tol = tol.loosest(_step_tolerance(step, result.contract, cfg))
            report = StepReport(i, step.pass_.name, step.label, result.modified, before, count_nodes(ir.graph), seconds, notes=list(result.notes))
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
        res = PipelineResult(final, reports, changed_tensors=_changed_tensors(ir), ops_before=count_ops(source.proto.graph))
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
        source = load(model)
        out = Path(output)
        check_output_path(out, [source.path] if source.path else [], in_place)
        result = self.run(source, on_step=on_step, base_dir=base_dir)
        if not result.ok and not force:
            raise VerificationError(
                "verification failed; nothing written (--force writes it anyway):\n" + "\n".join(result.failures()), result
            )
        if self.provenance:
            add_provenance(result.model, source, recipe_text or _dump_recipe(self.to_recipe()))
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


def _dump_recipe(data: Mapping[str, Any]) -> str:
    """A recipe as text for the provenance record: JSON, which every YAML loader reads (only
    ``surgeon.recipe`` knows YAML)."""
    return json.dumps(dict(data), indent=1)


def add_provenance(model: Model, source: Model, recipe_text: str) -> None:
    """Record in the output's metadata_props how it was made: recipe, surgeon version, source hash."""
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

