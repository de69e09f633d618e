"""The rewrite pass's engine: find matches of a rule (onnxscript's matcher), check each for
safety, make its replacement, and apply the replacements kept to the ModelProto."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from surgeon.passes._rewrite_rules import (
    Rule,
    attribute_value,
    check_where,
    dtype_name,
    proto_attribute_value,
    same_value,
    schema_default,
)

if TYPE_CHECKING:
    import numpy as np
    import onnx

NEAR_MISS_SHARE = 0.5
"""A failed match is a near miss when at least this share of the pattern's nodes (and two) matched."""


@dataclass
class Match:
    """One place a rule's pattern matched, and what became of it."""

    rule: Rule
    nodes: list[Any]
    """onnx_ir nodes matched."""
    index: list[int]
    """Their positions in the graph's node list."""
    label: str
    inputs: dict[str, str] = field(default_factory=dict)
    """Pattern input name -> the model's tensor name ('' for an absent optional input)."""
    outputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    ops: dict[str, str] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    """Constant inputs by the model's tensor name."""
    status: str = "applied"
    """applied, refused, undone, near miss."""
    reason: str = ""
    error: float | None = None

    def line(self) -> str:
        head = f"{self.status} {self.rule.name} at {self.label}"
        if self.status == "applied":
            return head + (f" (max abs error {self.error:.3g})" if self.error is not None else "")
        return f"{head}: {self.reason}"


def node_label(node: Any, index: int) -> str:
    """A node as messages name it: its name, else its op and first output (``Div -> 'd'``)."""
    if node.name:
        return f"'{node.name}' ({node.op_type})"
    out = next((v.name for v in node.outputs if v is not None and v.name), "")
    return f"{node.op_type} -> '{out}'" if out else f"#{index} ({node.op_type})"


def const_of(value: Any) -> np.ndarray | None:
    cv = getattr(value, "const_value", None)
    if cv is None:
        return None
    try:
        return cv.numpy()
    except Exception:  # external data that cannot be read: not a usable constant
        return None


def find_matches(rule: Rule, model: Any, opset: int, claimed: set[int]) -> list[Match]:
    """Every match of ``rule`` in the onnx_ir ``model`` (its top-level graph), each checked:
    applied (for now: the per-match check comes later), refused, or a near miss."""
    from onnxscript.rewriter import _matcher

    graph = model.graph
    nodes = list(graph)
    position = {id(n): i for i, n in enumerate(nodes)}
    matchers = [(alt, [(v, _matcher.SimplePatternMatcher(v)) for v in variants]) for alt, variants in rule.compiled]
    out: list[Match] = []
    for node in nodes:
        if position[id(node)] in claimed:
            continue
        found: Match | None = None
        refused: Match | None = None
        best: tuple[int, Any, int] | None = None
        for alt, variants in matchers:
            size = len(rule.patterns[alt].node)
            for variant, matcher in variants:
                m = matcher.match(model, graph, node, remove_nodes=False)
                if not m:
                    got = m.num_matched_nodes()
                    if best is None or got > best[0]:
                        best = (got, m, size)
                    continue
                cand = _candidate(rule, alt, variant, m, position, claimed, opset, graph)
                if cand.status == "applied":
                    found = cand
                    break
                refused = refused or cand
            if found:
                break
        if found is not None:
            out.append(found)
            claimed.update(found.index)
        elif refused is not None:
            out.append(refused)
        elif best is not None and best[0] >= max(2, NEAR_MISS_SHARE * best[2]):
            got, m, _ = best
            where = list(
                {id(n): n for n in getattr(m, "failure_nodes_and_values", []) if hasattr(n, "op_type")}.values()
            )
            at = ", ".join(node_label(n, position.get(id(n), -1)) for n in where[:2])
            reason = (m.reason or "the pattern does not match") + (f" (at {at})" if at else "")
            out.append(
                Match(
                    rule,
                    [node],
                    [position[id(node)]],
                    node_label(node, position[id(node)]),
                    status="near miss",
                    reason=reason,
                )
            )
    taken = {i for m in out if m.status != "near miss" for i in m.index}
    out = [m for m in out if m.status != "near miss" or m.index[0] not in taken]
    return sorted(out, key=lambda m: m.index[-1])


def _candidate(
    rule: Rule, alt: int, variant: Any, m: Any, position: Mapping[int, int], claimed: set[int], opset: int, graph: Any
) -> Match:
    pattern = rule.patterns[alt]
    matched = list(m.nodes)
    index = sorted(position[id(n)] for n in matched)
    order = sorted(matched, key=lambda n: position[id(n)])
    label = ", ".join(node_label(n, position[id(n)]) for n in order)
    match = Match(rule, order, index, label)

    def refuse(reason: str) -> Match:
        match.status, match.reason = "refused", reason
        return match

    if claimed.intersection(index):
        return refuse("overlaps a match already taken")
    # attributes: literal ones must equal the node's, @refs bind, others must be at their default
    for k, pnode in enumerate(variant):
        node = m.node_bindings[pnode]
        proto = pattern.node[k]
        if proto.op_type in rule.ops:
            match.ops[proto.op_type] = node.op_type
        listed = set()
        for a in proto.attribute:
            listed.add(a.name)
            have = node.attributes.get(a.name)
            actual = (
                attribute_value(have) if have is not None else schema_default(node.op_type, node.domain, opset, a.name)
            )
            if a.ref_attr_name:
                if actual is None:
                    return refuse(f"{node_label(node, position[id(node)])} has no attribute {a.name} to carry over")
                match.attrs[a.ref_attr_name] = actual
            elif not same_value(actual, proto_attribute_value(a)):
                want = proto_attribute_value(a)
                return refuse(
                    f"{node_label(node, position[id(node)])} has {a.name}={actual!r}, the rule needs {want!r}"
                )
        for name, attr in node.attributes.items():
            if name in listed:
                continue
            default = schema_default(node.op_type, node.domain, opset, name)
            if default is None or not same_value(attribute_value(attr), default):
                who = node_label(node, position[id(node)])
                return refuse(f"{who} sets {name}={attribute_value(attr)!r}, which the pattern does not allow")
    # inputs: names, constants, conditions
    inits = {t.name: t for t in pattern.initializer}
    for name in [vi.name for vi in pattern.input] + [n for n in inits if n not in {vi.name for vi in pattern.input}]:
        value = m.bindings.get(name)
        if value is None:
            match.inputs[name] = ""
            continue
        match.inputs[name] = value.name
        const = const_of(value)
        if const is not None:
            match.consts[value.name] = const
        conds = []
        if name in inits:
            from onnx import numpy_helper

            conds.append({"value": float(numpy_helper.to_array(inits[name]).reshape(-1)[0])})
        if name in rule.where:
            conds.append(rule.where[name])
        for cond in conds:
            why = check_where(name, cond, value, const, value.name)
            if why:
                return refuse(why)
    match.outputs = [v.name for v in m.outputs]
    # inner values used outside the match
    inside = {id(n) for n in matched}
    outs = {id(v) for v in m.outputs}
    for n in order:
        for v in n.outputs:
            if id(v) in outs:
                continue
            if v.is_graph_output():
                return refuse(f"inner value '{v.name}' of {node_label(n, position[id(n)])} is a graph output")
            for user, _ in v.uses():
                if id(user) not in inside:
                    return refuse(
                        f"inner value '{v.name}' of {node_label(n, position[id(n)])} is also used by "
                        f"{node_label(user, position.get(id(user), -1))} outside the match"
                    )
    if opset < rule.opset:
        ops = ", ".join(sorted({n.op_type for n in rule.replacement.node}))
        return refuse(f"the model's opset is {opset}; the replacement ({ops}) needs opset {rule.opset} or later")
    why = _type_check(match, m, opset)
    return refuse(why) if why else match


def instantiate(
    match: Match, prefix: str, out_names: Sequence[str], for_check: bool = False
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], dict[str, str]]:
    """The replacement's nodes and constants for ``match``, its outputs named ``out_names``;
    and the outputs that are one of its inputs (``{output: input}``: consumers are rewired;
    ``for_check`` makes them Identity nodes instead)."""
    from onnx import helper

    rep = match.rule.replacement
    names: dict[str, str] = {vi.name: match.inputs.get(vi.name, "") for vi in rep.input}
    inits = []
    for t in rep.initializer:
        c = type(t)()
        c.CopyFrom(t)
        c.name = prefix + t.name
        names[t.name] = c.name
        inits.append(c)
    passthrough: dict[str, str] = {}
    nodes = []
    for j, o in enumerate(rep.output):
        if o.name in names:
            if for_check:
                nodes.append(helper.make_node("Identity", [names[o.name]], [out_names[j]], name=f"{prefix}out{j}"))
            else:
                passthrough[out_names[j]] = names[o.name]
        else:
            names[o.name] = out_names[j]
    for k, node in enumerate(rep.node):
        op = match.ops.get(node.op_type, node.op_type)
        attrs = {}
        for a in node.attribute:
            if a.ref_attr_name:
                attrs[a.name] = _attr_from(a, _bound(match, a.ref_attr_name))
            else:
                attrs[a.name] = proto_attribute_value(a)
        ins = [names.setdefault(i, prefix + i) if i else "" for i in node.input]
        outs = [names.setdefault(o, prefix + o) for o in node.output]
        nodes.append(
            helper.make_node(op, ins, outs, name=f"{prefix}{node.name or op}_{k}", domain=node.domain or None, **attrs)
        )
    return nodes, inits, passthrough


def _bound(match: Match, ref: str) -> Any:
    if ref in match.attrs:
        return match.attrs[ref]
    tensor = match.inputs.get(ref)
    if tensor and tensor in match.consts:
        arr = match.consts[tensor]
        return arr.reshape(-1)[0].item() if arr.size == 1 else tuple(arr.reshape(-1).tolist())
    raise KeyError(f"@{ref} is neither an attribute the pattern binds nor a constant input")


def _attr_from(a: onnx.AttributeProto, value: Any) -> Any:
    """``value`` in the type the replacement declares for attribute ``a``."""
    from onnx import AttributeProto

    if a.type == AttributeProto.FLOAT:
        return float(value)
    if a.type == AttributeProto.INT:
        return int(value)
    if a.type == AttributeProto.INTS:
        return [int(v) for v in (value if isinstance(value, tuple) else (value,))]
    if a.type == AttributeProto.FLOATS:
        return [float(v) for v in (value if isinstance(value, tuple) else (value,))]
    return value


def _type_check(match: Match, m: Any, opset: int) -> str:
    """'' when the replacement makes the dtypes and shapes the match's outputs have (where the
    model's shape inference knows them), else why not."""
    import onnx
    from onnx import helper

    try:
        nodes, inits, _ = instantiate(match, "__t_", [f"__t_out{j}" for j in range(len(match.outputs))], for_check=True)
    except KeyError as exc:
        return f"the replacement cannot be made: {exc.args[0]}"
    values = {v.name: v for v in m.bindings.values() if hasattr(v, "uses")}
    inputs, consts = [], []
    for tensor in dict.fromkeys(t for t in match.inputs.values() if t):
        if tensor in match.consts:
            from onnx import numpy_helper

            consts.append(numpy_helper.from_array(match.consts[tensor], tensor))
            continue
        v = values.get(tensor)
        if v is None or v.dtype is None:
            return ""  # unknown types: the per-match check compares dtype and shape
        shape = None if v.shape is None else [d if isinstance(d, int) else str(d) for d in v.shape]
        inputs.append(helper.make_tensor_value_info(tensor, int(v.dtype.value), shape))
    outs = [onnx.ValueInfoProto(name=f"__t_out{j}") for j in range(len(match.outputs))]
    graph = helper.make_graph(nodes, "check", inputs, outs, initializer=consts + inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        return f"the replacement does not type-check: {text[-1][:300] if text else type(exc).__name__}"
    got = {vi.name: vi.type.tensor_type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for j, name in enumerate(match.outputs):
        want = next((o for o in m.outputs if o.name == name), None)
        have = got.get(f"__t_out{j}")
        if want is None or have is None or want.dtype is None:
            continue
        if have.elem_type and have.elem_type != int(want.dtype.value):
            made, model_has = dtype_name(have.elem_type), dtype_name(int(want.dtype.value))
            return f"the replacement makes '{name}' {made}, the model has {model_has}"
        if want.shape is not None and have.HasField("shape"):
            a = [d if isinstance(d, int) else None for d in want.shape]
            b = [d.dim_value if d.HasField("dim_value") else None for d in have.shape.dim]
            if len(a) != len(b) or any(x is not None and y is not None and x != y for x, y in zip(a, b)):
                return f"the replacement makes '{name}' of shape {_dims(b)}, the model's is {_dims(a)}"
    return ""


def _dims(dims: Iterable[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# --- applying to the ModelProto ------------------------------------------------------------------


def apply(proto: onnx.ModelProto, matches: Sequence[Match], tag: str) -> None:
    """Replace each match's nodes in ``proto``'s graph by its replacement (in place); drop the
    constants only the matches used; keep the nodes in topological order."""
    from onnx import helper

    graph = proto.graph
    old = list(graph.node)
    drop: set[int] = set()
    at: dict[int, list[onnx.NodeProto]] = {}
    rewire: dict[str, str] = {}
    graph_outputs = {o.name for o in graph.output}
    consts: set[str] = set()
    for k, m in enumerate(matches):
        nodes, inits, passthrough = instantiate(m, f"{tag}{k}/", m.outputs)
        for out, src in passthrough.items():
            if out in graph_outputs:
                nodes.append(helper.make_node("Identity", [src], [out], name=f"{tag}{k}/{out}"))
            else:
                rewire[out] = src
        drop.update(m.index)
        at.setdefault(max(m.index), []).extend(nodes)
        graph.initializer.extend(inits)
        consts.update(m.consts)
    new = []
    for i, n in enumerate(old):
        if i not in drop:
            new.append(n)
        new.extend(at.get(i, []))
    for n in new:
        for j, name in enumerate(n.input):
            while name in rewire:
                name = rewire[name]
            n.input[j] = name
    del graph.node[:]
    graph.node.extend(_topological(new))
    _drop_unused(graph, consts)
    produced = (
        {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    )
    keep = [vi for vi in graph.value_info if vi.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    made = {o: i for i, n in enumerate(nodes) for o in n.output}
    order: list[int] = []
    state = [0] * len(nodes)
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            i, done = stack.pop()
            if done:
                state[i] = 2
                order.append(i)
                continue
            if state[i]:
                continue
            state[i] = 1
            stack.append((i, True))
            for name in reversed(_reads(nodes[i])):
                j = made.get(name)
                if j is not None and j != i and state[j] == 0:
                    stack.append((j, False))
    return [nodes[i] for i in order]


def _reads(node: onnx.NodeProto) -> list[str]:
    """Names a node reads, its subgraphs' outer references included."""
    from surgeon.ir.walk import node_subgraphs

    names = [i for i in node.input if i]
    for g in node_subgraphs(node):
        for n in g.node:
            names.extend(_reads(n))
    return names


def _drop_unused(graph: onnx.GraphProto, names: set[str]) -> None:
    """Constants among ``names`` (initializers, Constant nodes) nothing reads any more."""
    used = {i for n in graph.node for i in _reads(n)} | {o.name for o in graph.output}
    gone = {n for n in names if n not in used}
    if not gone:
        return
    inputs = {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name not in gone or t.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output and n.output[0] in gone)]
    del graph.node[:]
    graph.node.extend(nodes)
