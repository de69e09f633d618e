"""Declarative graph rewrites: ONNX text pattern -> replacement rules, every match checked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator

from surgeon.errors import PassPreconditionError, RecipeError
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.verify.compare import Tolerance

if TYPE_CHECKING:
    from pathlib import Path

    import onnx

    from surgeon.ir.adapter import ModelIR
    from surgeon.passes._rewrite_apply import Match
    from surgeon.passes._rewrite_rules import Rule

MAX_NEAR_MISS_LINES = 50
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5
"""The per-match check's tolerance where the step sets none (the verifier's defaults)."""


@register_pass("rewrite")
class Rewrite(Pass):
    """Replace subgraphs by rules (pattern and replacement as ONNX text), each match checked.

    ``rules`` names built-in rules (``surgeon rules`` lists them) or gives rules inline: a mapping
    with ``name``, ``pattern`` (or ``patterns``) and ``replacement`` (ONNX text graphs: the
    pattern's inputs are the match's inputs, its outputs the match's outputs), and optional
    ``where`` (conditions on inputs), ``ops`` (op sets), ``opset`` (the lowest opset the
    replacement is valid in), ``commute`` (default true). Rules apply in order, each to the model
    the previous one left.

    Safety, per match: inner values used outside it (a graph output, another consumer), constants
    or attributes that do not fit, the model's opset too old, a replacement that changes a dtype
    or a shape: the match is refused, with its reason and nodes; the others still apply.

    Check, per match (``check``, default on): the model as the pass found it runs on the
    verification feed (seeded random data, the verifier's sizes) with the matches' inputs and
    outputs exposed; the replacements run on those inputs; a replacement that does not reproduce
    its outputs within ``rtol``/``atol`` (default 1e-4/1e-5; set, they are the step's tolerance
    too) is undone and named. The check's feed is made as the verifier makes it, from ``seed``
    and ``dims``. In a pipeline, what the user set for the step fills the params left unset: the
    tolerance (``--rtol``/``--atol``, the step's ``verify:``, the recipe's ``verify:``) and the
    recipe's ``verify.seed`` and ``verify.dims`` (by symbol). ``-v`` lists
    every match applied, refused, undone, and every near miss.

    Weights: reads constants the patterns compare; writes the replacements' own.

    Contract: same interface; outputs within the step's tolerance.
    """

    verification_params = ("rtol", "atol", "seed", "dims")

    class Params(PassParams):
        rules: Annotated[
            list[str | dict[str, Any]],
            Field(min_length=1, description="built-in rule names, or rules as mappings (name, pattern, replacement)"),
        ]
        check: bool = Field(True, description="check every match on the activations the model computes there")
        rtol: float | None = Field(
            None,
            ge=0,
            description="relative tolerance of each match's check and of the step (unset: 1e-4, the step's own)",
        )
        atol: float | None = Field(
            None,
            ge=0,
            description="absolute tolerance of each match's check and of the step (unset: 1e-5, the step's own)",
        )
        seed: int = Field(0, description="seed of the random feed the matches are checked on")
        dims: dict[str, Annotated[int, Field(ge=1)]] = Field(
            default_factory=dict, description="sizes of symbolic input dims for the check's feed (as verify.dims)"
        )

        @field_validator("rules")
        @classmethod
        def _rules_readable(cls, v: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
            for i, r in enumerate(v):
                try:
                    resolve(r, i)
                except RecipeError as exc:  # a ValueError: the recipe loader places it
                    raise ValueError(str(exc)) from None
            return v

    params: Params

    def default_tolerance(self, model: ModelIR) -> Tolerance | None:
        """The params' tolerance where set (the step is checked at it too); else None: the step
        has the pipeline's tolerance."""
        if self.params.rtol is None and self.params.atol is None:
            return None
        return self.match_tolerance()

    def match_tolerance(self) -> Tolerance:
        """Each match's check: ``rtol``/``atol``, else the verifier's defaults (1e-4, 1e-5)."""
        p = self.params
        return Tolerance(CHECK_RTOL if p.rtol is None else p.rtol, CHECK_ATOL if p.atol is None else p.atol)

    def requires(self, model: ModelIR) -> None:
        if model.opset <= 0:
            raise PassPreconditionError("the model imports no default-domain opset; the rules are written against one")

    def run(self, model: ModelIR) -> PassResult:
        proto = model.to_proto()
        rules = [resolve(r, i) for i, r in enumerate(self.params.rules)]
        notes: list[str] = []
        changed = False
        feed = None
        runtime = None
        for rule in rules:
            matches = find(proto, rule, model.base_dir)
            kept = [m for m in matches if m.status == "applied"]
            if kept and self.params.check:
                from surgeon.passes._rewrite_check import check_matches, make_feed
                from surgeon.verify.runtime import Runtime

                if feed is None:
                    feed = make_feed(proto, self.params.seed, self.params.dims)
                    runtime = Runtime("cpu")
                assert runtime is not None
                check_matches(proto, kept, feed, self.match_tolerance(), runtime, model.base_dir)
                kept = [m for m in kept if m.status == "applied"]
            if kept:
                from surgeon.passes._rewrite_apply import apply

                apply(proto, kept, f"{rule.name}/")
                changed = True
            notes += report_lines(rule, matches)
        if changed:
            model.replace_graph(proto)
        return PassResult(modified=changed, notes=notes)


def resolve(entry: str | dict[str, Any], i: int) -> Rule:
    """A rule of ``rules[i]``: a built-in's name or an inline mapping."""
    from surgeon.passes._rewrite_rules import builtin, parse_rule, require_onnxscript

    require_onnxscript()
    if isinstance(entry, str):
        return builtin(entry)
    try:
        return parse_rule(entry, f"rules[{i}]")
    except RecipeError:
        raise
    except Exception as exc:  # a pattern onnxscript cannot build
        raise RecipeError(f"rules[{i}]: {exc}") from None


def find(proto: onnx.ModelProto, rule: Rule, base_dir: Path | None = None) -> list[Match]:
    """Every match (and near miss) of ``rule`` in ``proto``'s top-level graph, checked for safety."""
    import onnx

    from surgeon.passes._rewrite_rules import require_onnxscript

    require_onnxscript()
    import onnx_ir
    from onnxscript import optimizer

    from surgeon.passes._rewrite_apply import find_matches

    try:
        typed = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # types are a check's input, not required
        typed = proto
    irm = onnx_ir.serde.deserialize_model(typed)
    if base_dir is not None:  # constants stored as external data are read from the model's folder
        from onnx_ir.external_data import set_base_dir

        set_base_dir(irm.graph, base_dir)
    optimizer.basic_constant_propagation(irm.graph)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return find_matches(rule, irm, opset, set())


def report_lines(rule: Rule, matches: list[Match]) -> list[str]:
    counts = {s: sum(m.status == s for m in matches) for s in ("applied", "refused", "undone", "near miss")}
    head = f"{rule.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    lines = [head]
    near = 0
    for m in matches:
        if m.status == "near miss":
            near += 1
            if near > MAX_NEAR_MISS_LINES:
                continue
        lines.append("  " + m.line())
    if near > MAX_NEAR_MISS_LINES:
        lines.append(f"  ... and {near - MAX_NEAR_MISS_LINES} more near misses")
    return lines
