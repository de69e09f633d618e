"""Verification of a pipeline as one session: the source's reference run before the first edit
(:meth:`VerificationSession.start`), the check of each step (:meth:`~VerificationSession.after_step`)
and the end-of-pipeline check (:meth:`~VerificationSession.finish`). The session holds everything
the pipeline's loop used to: the verifier, the contracts so far, each step's tolerance, the last
model that passed its check, and what no check has covered yet."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from surgeon.errors import ModelError, VerificationError
from surgeon.verify.compare import StepCheck, Tolerance
from surgeon.verify.config import DEFAULT_SESSION_NODES
from surgeon.verify.contract import IOContract
from surgeon.verify.runtime import SessionLoadError, default_level_problem
from surgeon.verify.verifier import Verifier

if TYPE_CHECKING:
    import numpy as np

    from surgeon.ir.model import Model
    from surgeon.verify.config import StepVerify, VerifyConfig


class VerificationSession:
    """One pipeline's verification. Nothing runs before :meth:`start`; with ``mode: off`` nothing
    runs at all. The pipeline calls :meth:`start` before the first edit, :meth:`after_step` after
    every step and :meth:`finish` once at the end."""

    def __init__(
        self,
        source: Model,
        config: VerifyConfig,
        base_dir: Path | None = None,
        hints: Mapping[str, tuple[int, str]] | None = None,
        override: Mapping[str, float] | None = None,
    ) -> None:
        """``hints``: sizes steps will bind (:func:`surgeon.pipeline.size_hints`); ``override``:
        ``rtol`` / ``atol`` the user gave for every step (the command line's), which win over step
        keywords and pass defaults."""
        self.source = source
        self.config = config
        self.base_dir = base_dir
        self.hints = dict(hints or {})
        self.override = dict(override or {})
        self.verifier: Verifier | None = None
        self.source_error: ModelError | None = None
        """Set when onnxruntime cannot load the source: the pipeline raises it as it is (a model
        problem, not the step's during which the reference ran)."""
        self.contracts: list[IOContract] = []
        self.names: list[str] = []
        """Each step as messages name it (``passes[2] (to-fp16)``)."""
        self.accepted: list[bool | list[str]] = []
        """Each step's ``verify.accept_unproved``."""
        self.allowed: list[Tolerance] = []
        """Each step's own tolerance."""
        self.tol = config_tolerance(config)
        """The tolerance of a check after the steps so far."""
        self.good: tuple[Model | None, int] = (None, 0)
        """The last model that passed its check, and how many steps it had (localization starts there)."""
        self.checked: Model | None = None
        """The model the last step's check ran on (None when the last step was not checked)."""
        self.unverified = False
        """A modification no check has covered yet."""
        self.last_modified: str | None = None
        """The last step that modified the model, as messages name it."""

    # -- the three calls ------------------------------------------------------------------------
    def start(self) -> None:
        """The source's reference run (once; later calls do nothing). onnxruntime refusing the
        source is a :class:`ModelError` naming the source."""
        if self.verifier is not None or self.config.mode == "off":
            return
        self.verifier = Verifier(self.source, self.config, self.base_dir, self.hints)
        try:
            self.verifier.reference()
        except SessionLoadError as exc:  # the source itself: a model problem, not the step's
            self.source_error = ModelError(f"{self.source.name}: onnxruntime cannot load the model: {exc.reason}")
            raise self.source_error from None

    def after_step(
        self,
        contract: IOContract,
        modified: bool,
        candidate: Callable[[], Model],
        *,
        who: str,
        default: Tolerance | None = None,
        verify: StepVerify | None = None,
    ) -> StepCheck | None:
        """A step ran and declared ``contract``. With ``mode: each``, a step that modified the model
        and is not ``verify.skip`` is checked: ``candidate()`` (the model after it) against the
        source through every contract so far, localized when it fails, then the step's probes.
        ``who`` names the step in messages, ``default`` is the pass's own tolerance and ``verify``
        the step's keywords. Returns the check (None when the step was not checked)."""
        step = self._record(contract, who, default, verify)
        if modified:
            self.last_modified = who
        self.checked = None
        check = None
        if (
            self.verifier is not None
            and self.config.mode == "each"
            and modified
            and not (verify is not None and verify.skip)
        ):
            model = candidate()
            with blamed_on(who):
                check = self._check(model, who)
                name = f"the model after {who}"
                check.outputs += self.verifier.probe(model, self.contracts, step, self.tol, self.accepted[step], name)
            if check.ok:
                self.good = (model, step + 1)
            self.checked = model
        self.unverified = (self.unverified or modified) and check is None
        return check

    def finish(self, current: Callable[[], Model]) -> tuple[Model, StepCheck | None]:
        """The pipeline's result, and its check when some modification is not yet covered by one
        (``mode: end``, skipped steps), blamed on the last step that modified the model; with
        ``mode: end`` every step's probes run on it too."""
        final = self.checked or current()
        if self.verifier is None or not self.unverified:
            return final, None
        with blamed_on(self.last_modified):
            check = self._check(final, self.last_modified)
            if self.config.mode == "end":
                name = _after(self.last_modified)
                for k in range(len(self.contracts)):
                    check.outputs += self.verifier.probe(final, self.contracts, k, self.tol, self.accepted[k], name)
        return final, check

    def default_level(self, final: Model) -> str:
        """``final`` loaded and run once at onnxruntime's default optimization level, in a child
        process, on the last check's feed mapped to ``final``'s names
        (:func:`surgeon.verify.runtime.default_level_problem`): "ran", "FAIL: <line naming the
        model>", or "skipped (<why>)" when verification is off, every step was proved without a run,
        ``verify.default_session`` is false, or (``auto``) the graph is over
        :data:`~surgeon.verify.config.DEFAULT_SESSION_NODES` nodes."""
        if self.config.mode == "off":
            return "skipped (verify.mode: off)"
        if self.verifier is None:
            return "skipped (every step was proved structurally: no onnxruntime session ran)"
        setting = self.config.default_session
        if setting is False:
            return "skipped (verify.default_session: false)"
        nodes = len(final.proto.graph.node)
        if setting == "auto" and nodes > DEFAULT_SESSION_NODES:
            return (
                f"skipped ({nodes:,} nodes, over {DEFAULT_SESSION_NODES:,}: onnxruntime's full optimization takes "
                "minutes on such graphs; verify.default_session: true runs it)"
            )
        problem = default_level_problem(self.verifier.runtime, final, self._final_feed(final))
        if not problem:
            return "ran"
        who = _after(self.last_modified) if self.last_modified else "the model (no step modified it)"
        return (
            f"FAIL: {who} fails in onnxruntime's default session (ORT_ENABLE_ALL, run once in a child "
            f"process): {problem}; the checks ran with graph optimizations off"
        )

    def _final_feed(self, final: Model) -> dict[str, np.ndarray]:
        """The feed for ``final``: the last check's, mapped through the contracts of the steps after
        it (proved steps ran nothing: a renamed input must get its new name)."""
        assert self.verifier is not None
        verifier = self.verifier
        if verifier.last is None:
            feed, done = dict(verifier.feed), 0
        elif verifier.last[0] is final:
            return verifier.last[1]
        else:
            feed, done = dict(verifier.last[1]), max(verifier.chain, default=0)
        for contract in self.contracts[done:]:
            feed = contract.map_feed(feed, verifier.intermediates(contract, feed))
        return feed

    # -- structural proofs (surgeon.verify.proof) ------------------------------------------------
    def after_proof(
        self,
        contract: IOContract,
        model: Model,
        check: StepCheck,
        *,
        who: str,
        default: Tolerance | None = None,
        verify: StepVerify | None = None,
        live: bool = False,
    ) -> StepCheck:
        """A step that modified the model and whose check is its structural proof (``check``: proved,
        or refused under ``mode: proof``), not a run. The contract is recorded like any step's; a
        proof covers this step only, so a modification no check has covered yet stays uncovered.
        ``live``: ``model`` is the working model itself, which later steps edit: it is the result
        while no step edits it, never the good model a failure is localized from."""
        step = self._record(contract, who, default, verify)
        self.last_modified = who
        if check.ok and not live:
            self.good = (model, step + 1)
        self.checked = model
        return check

    def passed(self, model: Model, k: int) -> None:
        """``model`` (a model no step edits any more) is the model after the first ``k`` steps, and it
        passed (was proved): a later failure is localized from it."""
        if k >= self.good[1]:
            self.good = (model, k)

    def _record(self, contract: IOContract, who: str, default: Tolerance | None, verify: StepVerify | None) -> int:
        """A step's contract, name, accepted unproved probes and tolerance, recorded (every step,
        checked, proved or unchanged); returns its index."""
        self.contracts.append(contract)
        self.accepted.append(verify.accept_unproved if verify is not None else False)
        self.names.append(who)
        own, explicit = step_tolerance(contract, default, verify, self.config, self.override)
        self.allowed.append(own)
        self.tol = own if explicit else loosest(self.allowed)
        return len(self.contracts) - 1

    # -- what the pipeline reports --------------------------------------------------------------
    @property
    def device(self) -> str:
        """Where the checks ran and why ("" when verification never started)."""
        return self.verifier.device_line if self.verifier is not None else ""

    @property
    def sizes(self) -> list[str]:
        """The size of every symbolic dim of the source's inputs, and why."""
        return self.verifier.sizes.lines() if self.verifier is not None else []

    @property
    def values(self) -> list[str]:
        """How integer inputs' values were chosen."""
        return list(self.verifier.values) if self.verifier is not None else []

    def _check(self, model: Model, who: str | None) -> StepCheck:
        """``model`` (the model after ``who``) against the source through every contract so far;
        where it fails, where it first diverges from the last model that passed."""
        assert self.verifier is not None
        check = self.verifier.check(model, self.contracts, self.tol, _after(who))
        if not check.ok:
            before, k = self.good
            names = (_after(self.names[k - 1]) if k else "the source", _after(who))
            check.divergence = self.verifier.localize(before or self.verifier.source, k, model, self.tol, names)
        return check


def _after(who: str | None) -> str:
    """How messages name the model a step made ("the model after passes[2] (to-fp16)")."""
    return f"the model after {who}" if who else "the edited model"


@contextlib.contextmanager
def blamed_on(who: str | None) -> Iterator[None]:
    """An edited model onnxruntime cannot load (the source loaded): the step that made it is at
    fault; say which."""
    try:
        yield
    except SessionLoadError as exc:
        raise VerificationError(
            f"{_after(who)} fails: onnxruntime cannot load the edited model ({exc.reason}); the source loads, "
            "so the step made a model onnxruntime refuses"
        ) from None


def step_tolerance(
    contract: IOContract,
    default: Tolerance | None,
    verify: StepVerify | None,
    cfg: VerifyConfig,
    override: Mapping[str, float],
) -> tuple[Tolerance, bool]:
    """A step's own tolerance, and whether the user set it: per field, the command line's
    (``override``), else the step's ``verify:``, else the pass's default (``default``: its
    ``Pass.default_tolerance``, the one channel), else the pipeline's. A tolerance the user set
    anywhere (the recipe's ``verify.rtol`` too, where the pass has no default) is ``explicit``: no
    float16 output is compared at a tolerance sized for its precision then."""
    base = default or config_tolerance(cfg)
    user: dict[str, float] = {}
    if verify is not None:
        user.update({k: v for k in ("rtol", "atol") if (v := getattr(verify, k)) is not None})
    user.update(override)
    tol = Tolerance(user.get("rtol", base.rtol), user.get("atol", base.atol), bool(user) or base.explicit)
    return tol, bool(user)


def config_tolerance(cfg: VerifyConfig) -> Tolerance:
    """The recipe's (or the command line's) ``verify.rtol`` / ``atol``; ``explicit`` when either
    was set rather than defaulted."""
    return Tolerance(cfg.rtol, cfg.atol, bool({"rtol", "atol"} & cfg.model_fields_set))


def loosest(tols: Sequence[Tolerance]) -> Tolerance:
    """A check after several steps allows what each of them was allowed (an earlier step's error
    carries into every later comparison with the source)."""
    out = tols[0]
    for t in tols[1:]:
        out = out.loosest(t)
    return out
