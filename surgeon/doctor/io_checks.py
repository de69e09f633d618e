"""Checks of the interface and the file: I/O names, a static batch, leftovers of old exporters,
dead code, size, stale value_info."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from surgeon.doctor.findings import Finding
from surgeon.doctor.graphinfo import GraphInfo, captured, has_shape, json_safe, label, type_of
from surgeon.ir.walk import unused_name

if TYPE_CHECKING:
    import onnx

AUTO_NAME = re.compile(r"^(/.*_output_\d+|onnx::.*|[A-Za-z_]+\.\d+|\d+)$")
"""Names exporters make up: ``/conv1/Conv_output_0``, ``onnx::Flatten_0``, ``input.1``, ``32``."""
AUTO_OUTPUT = re.compile(
    r"^(conv[123]?d|linear|addmm|matmul|relu|gelu|tanh|sigmoid|softmax|log_softmax|view|reshape|flatten|cat|add|sub|mul|div|"
    r"getitem|select|slice|permute|transpose|squeeze|unsqueeze|mean|sum|layer_norm|batch_norm|clone|max_pool[123]d|avg_pool[123]d|"
    r"upsample_\w+|interpolate|val)(_\d+)?$"
)
"""Output names the dynamo exporter takes from the aten op that computed them (``conv2d_1``, ``linear``)."""
SHAPE_SLOTS = {"Reshape": 1, "Expand": 1, "Tile": 1, "ConstantOfShape": 0}
NEAR_2GB = 3 << 29  # 1.5 GiB: protobuf cannot serialize a message over 2 GiB


def _fresh(base: str, taken: set[str]) -> str:
    name = unused_name(base, taken)
    taken.add(name)
    return name


def check_names(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    taken = {vi.name for vi in (*info.inputs, *info.outputs)} | set(info.producer) | set(info.inits)
    renames: dict[str, dict[str, str]] = {"inputs": {}, "outputs": {}}
    for kind, vis in (("inputs", info.inputs), ("outputs", info.outputs)):
        base = kind[:-1]
        auto = [
            vi.name
            for vi in vis
            if (AUTO_NAME.match(vi.name) or (kind == "outputs" and AUTO_OUTPUT.match(vi.name))) and vi.name != base
        ]
        for i, name in enumerate(auto):
            renames[kind][name] = _fresh(base if len(vis) == 1 else f"{base}_{i}", taken)
    facts["renames"] = renames
    if not renames["inputs"] and not renames["outputs"]:
        return []
    olds = [*renames["inputs"], *renames["outputs"]]
    return [
        Finding(
            "auto-io-names",
            "warning",
            f"auto-generated I/O names: {', '.join(repr(n) for n in olds)} (callers and configs would hard-code them)",
            tensors=olds,
            fix="rename-io",
            params={k: v for k, v in renames.items() if v},
            advice="the emitted recipe proposes neutral names; edit them to what the tensors mean",
        )
    ]


def check_static_batch(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    symbols = {d: 1 for vi in info.inputs if has_shape(vi) for d in type_of(vi)[1] if isinstance(d, str)}
    if symbols:
        facts["symbols"] = symbols  # sizes the emitted recipe verifies with (traced models: 1)
    shaped = [(vi.name, type_of(vi)[1]) for vi in info.inputs if has_shape(vi)]
    if not shaped or len(shaped) != len(info.inputs) or not all(dims for _, dims in shaped):
        return []
    firsts = {dims[0] for _, dims in shaped}
    if len(firsts) != 1 or not all(isinstance(d, int) and d > 0 for d in firsts) or max(len(d) for _, d in shaped) < 2:
        return []
    batch = int(next(iter(firsts)))  # type: ignore[arg-type]
    facts["static_batch"] = batch
    hard: list[str] = []
    for node in info.graph.node:
        slot = SHAPE_SLOTS.get(node.op_type)
        if slot is None or len(node.input) <= slot:
            continue
        value = info.const(node.input[slot])
        if value is not None and value.ndim == 1 and value.size > 1 and int(value[0]) == batch:
            hard.append(label(node))
    out_ok = all(has_shape(vi) and type_of(vi)[1][:1] == [batch] for vi in info.outputs)
    params: dict[str, Any] = {"batch": "batch"} if out_ok else {"inputs": {n: {0: "batch"} for n, _ in shaped}}
    where = f"; constant shapes hard-code it in {', '.join(hard)}" if hard else ""
    sized = [label(n) for n in info.graph.node if n.op_type == "Resize" and _sizes_fix_batch(info, n, batch)]
    advice = "mark-dynamic makes axis 0 symbolic and rewrites the constant shapes; it is probed with a real batch"
    branches = _shape_branches(info)
    if branches:  # a data-dependent If on the input's shape: another batch may take another branch
        where += f"; {', '.join(branches)} branch(es) on a value computed from an input's shape"
        advice += (
            "; the branch taken may change with the batch: the probe runs other batch sizes, so a branch that "
            "changes the result fails it"
        )
    if sized:  # mark-dynamic refuses these: the output batch would stay the constant's
        where += f"; Resize sizes hard-code it in {', '.join(sized)}"
        advice = "a Resize driven by constant sizes fixes the output batch: re-export with scale_factor instead of size"
    return [
        Finding(
            "static-batch",
            "warning",
            f"static batch {batch} on input(s) {', '.join(n for n, _ in shaped)}{where}",
            nodes=hard + sized,
            tensors=[n for n, _ in shaped],
            fix=None if sized else "mark-dynamic",
            params=None if sized else params,
            advice=advice,
        )
    ]


def check_static_spatial(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    """Image inputs ([N, C, H, W], static) of a fully convolutional model: shape inference runs at
    twice the height and width and every output follows, so height and width can be dynamic, as
    the tutorial's ``dynamic_axes`` makes them."""
    shaped = [(vi.name, type_of(vi)[1]) for vi in info.inputs if has_shape(vi)]
    images = [(n, d) for n, d in shaped if len(d) == 4 and all(isinstance(x, int) and x > 1 for x in d[2:])]
    if not images or len(images) != len(info.inputs):
        return []
    at_a = info.inferred
    at_b = info.inferred_at({n: [*d[:2], 2 * d[2], 2 * d[3]] for n, d in images})  # type: ignore[operator]
    if not at_a or not at_b:
        return []
    outs = [vi.name for vi in info.outputs]
    if not all(_known(at_a.get(o)) and _known(at_b.get(o)) for o in outs):
        return []
    changed = [o for o in outs if at_a[o][1] != at_b[o][1]]
    if len(changed) != len(outs):  # an output that keeps its size: not a model of any image size
        return []
    facts["static_spatial"] = {"height": int(images[0][1][2]), "width": int(images[0][1][3])}  # type: ignore[arg-type]
    sizes = ", ".join(f"{n} {d[2]}x{d[3]}" for n, d in images)
    return [
        Finding(
            "static-spatial",
            "warning",
            f"static height and width on input(s) {sizes}, but the model is fully convolutional (shape inference "
            "runs at twice the size and every output follows): it could take other image sizes",
            tensors=[n for n, _ in images],
            fix="mark-dynamic",
            params={"inputs": {n: {2: "height", 3: "width"} for n, _ in images}},
            advice="mark-dynamic makes height and width symbolic; it is probed at another size",
        )
    ]


def _known(entry: tuple[int, list[Any]] | None) -> bool:
    return entry is not None and bool(entry[1]) and all(isinstance(d, int) for d in entry[1])


def _sizes_fix_batch(info: GraphInfo, node: onnx.NodeProto, batch: int) -> bool:
    sizes = info.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    return sizes is not None and sizes.size > 0 and int(sizes.reshape(-1)[0]) == batch


def check_initializer_inputs(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    names = [vi.name for vi in info.graph.input if vi.name in info.inits]
    if not names:
        return []
    shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
    return [
        Finding(
            "initializers-as-inputs",
            "warning",
            f"{len(names)} initializer(s) listed as graph inputs (an old exporter's habit): {shown}; "
            "onnxruntime cannot fold them and callers may override weights",
            tensors=names,
            fix="cleanup",
            params={"remove_initializer_inputs": True},
        )
    ]


def _live_nodes(info: GraphInfo) -> set[int]:
    live: set[int] = set()
    todo = [vi.name for vi in info.outputs]
    seen: set[str] = set()
    index = {id(n): n for n in info.graph.node}
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        node = info.producer.get(t)
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        todo += [i for i in (*node.input, *captured(node)) if i]
    return {k for k in live if k in index}


def check_dead_code(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    live = _live_nodes(info)
    dead = [label(n) for n in info.graph.node if id(n) not in live]
    used = {i for n in info.graph.node if id(n) in live for i in (*n.input, *captured(n))} | {
        vi.name for vi in info.outputs
    }
    input_names = {vi.name for vi in info.graph.input}
    unused = [t.name for t in info.graph.initializer if t.name not in used and t.name not in input_names]
    out = []
    if dead:
        out.append(
            Finding(
                "dead-nodes",
                "info",
                f"{len(dead)} node(s) no output depends on: {', '.join(dead[:8])}{' ...' if len(dead) > 8 else ''}",
                nodes=dead,
                fix="cleanup",
                params={},
            )
        )
    if unused:
        out.append(
            Finding(
                "unused-initializers",
                "info",
                f"{len(unused)} unused initializer(s): {', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''}",
                tensors=unused,
                fix="cleanup",
                params={},
            )
        )
    return out


def _shape_branches(info: GraphInfo) -> list[str]:
    """If nodes whose condition is computed from an input's shape (Shape or Size upstream)."""
    found = []
    for node in info.graph.node:
        if node.op_type != "If" or not node.input:
            continue
        seen: set[str] = set()
        todo = [node.input[0]]
        while todo:
            t = todo.pop()
            producer = info.producer.get(t)
            if t in seen or producer is None:
                continue
            seen.add(t)
            if producer.op_type in ("Shape", "Size"):
                found.append(f"If '{label(node)}'")
                break
            todo.extend(i for i in producer.input if i)
    return found


def check_constant_outputs(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    """Outputs no input reaches are constants: what an exporter makes of a value it traced from
    the inputs (an in-place op on a shape, ``.item()``, numpy). Inputs nothing reads, likewise."""
    fed: set[str] = set()
    for vi in info.inputs:
        fed |= {vi.name} | info.reachable_from(vi.name)
    frozen = [vi.name for vi in info.outputs if vi.name not in fed]
    unread = [
        vi.name
        for vi in info.inputs
        if not info.consumers.get(vi.name) and vi.name not in {o.name for o in info.outputs}
    ]
    out = []
    if frozen:
        out.append(
            Finding(
                "constant-outputs",
                "warning",
                f"output(s) {', '.join(repr(n) for n in frozen[:8])} depend on no input: constants, "
                "as an exporter writes a value it traced from the inputs (an in-place op on a shape, .item(), numpy)",
                tensors=frozen,
                advice=(
                    "if they should follow the inputs, fix the module and re-export (surgeon export compares "
                    "against torch on fresh inputs)"
                ),
            )
        )
    if unread:
        out.append(
            Finding(
                "unused-inputs",
                "info",
                f"input(s) {', '.join(repr(n) for n in unread[:8])} are read by no node (the exporter "
                "may have traced their values into constants)",
                tensors=unread,
            )
        )
    return out


def check_size(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    size = info.proto.ByteSize()
    facts["proto_bytes"] = size
    if size < NEAR_2GB:
        return []
    return [
        Finding(
            "near-2gb",
            "warning",
            f"the model file is {size / (1 << 30):.2f} GiB with its weights inline; protobuf cannot "
            "write a model over 2 GiB",
            recipe={"save": {"external": "always"}},
            advice="save the weights as external data (save: {external: always})",
        )
    ]


def _contradicts(declared: tuple[int, list[Any]], inferred: tuple[int, list[Any]], has: bool) -> bool:
    (dt, dd), (it, idims) = declared, inferred
    if dt and it and dt != it:
        return True
    if not has or not idims and not dd:
        return False
    if len(dd) != len(idims):
        return bool(idims)
    return any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(dd, idims))


def check_value_info(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    bad: list[str] = []
    declared: list[onnx.ValueInfoProto] = list(info.graph.value_info) + list(info.outputs)
    for vi in declared:
        inferred = info.inferred.get(vi.name)
        if (
            inferred is not None
            and vi.type.HasField("tensor_type")
            and _contradicts(type_of(vi), inferred, has_shape(vi))
        ):
            bad.append(f"{vi.name} declared {json_safe_dims(type_of(vi)[1])}, inferred {json_safe_dims(inferred[1])}")
    if not bad:
        return []
    return [
        Finding(
            "stale-value-info",
            "warning",
            f"value_info contradicts the inferred shapes: {'; '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}",
            tensors=[b.split(" declared")[0] for b in bad],
            advice="stale shapes mislead runtimes that trust them; re-infer shapes after the edit that made them wrong",
        )
    ]


def json_safe_dims(dims: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


CHECKS: tuple[Callable[[GraphInfo, dict[str, Any]], list[Finding]], ...] = (
    check_names,
    check_static_batch,
    check_static_spatial,
    check_initializer_inputs,
    check_dead_code,
    check_constant_outputs,
    check_size,
    check_value_info,
)
__all__ = ["CHECKS", "json_safe"]
