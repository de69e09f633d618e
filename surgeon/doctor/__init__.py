"""``surgeon doctor``: what will bite a model at deployment, each finding with the nodes involved
and the pass that fixes it, and a recipe that fixes everything fixable (:mod:`.emit`).

Layer 7-8: uses the IR, the verifier's runtime, the pass registry and recipes; nothing below
imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surgeon.doctor.findings import EXIT_FINDINGS, Diagnosis, Finding, Severity

if TYPE_CHECKING:
    from surgeon.ir.model import Model

__all__ = ["EXIT_FINDINGS", "Diagnosis", "Finding", "Severity", "diagnose"]


def diagnose(model: Model, runtime_checks: bool = True) -> Diagnosis:
    """Run every check on ``model`` (never modified). ``runtime_checks`` builds an onnxruntime
    session to find what the CPU provider cannot run, and probes its IR/opset limits."""
    from surgeon.doctor import graph_checks, io_checks
    from surgeon.doctor import runtime_checks as rt
    from surgeon.doctor.graphinfo import GraphInfo

    diag = Diagnosis(model.name)
    info = GraphInfo(model)
    for check in (*io_checks.CHECKS, *graph_checks.CHECKS):
        diag.findings += check(info, diag.facts)
    if runtime_checks:
        diag.findings += rt.check_runtime(info, diag.facts)
    order = {"error": 0, "warning": 1, "info": 2}
    diag.findings.sort(key=lambda f: order[f.severity])
    return diag
