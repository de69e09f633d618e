"""``surgeon doctor``: what will bite a model at deployment, each finding with the nodes involved
and the pass that fixes it, and a recipe that fixes everything fixable (:mod:`.emit`).

Layer 7-8: uses the IR, the verifier's runtime, the pass registry and recipes; nothing below
imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surgeon.doctor.findings import EXIT_FINDINGS, Diagnosis, Finding, Severity
from surgeon.doctor.trial import TRIALS, Trial

if TYPE_CHECKING:
    from surgeon.ir.model import Model

__all__ = ["EXIT_FINDINGS", "TRIALS", "Diagnosis", "Finding", "Severity", "Trial", "diagnose"]


def diagnose(model: Model, runtime_checks: bool = True, trial: Trial = "verify") -> Diagnosis:
    """Run every check on ``model`` (never modified). ``runtime_checks`` builds an onnxruntime
    session to find what the CPU provider cannot run, and probes its IR/opset limits; then
    (``trial``, see :mod:`.trial`) the sizes the model runs at are found and the recipe the doctor
    would emit is tried on it (``verify``: applied and verified; ``plan``: its passes run
    unverified; ``off``): what fails is not proposed."""
    from surgeon.doctor import graph_checks, io_checks
    from surgeon.doctor import runtime_checks as rt
    from surgeon.doctor.graphinfo import GraphInfo
    from surgeon.doctor.trial import source_sizes, try_recipe

    diag = Diagnosis(model.name)
    info = GraphInfo(model)
    for check in (*io_checks.CHECKS, *graph_checks.CHECKS):
        diag.findings += check(info, diag.facts)
    blocked = []
    if runtime_checks:
        blocked = rt.check_runtime(info, diag.facts)
        diag.findings += blocked
    if not runtime_checks or trial == "off":
        pass
    elif blocked:  # onnxruntime cannot run the model as it is: nothing to try the recipe against
        diag.facts["tried"] = "not tried: onnxruntime cannot run the model as it is"
    elif source_sizes(model, diag):
        try_recipe(model, diag, trial)
    order = {"error": 0, "warning": 1, "info": 2}
    diag.findings.sort(key=lambda f: order[f.severity])
    return diag
