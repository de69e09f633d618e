"""What a pass changed in the graph's structure: the nodes it added, removed and rewired, the ones
matched through renames (a node renamed, a tensor renamed), the op counts before and after, and
the changed region with its neighbours (what the HTML report draws).

The pipeline takes a :func:`sketch` of the main graph before and after each pass (names only, no
values: cheap for a 10 000-node graph) and keeps :func:`diff`'s plain-JSON result on the step's
report. Subgraphs (If/Loop bodies) are counted in the model's op histogram, not diffed here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LIST_LIMIT = 200
"""Names kept per list (added, removed, rewired, renamed); the counts are always whole."""
REGION_CHANGED = 40
"""Changed nodes drawn at most (in topological order); the rest are counted as omitted."""
REGION_NODES = 90
"""Nodes drawn at most, neighbours and graph inputs/outputs included."""


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Sketch:
    """A graph's structure: its nodes in order (names, ops, tensor names) and its inputs/outputs."""

    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def ops(self) -> dict[str, int]:
        return dict(Counter(n.op for n in self.nodes).most_common())


def sketch(graph: Any) -> Sketch:
    """The structure of an onnx-graphsurgeon graph or of an ``onnx.GraphProto`` (its main graph;
    a protobuf's inputs that have an initializer are left out, as onnx-graphsurgeon leaves them)."""
    import onnx  # (a gs.Graph answers hasattr(.., "node") by logging an error: ask the type)

    if isinstance(graph, onnx.GraphProto):  # a lazily imported model that no pass has built yet
        inits = {t.name for t in graph.initializer}
        return Sketch(
            tuple(
                Node(
                    n.name,
                    f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type,
                    tuple(n.input),
                    tuple(n.output),
                )
                for n in graph.node
            ),
            tuple(v.name for v in graph.input if v.name not in inits),
            tuple(v.name for v in graph.output),
        )
    nodes = []
    for n in graph.nodes:
        op = f"{n.domain}::{n.op}" if n.domain not in (None, "", "ai.onnx") else n.op
        nodes.append(Node(n.name or "", op, tuple(t.name for t in n.inputs), tuple(t.name for t in n.outputs)))
    return Sketch(tuple(nodes), tuple(t.name for t in graph.inputs), tuple(t.name for t in graph.outputs))


def _unique_names(nodes: Iterable[Node]) -> dict[str, int]:
    counts = Counter(n.name for n in nodes if n.name)
    return {n.name: i for i, n in enumerate(nodes) if n.name and counts[n.name] == 1}


def _match(before: Sketch, after: Sketch) -> tuple[dict[int, int], dict[str, str]]:
    """Before-node index -> after-node index, and tensor renames (old -> new)."""
    b_names, a_names = _unique_names(before.nodes), _unique_names(after.nodes)
    match: dict[int, int] = {}
    for name, i in b_names.items():
        j = a_names.get(name)
        if j is not None and before.nodes[i].op == after.nodes[j].op:
            match[i] = j
    # the same outputs and op: the same node, renamed
    a_taken = set(match.values())
    by_outputs: dict[tuple[str, tuple[str, ...]], int] = {}
    for j, n in enumerate(after.nodes):
        if j not in a_taken and n.outputs:
            by_outputs.setdefault((n.op, n.outputs), j)
    for i, n in enumerate(before.nodes):
        if i not in match:
            j = by_outputs.pop((n.op, n.outputs), -1)
            if j >= 0:
                match[i] = j
    # tensor renames: a matched node's output under another name (old gone, new not there before)
    b_tensors = {t for n in before.nodes for t in (*n.inputs, *n.outputs)} | set(before.inputs)
    a_tensors = {t for n in after.nodes for t in (*n.inputs, *n.outputs)} | set(after.inputs)
    renames: dict[str, str] = {}
    for i, j in match.items():
        for old, new in zip(before.nodes[i].outputs, after.nodes[j].outputs):
            if old != new and old not in a_tensors and new not in b_tensors:
                renames[old] = new
    for old, new in zip(before.inputs, after.inputs):
        if old != new and old not in a_tensors and new not in b_tensors:
            renames[old] = new
    # nodes without a usable name: the same op on the same (renamed) inputs
    a_taken = set(match.values())
    by_inputs: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for j, n in enumerate(after.nodes):
        if j not in a_taken:
            by_inputs.setdefault((n.op, n.inputs), []).append(j)
    for i, n in enumerate(before.nodes):
        if i not in match:
            key = (n.op, tuple(renames.get(t, t) for t in n.inputs))
            cands = by_inputs.get(key)
            if cands and len(cands) == 1:
                match[i] = cands.pop()
    return match, renames


def diff(before: Sketch, after: Sketch) -> dict[str, Any]:
    """The structural change from ``before`` to ``after`` as plain JSON (see the module doc)."""
    match, renames = _match(before, after)
    matched_after = set(match.values())
    removed = [i for i in range(len(before.nodes)) if i not in match]
    added = [j for j in range(len(after.nodes)) if j not in matched_after]
    rewired: list[tuple[int, int]] = []
    renamed: list[tuple[int, int]] = []
    for i, j in sorted(match.items(), key=lambda kv: kv[1]):
        b, a = before.nodes[i], after.nodes[j]
        ins = tuple(renames.get(t, t) for t in b.inputs)
        outs = tuple(renames.get(t, t) for t in b.outputs)
        if ins != a.inputs or outs != a.outputs:
            rewired.append((i, j))
        elif b.name != a.name or b.inputs != a.inputs or b.outputs != a.outputs:
            renamed.append((i, j))
    label = _labeler(before, after)
    changed = {
        "added": [label("a", j) for j in added],
        "removed": [label("b", i) for i in removed],
        "rewired": [label("a", j) for _, j in rewired],
        "renamed": [[label("b", i), label("a", j)] for i, j in renamed if before.nodes[i].name != after.nodes[j].name],
    }
    out: dict[str, Any] = {
        "counts": {
            "added": len(added),
            "removed": len(removed),
            "rewired": len(rewired),
            "renamed": len(renamed),
            "tensors_renamed": len(renames),
        },
        **{k: v[:LIST_LIMIT] for k, v in changed.items()},
        "tensors_renamed": [[old, new] for old, new in list(renames.items())[:LIST_LIMIT]],
        "io_before": {"inputs": list(before.inputs), "outputs": list(before.outputs)},
        "io_after": {"inputs": list(after.inputs), "outputs": list(after.outputs)},
    }
    states: dict[tuple[str, Any], str] = {("a", j): "added" for j in added}
    states |= {("b", i): "removed" for i in removed}
    states |= {("a", j): "rewired" for _, j in rewired}
    states |= {("a", j): "renamed" for _, j in renamed}
    out["region"] = _region(before, after, match, states, renames)
    return out


def _labeler(before: Sketch, after: Sketch) -> Any:
    def label(side: str, k: int) -> str:
        n = (after if side == "a" else before).nodes[k]
        return n.name or f"{n.op} -> {', '.join(n.outputs) or '?'}"

    return label


def _region(
    before: Sketch,
    after: Sketch,
    match: Mapping[int, int],
    states: Mapping[tuple[str, Any], str],
    renames: Mapping[str, str],
) -> dict[str, Any]:
    """The changed nodes (at most :data:`REGION_CHANGED`, first in topological order), their
    neighbours one edge away and the graph inputs/outputs they touch, with the edges among them.
    Removed nodes are placed among the after-graph nodes their before-neighbours became."""
    order = sorted(states, key=lambda k: (k[1] if k[0] == "a" else match_pos(k[1], before, match), k[0]))
    shown_changed = order[:REGION_CHANGED]
    ids: dict[tuple[str, Any], str] = {}
    nodes: list[dict[str, Any]] = []

    def add(key: tuple[str, Any], state: str) -> str:
        if key not in ids:
            ids[key] = f"n{len(ids)}"
            side, k = key
            if side in ("in", "out"):
                nodes.append({"id": ids[key], "name": k, "op": "input" if side == "in" else "output", "state": "io"})
            else:
                n = (after if side == "a" else before).nodes[k]
                nodes.append({"id": ids[key], "name": n.name, "op": n.op, "state": state})
        return ids[key]

    for key in shown_changed:
        add(key, states[key])
    edges: set[tuple[str, str, str]] = set()
    budget = REGION_NODES
    adjacency = {"a": _adjacency(after), "b": _adjacency(before)}

    def link(side: str, sk: Sketch, k: int, canon: Any) -> None:
        n = sk.nodes[k]
        me = ids[(side, k)]
        prod, cons = adjacency[side]
        for t in n.inputs:
            if not t:
                continue
            p = prod.get(t)
            key = canon(p) if p is not None else (("in", t) if t in sk.inputs else None)
            if key is not None and (key in ids or len(ids) < budget):
                edges.add((add(key, states.get(key, "context")), me, t))
        for t in n.outputs:
            for c in cons.get(t, ()):
                key = canon(c)
                if key in ids or len(ids) < budget:
                    edges.add((me, add(key, states.get(key, "context")), t))
            if t in sk.outputs:
                edges.add((me, add(("out", t), "io"), t))

    def after_key(j: int) -> tuple[str, int]:
        return ("a", j)

    def before_key(i: int) -> tuple[str, int]:
        return ("a", match[i]) if i in match else ("b", i)

    for side, k in shown_changed:
        if side == "a":
            link("a", after, k, after_key)
        else:
            link("b", before, k, before_key)
    # edges among context nodes drawn (a neighbour feeding another one)
    prod = adjacency["a"][0]
    for (side, j), nid in list(ids.items()):
        if side == "a":
            for t in after.nodes[j].inputs:
                p = prod.get(t)
                if p is not None and ("a", p) in ids:
                    edges.add((ids[("a", p)], nid, t))
    return {
        "nodes": nodes,
        "edges": sorted([list(e) for e in edges]),
        "omitted": max(0, len(order) - len(shown_changed)),
        "tensors_renamed": {new: old for old, new in renames.items()},
    }


def match_pos(i: int, before: Sketch, match: Mapping[int, int]) -> float:
    """Where a removed node sits among the after-graph's nodes: after its nearest matched predecessor."""
    for k in range(i, -1, -1):
        if k in match:
            return match[k] + 0.5
    return -0.5


def _adjacency(sk: Sketch) -> tuple[dict[str, int], dict[str, list[int]]]:
    """The producer of each tensor and the consumers of each tensor."""
    prod: dict[str, int] = {}
    cons: dict[str, list[int]] = {}
    for k, n in enumerate(sk.nodes):
        for t in n.outputs:
            prod[t] = k
        for t in n.inputs:
            if t:
                cons.setdefault(t, []).append(k)
    return prod, cons
