"""The doctor proposes only what its passes do: the sizes the source runs at are found first (the
verifier's size search), then the recipe it would emit is tried on the model, step by step; a
step that fails (its preconditions, its plan, its run or, by default, its verification) turns the
findings it was to fix into findings it cannot fix, naming the node and the way out, and the rest
of the recipe is tried again without it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from surgeon.doctor.findings import Diagnosis, Finding
from surgeon.errors import SurgeonError

if TYPE_CHECKING:
    from surgeon.ir.model import Model

Trial = Literal["verify", "plan", "off"]
"""``verify``: apply the recipe with verification (default); ``plan``: run its passes without
verifying; ``off``: propose without trying."""
TRIALS: tuple[Trial, ...] = ("verify", "plan", "off")

WAY_OUT = {
    "mark-dynamic": "re-export with a dynamic batch (dynamic_axes / dynamic_shapes)",
    "promote-resize-scales": "the factor is tied to the architecture: leave it constant",
    "fix-negative-indices": "fix the dims first (fix-dims), or leave the indices",
    "convert-opset": "re-export at the opset you need",
}
"""What to do instead when the pass that fixes a finding fails on the model."""
_PREFIX = re.compile(r"^.*?(passes\[\d+\] \([^)]*\)(\.\w+)?|end of pipeline): ")
_NODE = re.compile(r"(?:\b[A-Z][A-Za-z]+ '([^']+)'|Name:'([^']+)')")


def source_sizes(model: Model, diag: Diagnosis) -> bool:
    """The sizes the source runs at, for the emitted recipe's ``verify.dims`` (searched where the
    defaults fail: ``samples=512 (searched)``). A source that fails at every size tried is a
    finding; returns whether it runs."""
    from surgeon.errors import ModelError
    from surgeon.verify.config import VerifyConfig
    from surgeon.verify.verifier import Verifier

    try:
        verifier = Verifier(model, VerifyConfig())
        verifier.reference()
    except ModelError as exc:
        diag.findings.append(
            Finding(
                "source-fails",
                "error",
                f"onnxruntime fails to run the model on generated inputs: {exc}",
                advice="set verify.dims (or verify.inputs) in the recipe to data the model accepts",
            )
        )
        return False
    except SurgeonError:  # not runnable at all: the runtime checks say why
        return False
    sizes = verifier.sizes
    if sizes.chosen:
        diag.facts["symbols"] = sizes.dims()
        diag.facts["sizes"] = sizes.lines()
    return True


def try_recipe(model: Model, diag: Diagnosis, trial: Trial = "verify") -> None:
    """Try the recipe :func:`surgeon.doctor.emit.recipe_data` makes of ``diag`` on ``model`` (never
    modified); each step that fails makes its findings unfixable (see :func:`refuse`), until the
    recipe runs through. ``diag.facts['tried']`` says what was tried."""
    from surgeon.doctor.emit import recipe_data
    from surgeon.recipe import parse_recipe_data

    if trial == "off":
        return
    for _ in range(len(diag.findings) + 1):
        data, fixes = recipe_data(diag)
        if not data["passes"]:
            return
        pipeline = parse_recipe_data(data, "<doctor>").pipeline
        if trial == "plan":
            pipeline.verify = pipeline.verify.model_copy(update={"mode": "off"})
        done: list[Any] = []
        try:
            result = pipeline.run(model, on_step=done.append)
        except SurgeonError as exc:
            if "the source model fails" in str(exc) or len(done) >= len(data["passes"]):
                diag.facts["tried"] = f"not tried: {_strip(str(exc))}"
                return
            failed, reason = len(done), _strip(str(exc))
        else:
            bad = [s.index for s in result.steps if s.check is not None and not s.check.ok]
            if not bad and result.ok:
                diag.facts["tried"] = f"{'applied and verified' if trial == 'verify' else 'planned'}: " + ", ".join(
                    next(iter(step)) for step in data["passes"]
                )
                return
            failed = bad[0] if bad else len(data["passes"]) - 1
            reason = next(iter(_strip(line) for line in result.failures()), "verification failed")
        name = next(iter(data["passes"][failed]))
        refuse(fixes[failed][-1], name, reason)  # one finding a try: a step fixing several may work without it


def refuse(finding: Finding, pass_name: str, reason: str) -> None:
    """``finding`` cannot be fixed by ``pass_name``, which failed for ``reason``: said in its
    message, with the node the reason names and the way out; no step is emitted for it."""
    finding.message += f"; {pass_name} fails on this model: {reason}"
    for m in _NODE.finditer(reason):
        node = m.group(1) or m.group(2)
        if node and node not in finding.nodes:
            finding.nodes.append(node)
    finding.fix, finding.params = None, None
    finding.advice = WAY_OUT.get(pass_name, "fix it in the source and re-export")


def _strip(line: str) -> str:
    """A pipeline message without the step prefix (the finding names the pass itself)."""
    return _PREFIX.sub("", line.strip().splitlines()[0] if line.strip() else line, count=1)
