"""Structural proofs: a step whose result is the same computation as its input, shown from the two
graphs alone, with no onnxruntime run.

The proof never asks the pass what it did. It numbers the values of the model before the step and
of the model after it (hash-consing, as in global value numbering): a graph input is its name (after
the step's renames), a constant its element type, dims and content (external data is compared by
location when both models point at the same bytes of the same file, else hashed in chunks from the
file; it is never loaded whole), and a node output its op (domain, type, overload), its attributes
(subgraphs numbered recursively, captured outer values included, tensor attributes by content),
the numbers of its inputs and its output slot. Two values with the same number are computed the
same way from the same inputs. Names of intermediate tensors, node names, node order, doc strings
and metadata do not enter the numbers, so renames, dead-node removal and merged byte-identical
constants are proved; a changed attribute, a swapped input, a merged pair of different constants or
a dropped node some output needs is not.

The step is proved when, in addition:

- every output of the model before (renamed through the contract, minus the removed ones) is an
  output of the model after with the same number, in the same order unless the contract reorders;
  an added output carries a number the model before computed;
- the inputs after are exactly the inputs before, renamed, minus the removed ones; each keeps its
  element type and rank, and a static size changes only to a symbol or from one (the model accepts
  more sizes, or fewer: on the sizes both accept it computes the same; the interface check rules
  undeclared changes out);
- every declaration after (value_info, outputs) says no more than a declaration before of the same
  value said (a size onnxruntime could fold from a new static declaration is never taken on trust);
- ir_version, opset imports, model-local functions (doc strings aside) and training info are equal;
- no node draws random numbers (two draws merged into one are not the same computation);
- the contract declares nothing a run must check: no new input fed a constant, no expectation, feed
  transform or derived feed, no intermediate values, no changed dtype, no probe (a probe checks sizes
  the model before never accepted: mark-dynamic's batch probe runs the model).

Anything else is "not proved", with the reason: the caller verifies the step by execution (or, in
``verify.mode: proof``, refuses it). A "not proved" is never a failure of the step by itself.
"""

from __future__ import annotations

import hashlib
import os
from collections import ChainMap
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.verify.compare import CheckKind, OutputCheck, StepCheck, Verdict
from surgeon.verify.interface import check_interface

if TYPE_CHECKING:
    import onnx

    from surgeon.ir.model import Model
    from surgeon.verify.contract import IOContract

RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
"""Default-domain ops whose outputs are draws, not functions of their inputs."""
_GRAPH, _GRAPHS, _TENSOR, _TENSORS, _SPARSE, _SPARSES = 5, 10, 4, 9, 11, 12  # AttributeProto types
_SMALL = 256
"""Inline tensors up to this many bytes are keyed by their bytes (no hashing)."""


@dataclass(frozen=True)
class Proof:
    """Whether the step is proved, and why (what was shown, or the first thing that could not be)."""

    proved: bool
    reason: str

    def check(self) -> StepCheck:
        """The step's check: one ``proof`` entry whose verdict is ``proved (structural)``."""
        return StepCheck(
            outputs=[OutputCheck("proof", True, Verdict.PROVED, note=self.reason, kind=CheckKind.PROOF)],
            device="none (structural proof)",
        )

    def refusal(self) -> StepCheck:
        """The check of a step ``verify.mode: proof`` refuses: it could not be proved, and nothing runs."""
        note = f"not proved structurally ({self.reason}); verify.mode: proof runs no onnxruntime"
        return StepCheck(outputs=[OutputCheck("proof", False, Verdict.FAIL, note=note, kind=CheckKind.PROOF)])


class NotProved(Exception):
    """Something the proof cannot show (its message says what)."""


def unprovable_contract(contract: IOContract) -> str | None:
    """What in ``contract`` only a run can check (None: nothing)."""
    for name, what in (
        ("new_inputs", "feeds a new input the constant it replaced"),
        ("expectations", "computes expected outputs from the outputs before"),
        ("feed_transforms", "computes an input from the feed before"),
        ("derived_inputs", "derives the feed before from the feed after"),
        ("probes", "asks for probes at sizes the model before did not accept"),
        ("changed_types", "changes an element type"),
    ):
        if getattr(contract, name):
            return f"the contract {what}"
    if contract.intermediates is not None:
        return "the contract needs intermediate values of the model before"
    return None


class Prover:
    """Proves steps of one pipeline. Content keys of weights are cached by tensor for the last model
    proved (the model after one step is the model before the next: its tensors are keyed once; no
    older model is kept alive)."""

    def __init__(self) -> None:
        self._last: tuple[Model | None, dict[tuple[int, bool], tuple[Any, Any]]] = (None, {})

    def prove(self, before: Model, after: Model, contract: IOContract) -> Proof:
        """Whether ``after`` computes what ``before`` does, through ``contract``."""
        why = unprovable_contract(contract)
        if why is not None:
            return Proof(False, why)
        try:
            _model_level(before.proto, after.proto)
            problems = check_interface(before.proto, after.proto, [contract])
            if problems:
                raise NotProved(f"{problems[0].name}: {problems[0].note}")
            same_folder = before.base_dir == after.base_dir
            if same_folder and _trivial(contract) and _same_graph(before.proto.graph, after.proto.graph):
                return Proof(True, "the graph is unchanged (only model fields differ)")
            external = before.uses_external_data or after.uses_external_data
            if same_folder or not external:
                aligned = _aligned(before.proto.graph, after.proto.graph, contract)
                if aligned is not None:
                    return Proof(True, aligned)
            try:
                return self._numbered(before, after, contract, by_location=True)
            except NotProved:
                if not (before.uses_external_data or after.uses_external_data):
                    raise
            return self._numbered(before, after, contract, by_location=False)
        except NotProved as exc:
            return Proof(False, str(exc))

    def model_fields(self, before: Model, after: Model) -> Proof:
        """A step whose graph is the one last proved (the caller knows it unchanged): proved when the
        model fields a proof compares (ir_version, opsets, functions, training info) are equal."""
        try:
            _model_level(before.proto, after.proto)
        except NotProved as exc:
            return Proof(False, str(exc))
        return Proof(True, "the graph is unchanged (only model fields differ)")

    def _numbered(self, before: Model, after: Model, contract: IOContract, by_location: bool) -> Proof:
        table: dict[Any, int] = {}
        last, keys = self._last
        src = _Side(keys if last is before else {}, table, before.base_dir, by_location, "before")
        dst = _Side({}, table, after.base_dir, by_location, "after")
        self._last = (after, dst.keys)
        src.main(before.proto.graph, contract, renamed=True)
        dst.main(after.proto.graph, contract, renamed=False)
        _outputs(src, dst, contract)
        _declarations(src, dst)
        return Proof(True, f"same computation: {dst.n_nodes} node(s), {len(dst.outputs)} output(s) equal")


def compose(contracts: Sequence[IOContract]) -> IOContract | None:
    """One contract for steps applied in turn (renames followed, inputs and outputs removed, outputs
    added), or None when one declares something a proof cannot take (:func:`unprovable_contract`)
    or changes axes or types (the proof of the whole then falls to the checker or a run)."""
    from surgeon.verify.contract import IOContract

    inputs: dict[str, str] = {}  # name now -> name in the source
    outputs: dict[str, str] = {}
    removed: set[str] = set()
    dropped: set[str] = set()  # inputs removed
    added: set[str] = set()
    dims: set[str] = set()
    reordered = False
    for c in contracts:
        if unprovable_contract(c) or c.changed_axes or c.changed_types:
            return None
        for name in c.removed_inputs:
            dropped.add(inputs.pop(name, name))
        for old, new in c.renamed_inputs.items():
            inputs[new] = inputs.pop(old, old)
        for name in c.removed_outputs:
            if name in added:
                added.discard(name)
            else:
                removed.add(outputs.pop(name, name))
        for old, new in c.renamed_outputs.items():
            if old in added:
                added.discard(old)
                added.add(new)
            else:
                outputs[new] = outputs.pop(old, old)
        added |= c.added_outputs
        dims = {(c.renamed_inputs.get(n) or c.renamed_outputs.get(n) or n) for n in dims} | c.changed_dims
        reordered = reordered or c.reordered
    return IOContract(
        renamed_inputs={src: now for now, src in inputs.items() if src != now},
        renamed_outputs={src: now for now, src in outputs.items() if src != now},
        removed_inputs=dropped,
        removed_outputs=removed,
        added_outputs=added,
        changed_dims=dims,
        reordered=reordered,
    )


def graph_digest(graph: onnx.GraphProto) -> bytes:
    """A digest of the graph, field for field: equal digests, the same graph."""
    return hashlib.sha256(graph.SerializeToString(deterministic=True)).digest()


def trivial(contract: IOContract) -> bool:
    """A contract that changes nothing of the interface and declares nothing only a run checks."""
    return _trivial(contract) and unprovable_contract(contract) is None and not contract.changed_dims


def _trivial(contract: IOContract) -> bool:
    """No rename, removal or addition: the interface is the same."""
    return not (
        contract.renamed_inputs
        or contract.renamed_outputs
        or contract.removed_inputs
        or contract.removed_outputs
        or contract.added_outputs
    )


def _aligned(a: onnx.GraphProto, b: onnx.GraphProto, contract: IOContract) -> str | None:
    """The fast proof of a step that renamed interface tensors, removed or added outputs, or changed
    only doc strings, names of nodes, metadata and declarations: ``b`` is ``a`` node for node, in the
    same order, each node's inputs and outputs renamed through the contract, its op and attributes
    equal (doc strings aside); initializers equal field for field. Linear, with no table of values:
    a 100 000-node graph is compared in a fraction of a second. None when that does not hold (the
    numbering decides then, and says why).

    Names are found in the serialized graphs: an old name that occurs nowhere in ``b`` (as a
    length-prefixed string, in any field of any scope) is read and defined by no node of ``b``; a
    new name that occurs nowhere in ``a`` is no value of ``a``; so only the nodes that differ need
    their names mapped. Where a name does occur (a doc string that says it, a weight's bytes that
    happen to), every node is walked instead."""
    if contract.removed_inputs or contract.reordered:
        return None
    rename = dict(contract.renamed_inputs)
    for old, new in contract.renamed_outputs.items():
        if rename.setdefault(old, new) != new:
            return None
    if not set(rename).isdisjoint(rename.values()) or len(set(rename.values())) != len(rename):
        return None  # a swap or two names made one: the numbering sorts that out
    if not set(contract.renamed_inputs) <= {v.name for v in a.input}:
        return None
    if not set(contract.renamed_outputs) <= {v.name for v in a.output}:
        return None
    if len(a.node) != len(b.node) or list(a.initializer) != list(b.initializer):
        return None
    if list(a.sparse_initializer) != list(b.sparse_initializer):
        return None
    from surgeon.ir.walk import may_mention, mentioned

    weights = {t.name for t in a.initializer} | {t.values.name for t in a.sparse_initializer}
    if not weights.isdisjoint(rename.values()):
        return None  # a new name a weight has: the numbering says why
    clean = not contract.added_outputs and not any(mentioned(a, rename.values(), {*RANDOM_OPS, "Dropout"}))
    clean = clean and not may_mention(b, rename)
    if clean:
        pairs = [(x, y) for x, y in zip(a.node, b.node) if x != y]
        defined = None
    else:
        pairs = list(zip(a.node, b.node))
        defined = {v.name for v in a.input} | {t.name for t in a.initializer}
    if not _same_nodes(pairs, rename, defined):
        return None
    if defined is not None and (any(n in defined for n in rename.values()) or not set(rename) <= defined):
        return None  # a new name some other value has ("defined twice"), or a rename of nothing
    return _aligned_interface(a, b, contract, rename, defined)


def _same_nodes(
    pairs: list[tuple[onnx.NodeProto, onnx.NodeProto]], rename: Mapping[str, str], defined: set[str] | None
) -> bool:
    """Each pair the same node once ``rename`` maps the first's names; ``defined`` (when given) gets
    every output of the first (and then each node is checked for random draws and subgraphs)."""
    from surgeon.ir.walk import node_subgraphs

    old = set(rename)
    for x, y in pairs:
        out = x.output
        if defined is not None:
            op = x.op_type
            if (op in RANDOM_OPS or (op == "Dropout" and len(x.input) > 2)) and _domain(x.domain) == "":
                return False
            defined.update(out)
            if x == y and old.isdisjoint(x.input) and old.isdisjoint(out):
                if not x.attribute or not any(True for _ in node_subgraphs(x)):
                    continue
        if x.attribute and any(True for _ in node_subgraphs(x)):
            return False  # a subgraph's captured names: the numbering maps them
        if x.op_type != y.op_type or x.overload != y.overload or _domain(x.domain) != _domain(y.domain):
            return False
        if [rename.get(n, n) for n in x.input] != list(y.input) or [rename.get(n, n) for n in out] != list(y.output):
            return False
        if list(x.attribute) != list(y.attribute) and _plain_attributes(x) != _plain_attributes(y):
            return False
    return True


def _aligned_interface(
    a: onnx.GraphProto,
    b: onnx.GraphProto,
    contract: IOContract,
    rename: Mapping[str, str],
    defined: set[str] | None,
) -> str | None:
    """The inputs, outputs and declarations of two graphs whose nodes :func:`_same_nodes` matched."""
    want_in = [(rename.get(v.name, v.name), v.type) for v in a.input]
    if [v.name for v in b.input] != [n for n, _ in want_in]:
        return None
    bound: dict[str, int | None] = {}
    for (_, t), v in zip(want_in, b.input):
        if _input_change(t, v.type):
            return None
        _bind(t, v.type, bound)
    kept = [rename.get(v.name, v.name) for v in a.output if v.name not in contract.removed_outputs]
    got = [v.name for v in b.output]
    if len(set(got)) != len(got) or [n for n in got if n not in contract.added_outputs or n in kept] != kept:
        return None
    added = [n for n in got if n not in kept]
    if added:  # each a value the model before computed (``defined`` is known: the walk ran)
        assert defined is not None
        mapped = {rename.get(n, n) for n in defined}
        if any(n not in mapped for n in added):
            return None
    old = set(rename)
    decls: dict[str, list[onnx.TypeProto]] = {}
    for v in [*a.input, *a.output, *a.value_info]:
        if v.type.WhichOneof("value"):
            decls.setdefault(rename.get(v.name, v.name), []).append(v.type)
    same_decls = not old and list(a.value_info) == list(b.value_info)
    for v in [*b.output, *([] if same_decls else b.value_info)]:
        if v.type.WhichOneof("value") and not any(_implied(v.type, o, bound) for o in decls.get(v.name, [])):
            return None
    return f"same computation: {len(b.node)} node(s) equal in order, {len(got)} output(s)"


def _domain(d: str) -> str:
    return "" if d == "ai.onnx" else d


def _plain_attributes(n: onnx.NodeProto) -> list[bytes]:
    """A node's attributes without their doc strings, serialized, by name."""
    import onnx

    out = []
    for a in sorted(n.attribute, key=lambda a: a.name):
        c = onnx.AttributeProto()
        c.CopyFrom(a)
        c.ClearField("doc_string")
        out.append(c.SerializeToString(deterministic=True))
    return out


def _same_graph(a: onnx.GraphProto, b: onnx.GraphProto) -> bool:
    """The same graph, field for field (external references included: same file, same bytes),
    which the model's folder must also be for them to name the same bytes."""
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def _content(t: onnx.TensorProto, base_dir: Path | None, by_location: bool) -> Any:
    from surgeon.ir.external import external_ref, is_external, tensor_digest

    head = (t.data_type, tuple(t.dims))
    if is_external(t):
        if base_dir is None:
            raise NotProved(f"tensor '{t.name}' is external and the model has no folder")
        if by_location:
            ref = external_ref(t)
            return (*head, "at", os.path.realpath(base_dir / ref.location), ref.offset, ref.length)
        return (*head, "sha", tensor_digest(t, base_dir))
    if t.data_type == 8:  # STRING
        return (*head, "str", tuple(t.string_data))
    if t.HasField("raw_data"):
        raw = t.raw_data
    else:
        from onnx import numpy_helper

        raw = numpy_helper.to_array(t).tobytes()
    if by_location and len(raw) <= _SMALL:  # small and inline on both sides: the bytes themselves
        return (*head, "raw", raw)
    return (*head, "sha", hashlib.sha256(raw).hexdigest())


class _Side:
    """The numbering of one model (before or after), into the table both share."""

    def __init__(
        self,
        keys: dict[tuple[int, bool], tuple[Any, Any]],
        table: dict[Any, int],
        base_dir: Path | None,
        by_location: bool,
        who: str,
    ):
        self.keys = keys
        """Content keys of this model's tensors, by tensor."""
        self.table, self.base_dir, self.by_location, self.who = table, base_dir, by_location, who
        self.outputs: list[tuple[str, int]] = []
        self.inputs: list[tuple[str, Any]] = []
        """Inputs a caller feeds: (name after the step, declared type)."""
        self.defaults: list[str] = []
        self.values: set[int] = set()
        """Every value number of the main graph."""
        self.decls: dict[int, list[onnx.TypeProto]] = {}
        self.bound: dict[str, int | None] = {}
        """Symbols of the inputs before that the inputs after fix to one size."""
        self.n_nodes = 0

    def number(self, key: Any) -> int:
        return self.table.setdefault(key, len(self.table))

    def const(self, t: onnx.TensorProto) -> int:
        return self.number(("const", self.content(t)))

    def content(self, t: onnx.TensorProto) -> Any:
        """A key equal for two tensors with the same element type, dims and bytes."""
        cache_key = (id(t), self.by_location)
        hit = self.keys.get(cache_key)
        if hit is not None and hit[0] is t:
            return hit[1]
        key = _content(t, self.base_dir, self.by_location)
        self.keys[cache_key] = (t, key)
        return key

    # -- graphs ---------------------------------------------------------------------------------
    def main(self, g: onnx.GraphProto, contract: IOContract, renamed: bool) -> None:
        inits = {t.name: t for t in g.initializer}
        env: dict[str, int] = {}
        for t in g.initializer:
            env[t.name] = self.const(t)
        for s in g.sparse_initializer:
            env[s.values.name] = self.number(("sparse", s.SerializeToString(deterministic=True)))
        for vi in g.input:
            name = contract.renamed_inputs.get(vi.name, vi.name) if renamed else vi.name
            removed = renamed and vi.name in contract.removed_inputs
            if vi.name in inits:  # a default the caller may override: removed, it is the constant
                if not removed:
                    env[vi.name] = self.number(("input", name, self.const(inits[vi.name])))
                    self.defaults.append(name)
                continue
            env[vi.name] = self.number(("removed input" if removed else "input", name))
            if not removed:
                self.inputs.append((name, vi.type))
        self.values.update(env.values())
        self._nodes(g.node, env, depth=0, top=True)
        for vi in g.output:
            if vi.name not in env:
                raise NotProved(f"{self.who}: output '{vi.name}' is computed by no node")
            if renamed and vi.name in contract.removed_outputs:
                continue
            name = contract.renamed_outputs.get(vi.name, vi.name) if renamed else vi.name
            self.outputs.append((name, env[vi.name]))
        self._declare(g, env, inputs=renamed)

    def _declare(self, g: onnx.GraphProto, env: Mapping[str, int], inputs: bool = True) -> None:
        for vi in [*(g.input if inputs else ()), *g.output, *g.value_info]:
            if vi.name in env and vi.type.WhichOneof("value"):
                self.decls.setdefault(env[vi.name], []).append(vi.type)

    def _nodes(self, nodes: Iterable[onnx.NodeProto], env: MutableMapping[str, int], depth: int, top: bool) -> None:
        table, values = self.table, self.values
        local = env if top else env.maps[0]  # type: ignore[attr-defined]
        for n in nodes:
            domain, op = n.domain, n.op_type
            if domain == "ai.onnx":
                domain = ""
            if domain == "" and (op in RANDOM_OPS or (op == "Dropout" and len(n.input) > 2)):
                raise NotProved(f"node '{n.name or op}' ({op}) draws random numbers")
            inputs = list(n.input)
            try:
                ins = tuple([env[x] if x else -1 for x in inputs])
            except KeyError:
                x = next(x for x in inputs if x and x not in env)
                raise NotProved(
                    f"{self.who}: node '{n.name or op}' reads '{x}', which nothing defines before it"
                ) from None
            attributes = n.attribute
            if not attributes:
                attrs: tuple[Any, ...] = ()
            elif len(attributes) == 1:
                attrs = (self._attr(attributes[0], env, depth),)
            else:
                attrs = tuple(self._attr(a, env, depth) for a in sorted(attributes, key=lambda a: a.name))
            outputs = list(n.output)
            key = ("node", domain, op, n.overload, attrs, ins, tuple([bool(o) for o in outputs]))
            node_id = table.setdefault(key, len(table))
            for i, out in enumerate(outputs):
                if not out:
                    continue
                if out in local:
                    raise NotProved(f"{self.who}: '{out}' is defined twice")
                k = ("out", node_id, i)
                local[out] = v = table.setdefault(k, len(table))
                if top:
                    values.add(v)
            self.n_nodes += 1

    def _attr(self, a: onnx.AttributeProto, env: MutableMapping[str, int], depth: int) -> Any:
        if a.type == _GRAPH:
            return (a.name, "g", self._subgraph(a.g, env, depth + 1))
        if a.type == _GRAPHS:
            return (a.name, "gs", tuple(self._subgraph(s, env, depth + 1) for s in a.graphs))
        if a.type == _TENSOR:
            return (a.name, "t", self.const(a.t))
        if a.type == _TENSORS:
            return (a.name, "ts", tuple(self.const(t) for t in a.tensors))
        if a.doc_string:
            import onnx

            c = onnx.AttributeProto()
            c.CopyFrom(a)
            c.ClearField("doc_string")
            return c.SerializeToString(deterministic=True)
        return a.SerializeToString(deterministic=True)

    def _subgraph(self, g: onnx.GraphProto, outer: MutableMapping[str, int], depth: int) -> Any:
        env: ChainMap[str, int] = ChainMap({}, outer)
        params = []
        for i, vi in enumerate(g.input):  # formal parameters, bound by position
            env[vi.name] = self.number(("param", depth, i, vi.type.SerializeToString(deterministic=True)))
            params.append(env[vi.name])
        for t in g.initializer:
            env[t.name] = self.const(t)
        if g.sparse_initializer:
            raise NotProved("a subgraph has sparse initializers")
        self._nodes(g.node, env, depth, top=False)
        outs = []
        for vi in g.output:
            if vi.name not in env:
                raise NotProved(f"{self.who}: subgraph output '{vi.name}' is computed by nothing")
            outs.append((env[vi.name], vi.type.SerializeToString(deterministic=True)))
        self._declare(g, env)
        return self.number(("graph", tuple(params), tuple(outs)))


# --- what must hold beyond the numbers -----------------------------------------------------------


def _model_level(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    if before.ir_version != after.ir_version:
        raise NotProved(f"ir_version {after.ir_version} != {before.ir_version} before")
    a, b = _opsets(before), _opsets(after)
    if a != b:
        raise NotProved(f"opset imports {b} != {a} before")
    if _functions(before) != _functions(after):
        raise NotProved("model-local functions differ")
    if [t.SerializeToString(deterministic=True) for t in before.training_info] != [
        t.SerializeToString(deterministic=True) for t in after.training_info
    ]:
        raise NotProved("training info differs")


def _opsets(m: onnx.ModelProto) -> dict[str, int]:
    return {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in m.opset_import}


def _functions(m: onnx.ModelProto) -> dict[tuple[str, str, str], bytes]:
    import onnx

    out = {}
    for f in m.functions:
        c = onnx.FunctionProto()
        c.CopyFrom(f)
        c.ClearField("doc_string")
        if hasattr(c, "metadata_props"):
            del c.metadata_props[:]
        for n in c.node:
            n.ClearField("doc_string")
            if hasattr(n, "metadata_props"):
                del n.metadata_props[:]
            n.ClearField("name")
        out[(f.domain, f.name, getattr(f, "overload", ""))] = c.SerializeToString(deterministic=True)
    return out


def _outputs(src: _Side, dst: _Side, contract: IOContract) -> None:
    after = dict(dst.outputs)
    if len(after) != len(dst.outputs):
        raise NotProved("after: an output is listed twice")
    kept = src.outputs
    for name, value in kept:
        if name not in after:
            raise NotProved(f"output '{name}' is gone and the contract does not remove it")
        if after[name] != value:
            raise NotProved(f"output '{name}' is computed differently")
    kept_names = {n for n, _ in kept}
    for name, value in dst.outputs:
        if name in kept_names:
            continue
        if name not in contract.added_outputs:
            raise NotProved(f"output '{name}' is new and the contract does not add it")
        if value not in src.values:
            raise NotProved(f"added output '{name}' is no value the model before computed")
    want_in = [n for n, _ in src.inputs]
    have_in = [n for n, _ in dst.inputs]
    if sorted(want_in) != sorted(have_in) or (not contract.reordered and want_in != have_in):
        raise NotProved(f"inputs {have_in} != {want_in} (before, renamed, minus removed)")
    if sorted(src.defaults) != sorted(dst.defaults):
        raise NotProved("inputs with a default value differ")
    before_types = dict(src.inputs)
    for name, t in dst.inputs:
        why = _input_change(before_types[name], t)
        if why:
            raise NotProved(f"input '{name}': {why}")
        _bind(before_types[name], t, src.bound)


def _bind(old: onnx.TypeProto, new: onnx.TypeProto, bound: dict[str, int | None]) -> None:
    """Symbols of an input's dims before that are sizes after (fix-dims): the model after accepts
    only that size, so a declaration before in that symbol holds at that size (None: bound to two)."""
    if not (old.HasField("tensor_type") and old.tensor_type.HasField("shape") and new.tensor_type.HasField("shape")):
        return
    for x, y in zip(old.tensor_type.shape.dim, new.tensor_type.shape.dim):
        if x.HasField("dim_param") and y.HasField("dim_value"):
            seen = bound.setdefault(x.dim_param, y.dim_value)
            if seen != y.dim_value:
                bound[x.dim_param] = None


def _input_change(old: onnx.TypeProto, new: onnx.TypeProto) -> str:
    """Why the input's declaration after is not the same input: another element type or rank, a static
    size changed to another (a symbol for a size, or a size for a symbol, leaves the sizes both accept)."""
    if old.WhichOneof("value") != new.WhichOneof("value"):
        return "its type kind changed"
    if not old.HasField("tensor_type"):
        return "" if old == new else "its type changed"
    a, b = old.tensor_type, new.tensor_type
    if a.elem_type != b.elem_type:
        return f"element type {b.elem_type} != {a.elem_type} before"
    if not (a.HasField("shape") and b.HasField("shape")):
        return ""
    if len(a.shape.dim) != len(b.shape.dim):
        return f"rank {len(b.shape.dim)} != {len(a.shape.dim)} before"
    for axis, (x, y) in enumerate(zip(a.shape.dim, b.shape.dim)):
        if x.HasField("dim_value") and y.HasField("dim_value") and x.dim_value != y.dim_value:
            return f"axis {axis} is {y.dim_value}, was {x.dim_value}"
    return ""


def _declarations(src: _Side, dst: _Side) -> None:
    """Every declaration after says no more than one before of the same value (the main graph's
    inputs aside: theirs are the interface, checked by :func:`_input_change`)."""
    for value, types in dst.decls.items():
        olds = src.decls.get(value, [])
        for t in types:
            if not any(_implied(t, o, src.bound) for o in olds):
                raise NotProved("a declared type or shape after says more than the model before declared")


def _implied(new: onnx.TypeProto, old: onnx.TypeProto, bound: Mapping[str, int | None]) -> bool:
    """Whether ``old`` (a declaration before) implies ``new``: same kind and element type, and every
    size or symbol ``new`` states, ``old`` stated (a size, or a symbol ``bound`` to that size by
    the inputs)."""
    if new.WhichOneof("value") != old.WhichOneof("value"):
        return False
    if not new.HasField("tensor_type"):
        return new == old
    a, b = old.tensor_type, new.tensor_type
    if b.elem_type and a.elem_type != b.elem_type:
        return False
    if not b.HasField("shape"):
        return True
    if not a.HasField("shape") or len(a.shape.dim) != len(b.shape.dim):
        return False
    for x, y in zip(a.shape.dim, b.shape.dim):
        if y.HasField("dim_value"):
            if x.HasField("dim_value") and x.dim_value == y.dim_value:
                continue
            if not (x.HasField("dim_param") and bound.get(x.dim_param) == y.dim_value):
                return False
        if y.HasField("dim_param") and not (x.HasField("dim_param") and x.dim_param == y.dim_param):
            return False
    return True
