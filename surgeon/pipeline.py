"""Ordered passes over one model, each verified against onnxruntime through its contract."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon._version import __version__
from surgeon.errors import ModelError, SurgeonError, UsageError, VerificationError
from surgeon.graphdiff import Sketch, diff, sketch
from surgeon.ir.adapter import ModelIR
from surgeon.ir.check import (
    FULL_CHECK_LIMIT,
    PROOF_CHECK_NODES,
    full_check,
    interface_problem,
    model_full_check,
    too_big_to_check,
)
from surgeon.ir.model import load
from surgeon.ir.save import SavePolicy, save
from surgeon.ir.targets import (
    Target,
    check_location,
    guard_writes,
    model_data_files,
    referenced_files,
    same_file,
)
from surgeon.pass_api import Pass, PassResult
from surgeon.results import PipelineResult, StepReport, count_ops, model_identity
from surgeon.verify.config import StepVerify, VerifyConfig
from surgeon.verify.contract import IOContract
from surgeon.verify.proof import Proof, Prover, compose, graph_digest, trivial, unprovable_contract
from surgeon.verify.session import VerificationSession, step_tolerance

if TYPE_CHECKING:
    from surgeon.ir.model import Model
    from surgeon.verify.compare import StepCheck


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
        self.steps = [
            p if isinstance(p, Step) else Step(p, where=f"passes[{i}] ({p.name})") for i, p in enumerate(passes)
        ]
        self.verify = verify if isinstance(verify, VerifyConfig) else VerifyConfig.model_validate(verify or {})
        self.save = save if isinstance(save, SavePolicy) else SavePolicy.model_validate(save or {})
        self.provenance = provenance
        self.tolerance_override: dict[str, float] = {}
        """``rtol`` / ``atol`` the user gave for every step (the command line's ``--rtol``/``--atol``):
        they win over step keywords and pass defaults."""

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

    def run(
        self,
        model: Any,
        on_step: Callable[[StepReport], None] | None = None,
        base_dir: Path | None = None,
        sessions: list[VerificationSession] | None = None,
        structure: bool = True,
    ) -> PipelineResult:
        """Apply the passes to ``model`` (path, bytes, ModelProto or Model) and verify them.
        A pass's error keeps its class (and so its exit code), with the step named in its text.
        ``sessions``: the verification session is appended to it (the write's last check uses it).
        ``structure``: each step's structural diff and op counts (:attr:`StepReport.structure`,
        what reports and HTML pages show); off, no step sketches the graph (a quarter of an
        interface recipe's time on a 30 000-node graph)."""
        source = load(model)
        ir = ModelIR.from_model(source, lazy=True)  # imported when a pass first needs the graph
        session = VerificationSession(source, self.verify, base_dir, size_hints(self.steps), self.tolerance_override)
        proofs = Proofs.of(source, self.verify)
        reports: list[StepReport] = []
        shape = sketch(_graph_of(ir)) if structure else None
        for i, step in enumerate(self.steps):
            before = ir.node_count()
            t0 = time.perf_counter()
            # the reference run comes after the first precondition check, before any edit (with
            # proofs, when the first step a proof does not cover needs it)
            first_run = None if proofs is not None and proofs.defer else session.start
            # steps proved on the working model left no copy of it: before a pass that builds the
            # graph (the import costs far more than the copy), the model as it is now is kept, a
            # model that passed: a failure of the pass's run is localized from there
            if proofs is not None and proofs.since and not session.unverified and not ir.built:
                if not getattr(step.pass_, "edits_protobuf", False):
                    session.passed(ir.to_model(), i)
            try:
                result = _with_verification(step, ir, self.verify, self.tolerance_override)(
                    ir, step.message, before_edit=first_run
                )
            except ModelError:
                if session.source_error is not None:
                    raise session.source_error from None
                raise
            report = StepReport(
                i,
                step.pass_.name,
                step.label,
                result.modified,
                before,
                ir.node_count(),
                time.perf_counter() - t0,
                notes=list(result.notes),
                details=dict(result.details),
                params=_step_params(step),
            )
            if shape is not None:
                shape, report.structure = _structure(shape, _graph_of(ir), result.modified)
            report.check = check_step(session, proofs, step, result, ir)
            if report.check is not None:
                report.seconds = time.perf_counter() - t0
            reports.append(report)
            if on_step is not None:
                on_step(report)
        if proofs is not None and proofs.defer and session.unverified and not proofs.only:
            session.start()
        final, check = session.finish(lambda: ir.to_model(final=True))
        res = PipelineResult(
            final, reports, changed_tensors=_changed_tensors(ir), ops_before=count_ops(source.proto.graph)
        )
        res.final_check = check
        res.device, res.sizes, res.values = session.device, session.sizes, session.values
        if sessions is not None:
            sessions.append(session)
        res.models = {"before": model_identity(source), "after": model_identity(final)}
        return res

    def apply(
        self,
        model: Any,
        output: str | Path,
        *,
        force: bool = False,
        in_place: bool = False,
        on_step: Callable[[StepReport], None] | None = None,
        recipe_text: str | None = None,
        base_dir: Path | None = None,
        protect: Sequence[Path] = (),
        guarded: Sequence[Path] | None = None,
        structure: bool = True,
    ) -> PipelineResult:
        """Run and write the result to ``output`` (only when verification passed, or ``force``).

        Every output path is checked before the passes run. ``protect`` names further files that
        must never be written (the recipe); the input model and its weights are never written
        either, unless ``output`` is the input and ``in_place`` is given. ``guarded``: what the
        caller's :meth:`check_targets` returned for this model and output (they are not checked
        again; the save still checks its own files at the commit)."""
        source = load(model)
        out = Path(output)
        if guarded is None:  # else the caller ran check_targets for this source and output
            guarded = list(self.check_targets(source, out, in_place=in_place, protect=protect))
        sessions: list[VerificationSession] = []
        result = self.run(source, on_step=on_step, base_dir=base_dir, sessions=sessions, structure=structure)
        if result.ok and sessions:  # the last check before writing: the runtime's default session, in a child
            result.default_session = sessions[0].default_level(result.model)
        if not result.ok and not force:
            raise VerificationError(
                "verification failed; nothing written (--force writes it anyway):\n" + "\n".join(result.failures()),
                result,
            )
        if self.provenance:
            add_provenance(result.model, source, recipe_text or _dump_recipe(self.to_recipe()))
        writes_source = source.path is not None and same_file(source.path, out)
        save(
            result.model,
            out,
            self.save,
            result.changed_tensors,
            protect=guarded,
            in_place=writes_source,
            check=_checker(source, result, self.steps, out, force, sessions[0].contracts if sessions else []),
        )
        return result

    def check_targets(
        self,
        source: Model | None,
        out: Path | None,
        *,
        in_place: bool = False,
        protect: Sequence[Path] = (),
        extra: Sequence[Target] = (),
    ) -> list[Path]:
        """Check every file this run writes, before any work (``guard_writes``: UsageError, exit 2):
        the output model (not the input unless ``in_place``), its data files (``save.location``),
        and ``extra`` (``--report``), against what the run reads: ``protect`` (the recipe), and the
        input model and its weights. Returns the files the save must never write or remove."""
        src = source.path if source is not None else None
        same = src is not None and out is not None and same_file(src, out)
        if same and not in_place:
            raise UsageError(f"{out}: is the input model; refusing to overwrite it without --in-place")
        if out is not None and out.is_dir():
            raise UsageError(f"{out}: is a folder; give an output file name")
        inputs = [src, *model_data_files(source)] if source is not None and src is not None else []
        targets = ([Target(out, "", replaces=src if same else None)] if out is not None else []) + list(extra)
        guard_writes(targets, [*protect, *inputs])
        guarded = [Path(p) for p in protect] + ([] if same else inputs)
        if out is not None and source is not None:
            check_location(out, self.save, source, guarded, referenced_files(out))
        return guarded


class Proofs:
    """The structural proofs of one run (``verify.prove``, ``verify.mode: proof``): the model
    before the next step, and the prover (:mod:`surgeon.verify.proof`)."""

    def __init__(self, source: Model, only: bool) -> None:
        self.last = source
        """The last model a step was checked on by a run (or the source): what proofs start from."""
        self.since: list[IOContract] = []
        """The contracts of the steps proved since :attr:`last` (a lazy model's steps are proved
        from it through their contracts composed: no copy of the graph is made per step)."""
        self.digest: bytes | None = None
        """The digest of the graph the last live proof read (a step that left it so is proved by
        its model fields alone)."""
        self.only = only
        """``mode: proof``: a step that cannot be proved fails; nothing runs."""
        self.defer = only or source.path is not None
        """The reference run waits for the first step a proof does not cover (never, when every
        step is proved). An in-memory source is snapshot before any edit, as without proofs."""
        self.prover = Prover()

    @classmethod
    def of(cls, source: Model, config: VerifyConfig) -> Proofs | None:
        if config.mode == "proof":
            return cls(source, only=True)
        if config.mode == "off" or not config.prove:
            return None
        return cls(source, only=False)

    def prove(self, after: Model, contract: IOContract, live: bool = False) -> Proof:
        """The step to ``after`` with ``contract``. ``after`` a copy: proved from the last model
        (and it becomes the last). ``live`` (the working model itself, read before its next edit):
        proved from the last model through the contracts of the steps since, composed; a step
        that left the graph as the last live proof read it is proved by its model fields."""
        if live and trivial(contract) and self.digest is not None and graph_digest(after.proto.graph) == self.digest:
            proof = self.prover.model_fields(self.last, after)
        else:
            composed = compose([*self.since, contract]) if self.since else contract
            if composed is None:
                why = unprovable_contract(contract) or "its contract and the steps' before it do not compose"
                return Proof(False, why)
            proof = self.prover.prove(self.last, after, composed)
            if proof.proved and live:
                self.digest = graph_digest(after.proto.graph)
        if not live:
            self.rebase(after)
        elif proof.proved:
            self.since.append(contract)
        return proof

    def rebase(self, model: Model) -> None:
        """``model`` (a copy: the model after a step checked by a run) is where the next proofs start."""
        self.last, self.since, self.digest = model, [], None


def check_step(
    session: VerificationSession, proofs: Proofs | None, step: Step, result: PassResult, ir: ModelIR
) -> StepCheck | None:
    """A step's check: its structural proof when one holds (or, under ``mode: proof``, its refusal
    when none does), else the run ``verify.mode`` asks for."""
    kw: dict[str, Any] = {
        "who": step.where or step.label,
        "default": step.pass_.default_tolerance(ir),
        "verify": step.verify,
    }
    skip = step.verify is not None and step.verify.skip
    candidate: Callable[[], Model] = ir.to_model
    if proofs is not None and result.modified and (proofs.only or not skip):
        live = ir.live_model()  # a lazy model's own message: no copy of the graph per proved step
        after = live or ir.to_model()
        proof = proofs.prove(after, result.contract, live=live is not None)
        if proof.proved:
            return session.after_proof(result.contract, after, proof.check(), live=live is not None, **kw)
        if live is not None:
            after = ir.to_model()
            proofs.rebase(after)
        if proofs.only:
            return session.after_proof(result.contract, after, proof.refusal(), **kw)
        candidate = lambda: after  # noqa: E731 - exported once, for the proof and the run
    if proofs is not None and proofs.defer and not proofs.only and result.modified and not skip:
        if session.config.mode == "each":
            session.start()
    return session.after_step(result.contract, result.modified, candidate, **kw)


def _checker(
    source: Model,
    result: PipelineResult,
    steps: Sequence[Step],
    out: Path,
    force: bool,
    contracts: Sequence[IOContract] = (),
) -> Callable[[Path], None]:
    """The post-save check: the saved model passes ``onnx.checker`` (full check) whenever the source
    does. The source is checked only when the output fails (a failure the source shares is not
    the pipeline's doing). The outcome goes to ``result.checker``; a failure is the fault of the
    last step that modified the model and leaves nothing written (unless ``force``).

    A graph over :data:`PROOF_CHECK_NODES` nodes that is proved the source's node for node (each
    modifying step proved, or the whole run proved through ``contracts`` composed) passes the
    checker wherever the source does, but for what the proof does not compare: that alone is
    checked (:func:`interface_problem`), the checker's cost on the graph is saved."""

    def check(saved: Path) -> None:
        if too_big_to_check(saved) or too_big_to_check(source):
            result.checker = f"skipped: model file over {FULL_CHECK_LIMIT >> 20} MiB"
            return
        proof = _proved_run(source, result, contracts)
        if proof is not None:
            problem = interface_problem(result.model.proto)
            if problem is None:
                result.checker = f"passed (the graph's nodes by structural proof: {proof}; the interface checked)"
                return
            if interface_problem(source.proto) is not None:
                result.checker = "fails, as the source does"
                return
        else:
            problem = full_check(saved)
            if problem is None:
                result.checker = "passed"
                return
            if model_full_check(source) is not None:
                result.checker = "fails, as the source does"
                return
        last = next((steps[r.index] for r in reversed(result.steps) if r.modified), None)
        who = (last.where or last.label) if last else "the round trip (no step modified the model)"
        result.checker = f"FAIL: {problem}"
        if force:
            return
        raise VerificationError(
            f"{out}: the saved model fails onnx.checker.check_model(full_check=True) ({problem}); the source "
            f"passes it; last step that modified the model: {who}; nothing written"
        )

    return check


def _proved_run(source: Model, result: PipelineResult, contracts: Sequence[IOContract]) -> str | None:
    """How the saved graph is known to be the source's node for node (None: it is not, or it is at
    most :data:`PROOF_CHECK_NODES` nodes, where the checker's cost is small and it runs whole)."""
    nodes = len(result.model.proto.graph.node)
    if nodes <= PROOF_CHECK_NODES:
        return None
    modified = [r for r in result.steps if r.modified]
    if modified and all(r.check is not None and r.check.proved for r in modified):
        return f"each of the {len(modified)} step(s) that modified the model was proved"
    contract = compose(contracts) if len(contracts) == len(result.steps) else None
    if contract is None:
        return None
    proof = Prover().prove(source, result.model, contract)
    return f"the run proved as one step, {proof.reason}" if proof.proved else None


def size_hints(steps: Sequence[Step]) -> dict[str, tuple[int, str]]:
    """Sizes the steps will bind (``Pass.bound_sizes``, e.g. fix-dims): the source's feed is made at
    them (the model after such a step accepts no other)."""
    hints: dict[str, tuple[int, str]] = {}
    for i, s in enumerate(steps):
        for key, size in s.pass_.bound_sizes().items():
            hints.setdefault(str(key), (int(size), f"fixed by passes[{i}] ({s.pass_.name})"))
    return hints


def _structure(before: Sketch, graph: Any, modified: bool) -> tuple[Sketch, dict[str, Any]]:
    """A step's structural change (:func:`surgeon.graphdiff.diff`) and op counts before and after
    (the main graph); returns the sketch after it, the next step's before."""
    after = sketch(graph) if modified else before
    data = diff(before, after) if modified else {}
    return after, {"ops_before": before.ops(), "ops_after": after.ops(), **data}


def _with_verification(step: Step, ir: ModelIR, cfg: VerifyConfig, override: Mapping[str, float]) -> Pass:
    """The step's pass, or a copy whose :attr:`~surgeon.pass_api.Pass.verification_params` carry
    the step's verification settings the user set: the step's tolerance (:func:`step_tolerance`,
    where the user set one: the command line's, the step's ``verify:``, the recipe's) and, where
    the params leave them unset, the recipe's ``seed`` and ``dims`` (by symbol), so the pass's own
    check runs on the feed and at the tolerance of the step's."""
    names = type(step.pass_).verification_params
    if not names:
        return step.pass_
    given = step.pass_.params.model_fields_set
    tol, _ = step_tolerance(IOContract(), step.pass_.default_tolerance(ir), step.verify, cfg, override)
    update: dict[str, Any] = {"rtol": tol.rtol, "atol": tol.atol} if tol.explicit else {}
    if "seed" not in given and "seed" in cfg.model_fields_set:
        update["seed"] = cfg.seed
    symbols = {k: v for k, v in cfg.dims.items() if ":" not in k}  # input:axis names the source's inputs
    if "dims" not in given and symbols:
        update["dims"] = symbols
    update = {k: v for k, v in update.items() if k in names}
    return type(step.pass_)(step.pass_.params, **update) if update else step.pass_


def _step_params(step: Step) -> dict[str, Any]:
    """The step's params, every one (defaults included: what ran, not only what was written), with
    its ``verify`` keywords that were set: what the report and the HTML page show of the recipe."""
    params = step.pass_.params.model_dump(mode="json")
    if step.verify is not None:
        keywords = step.verify.model_dump(mode="json", exclude_unset=True)
        if keywords:
            params["verify"] = keywords
    return params


def _graph_of(ir: ModelIR) -> Any:
    """The graph as it is now, without importing it: the protobuf while no pass has built it."""
    return ir.graph if ir.built else ir.proto_graph


def _changed_tensors(ir: ModelIR) -> set[str]:
    """Constants whose values are in memory (a pass built or replaced them; none while the graph
    was never built)."""
    import onnx_graphsurgeon as gs

    if not ir.built:
        return set()
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
