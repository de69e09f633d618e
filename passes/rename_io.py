"""Rename graph inputs and outputs."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from surgeon.errors import PassPreconditionError
from surgeon.ir.walk import all_tensor_names, iter_proto_graphs, may_mention
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import names, require_names
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    import onnx

    from surgeon.ir.adapter import ModelIR

Renames = tuple[dict[str, str], dict[str, str]]
"""A rename plan: (inputs, outputs), old name -> new name."""


class RegexRename(PassParams):
    """Rename every matching name: ``re.sub(pattern, replacement, name)`` on full matches."""

    pattern: str = Field(description="regular expression that must match the whole name")
    replacement: str = Field(description="replacement, with \\1 or \\g<name> groups")
    apply_to: Literal["inputs", "outputs", "both"] = Field("both", description="which names it applies to")


@register_pass("rename-io")
class RenameIO(Pass[Renames]):
    """Rename graph inputs and outputs; every consumer, captured subgraph use and value_info follows.

    Contract: interface change. The verifier feeds renamed inputs and compares renamed outputs.
    """

    edits_protobuf = True

    class Params(PassParams):
        inputs: dict[str, str] = Field(default_factory=dict, description="old input name -> new name")
        outputs: dict[str, str] = Field(default_factory=dict, description="old output name -> new name")
        regex: list[RegexRename] = Field(
            default_factory=list, description="pattern renames, applied after the explicit ones"
        )

    params: Params

    def plan(self, model: ModelIR) -> Renames:
        """``(inputs, outputs)``: old name -> new name, for every tensor that changes name."""
        inputs, outputs = _io_names(model)
        require_names(self.params.inputs, inputs, "input", "inputs")
        require_names(self.params.outputs, outputs, "output", "outputs")
        for i, rule in enumerate(self.params.regex):
            try:
                re.compile(rule.pattern)
            except re.error as exc:
                raise PassPreconditionError(f"invalid pattern '{rule.pattern}': {exc}", field=("regex", i)) from None
        ins, outs = dict(self.params.inputs), dict(self.params.outputs)
        for rule in self.params.regex:
            rx = re.compile(rule.pattern)
            for kind, tensors, plan in (("inputs", inputs, ins), ("outputs", outputs, outs)):
                if rule.apply_to not in (kind, "both"):
                    continue
                for t in tensors:
                    if t not in plan and rx.fullmatch(t):
                        plan[t] = rx.sub(rule.replacement, t)
        # a tensor that is both an input and an output is one name: both sides follow
        io_same = set(inputs) & set(outputs)
        for name in io_same:
            if name in ins and name in outs and ins[name] != outs[name]:
                raise PassPreconditionError(
                    f"'{name}' is both an input and an output; it cannot get two names ({ins[name]}, {outs[name]})",
                    field=("inputs", name),
                )
            if name in ins or name in outs:
                ins[name] = outs[name] = ins.get(name) or outs[name]
        ins = {k: v for k, v in ins.items() if k != v}
        outs = {k: v for k, v in outs.items() if k != v}
        plan = {**ins, **outs}
        self._check_clashes(_taken(model, set(plan.values())), plan)
        return ins, outs

    def _check_clashes(self, existing: set[str], plan: dict[str, str]) -> None:
        targets: dict[str, str] = {}
        for old, new in plan.items():
            if not new:
                raise PassPreconditionError(f"new name for '{old}' is empty", field=("inputs", old))
            if new in targets and targets[new] != old:
                raise PassPreconditionError(
                    f"'{targets[new]}' and '{old}' would both be named '{new}'", field=("inputs", old)
                )
            targets[new] = old
            if new in existing and new not in plan:
                raise PassPreconditionError(
                    f"cannot rename '{old}' to '{new}': a tensor named '{new}' already exists in the graph",
                    field=("inputs", old),
                )

    def requires(self, model: ModelIR, plan: Renames | None = None) -> None:
        self.plan_of(model, plan)  # the plan refuses what it cannot plan

    def run(self, model: ModelIR, plan: Renames | None = None) -> PassResult:
        ins, outs = self.plan_of(model, plan)
        if model.built:
            tensors = model.graph.tensors()
            originals = {old: tensors[old] for old in {**ins, **outs}}
            for old, tensor in originals.items():
                tensor.name = ins.get(old) or outs[old]
        else:  # no graph built: rename in the protobuf (every graph, subgraph captures included)
            originals = {old: ins.get(old) or outs[old] for old in {**ins, **outs}}
            assert model.proto_graph is not None
            rename_in_proto(model.proto_graph, originals)
        contract = IOContract(renamed_inputs=ins, renamed_outputs=outs)
        notes = [f"input {a} -> {b}" for a, b in ins.items()] + [
            f"output {a} -> {b}" for a, b in outs.items() if a not in ins
        ]
        return PassResult(bool(originals), contract, notes)


def _io_names(model: ModelIR) -> tuple[list[str], list[str]]:
    """Inputs a caller feeds and outputs, from the graph, or from the protobuf while no graph is built."""
    if model.built:
        g = model.graph
        return names(g.inputs), names(g.outputs)
    pg = model.proto_graph
    assert pg is not None
    inits = {t.name for t in pg.initializer}
    return [vi.name for vi in pg.input if vi.name not in inits], [vi.name for vi in pg.output]


def _taken(model: ModelIR, wanted: set[str]) -> set[str]:
    """Those of ``wanted`` that already name a tensor (subgraphs included). On the protobuf, without
    collecting every name of a big graph: a name the serialized graph never holds is no tensor's
    (:func:`~surgeon.ir.walk.may_mention`); only when one may is the graph walked."""
    if model.built:
        return wanted & all_tensor_names(model.graph)
    pg = model.proto_graph
    assert pg is not None
    weights = {t.name for t in pg.initializer}
    found = (wanted & weights) | may_mention(pg, wanted - weights)
    if found <= weights:
        return found
    every: set[str] = set()
    for sub in iter_proto_graphs(pg):
        every.update(vi.name for vi in [*sub.input, *sub.output, *sub.value_info])
        every.update(t.name for t in sub.initializer)
        for n in sub.node:
            every.update(n.input)
            every.update(n.output)
    return wanted & every


def rename_in_proto(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename tensors everywhere ``graph`` and its subgraphs name them: declarations, initializers,
    node inputs and outputs (a subgraph's use of an outer value included), quantization annotations."""
    for g in iter_proto_graphs(graph):
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.name in mapping:
                vi.name = mapping[vi.name]
        for t in g.initializer:
            if t.name in mapping:
                t.name = mapping[t.name]
        for ann in g.quantization_annotation:
            if ann.tensor_name in mapping:
                ann.tensor_name = mapping[ann.tensor_name]
        for n in g.node:
            for field in (n.input, n.output):
                for i, name in enumerate(field):
                    if name in mapping:
                        field[i] = mapping[name]
