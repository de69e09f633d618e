"""Graph edits on the protobuf, for passes that run while no onnx-graphsurgeon graph is built
(``ModelIR.built`` is False): dead-node removal and a stable topological sort (cleanup, and the
pruning of remove-outputs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from surgeon.errors import PassError

if TYPE_CHECKING:
    import onnx


def clean_proto(g: onnx.GraphProto, remove_inputs: bool, toposort: bool, top: bool) -> set[str]:
    """Drop the nodes no output of ``g`` needs, the initializers and value_info of what is gone (and,
    with ``remove_inputs``, main-graph inputs no node reads), sort the nodes topologically; subgraphs
    first, each on its own. Returns the outer names ``g`` still reads (its captures)."""
    from surgeon.ir.walk import node_subgraphs

    uses: list[list[str]] = []
    for n in g.node:
        names = [x for x in n.input if x]
        for sub in node_subgraphs(n):
            names += sorted(clean_proto(sub, False, toposort, top=False))
        uses.append(names)
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    needed: set[int] = set()
    stack = [producer[o.name] for o in g.output if o.name in producer]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(producer[x] for x in uses[i] if x in producer and producer[x] not in needed)
    order = sorted(needed)
    if toposort:
        order = _topo(order, uses, producer)
    kept = [g.node[i] for i in order]
    read = {x for i in order for x in uses[i]} | {o.name for o in g.output}
    defined = {o for n in kept for o in n.output} | {vi.name for vi in g.input}
    copies = [type(n)() for n in kept]
    for c, n in zip(copies, kept):
        c.CopyFrom(n)
    del g.node[:]
    g.node.extend(copies)
    inits = [t for t in g.initializer if t.name in read or t.name in {vi.name for vi in g.input}]
    if len(inits) != len(g.initializer):
        keep_inits = [type(t)() for t in inits]
        for c, t in zip(keep_inits, inits):
            c.CopyFrom(t)
        del g.initializer[:]
        g.initializer.extend(keep_inits)
    if remove_inputs and top:
        init_names = {t.name for t in g.initializer}
        ins = [vi for vi in g.input if vi.name in read or vi.name in init_names]
        if len(ins) != len(g.input):
            keep_ins = [type(vi)() for vi in ins]
            for c, vi in zip(keep_ins, ins):
                c.CopyFrom(vi)
            del g.input[:]
            g.input.extend(keep_ins)
    present = defined | {t.name for t in g.initializer}
    vis = [vi for vi in g.value_info if vi.name in present]
    if len(vis) != len(g.value_info):
        keep_vis = [type(vi)() for vi in vis]
        for c, vi in zip(keep_vis, vis):
            c.CopyFrom(vi)
        del g.value_info[:]
        g.value_info.extend(keep_vis)
    local = defined | {t.name for t in g.initializer}
    return {x for x in read if x not in local}


def _topo(order: list[int], uses: list[list[str]], producer: dict[str, int]) -> list[int]:
    """Kahn's algorithm over the kept nodes, ties in their original order; a cycle is a PassError."""
    import heapq

    kept = set(order)
    deps = {
        i: {producer[x] for x in uses[i] if x in producer and producer[x] in kept and producer[x] != i} for i in order
    }
    users: dict[int, list[int]] = {i: [] for i in order}
    for i, ds in deps.items():
        for d in ds:
            users[d].append(i)
    waiting = {i: len(ds) for i, ds in deps.items()}
    ready = [i for i in order if not waiting[i]]
    heapq.heapify(ready)
    out = []
    while ready:
        i = heapq.heappop(ready)
        out.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, u)
    if len(out) != len(order):
        raise PassError("cannot sort the graph: it has a cycle")
    return out
