"""What the doctor reports: a :class:`Finding` per problem (the nodes involved, the pass that fixes
it) and the :class:`Diagnosis` of one model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]

EXIT_FINDINGS = 5
"""``surgeon doctor`` exit code when findings remain (0: none)."""


@dataclass
class Finding:
    """One thing that will bite: what (``code``), where (``nodes``, ``tensors``) and the fix."""

    code: str
    """Stable identifier, e.g. ``resize-constant-scales`` (for tools)."""
    severity: Severity
    message: str
    nodes: list[str] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)
    fix: str | None = None
    """The pass that fixes it (None: no pass does; ``advice`` says what to do)."""
    params: dict[str, Any] | None = None
    """The step's params for the emitted recipe (None with ``fix``: the finding is merged into
    another finding's step, see ``step_key``)."""
    advice: str = ""
    recipe: dict[str, Any] | None = None
    """Top-level recipe keys the fix needs (``save: {external: always}``)."""

    @property
    def fixable(self) -> bool:
        return self.fix is not None or self.recipe is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"fixable": self.fixable}


@dataclass
class Diagnosis:
    """Every finding for one model, with the facts the emitted recipe needs."""

    model: str
    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0, or :data:`EXIT_FINDINGS` when an error or warning remains (``info`` findings are
        notes: a tied Resize factor, dead nodes, int64 weights)."""
        return EXIT_FINDINGS if any(f.severity != "info" for f in self.findings) else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "findings": [f.as_dict() for f in self.findings],
            "counts": self.counts(),
            "facts": self.facts,
        }

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.severity] = out.get(f.severity, 0) + 1
        out["fixable"] = sum(f.fixable for f in self.findings)
        return out
