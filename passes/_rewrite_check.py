"""The per-match check of the rewrite pass: the model (as the pass found it) runs once on the
verification feed with every match's inputs and outputs exposed; the replacements run as one small
model on those inputs (each on its own where that model does not load); each replacement's outputs
are compared with what the model computed there, at the step's tolerance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from surgeon.passes._rewrite_apply import Match, instantiate

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from surgeon.verify.compare import Tolerance
    from surgeon.verify.runtime import Runtime


def make_feed(proto: onnx.ModelProto, seed: int, dims: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The verification feed as the verifier makes it (seeded random data, sizes chosen the same
    way, integer inputs in the ranges their consumers accept)."""
    from surgeon.verify.config import VerifyConfig
    from surgeon.verify.dims import choose_sizes
    from surgeon.verify.domains import integer_domains
    from surgeon.verify.feeds import make_feed as feed_of
    from surgeon.verify.specs import graph_inputs

    cfg = VerifyConfig(device="cpu", seed=seed, dims=dict(dims))
    specs = graph_inputs(proto)
    sizes = choose_sizes(specs, cfg)
    domains = integer_domains(proto, specs)
    return feed_of(specs, cfg, sizes.dims(), domains={k: r for k, (r, _) in domains.items()})


def check_matches(
    proto: onnx.ModelProto,
    matches: Sequence[Match],
    feed: Mapping[str, np.ndarray],
    tol: Tolerance,
    runtime: Runtime,
    base_dir: Any = None,
) -> None:
    """Mark each match whose replacement does not reproduce the model's values ``undone`` (with
    why); set the others' ``error``."""
    from surgeon.errors import VerificationError
    from surgeon.verify.compare import compare

    if not matches:
        return
    try:
        values = _activations(proto, matches, feed, runtime, base_dir)
    except VerificationError as exc:
        for m in matches:
            m.status, m.reason = "undone", f"the model's activations could not be computed: {exc}"
        return
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    others = [(o.domain, o.version) for o in proto.opset_import if o.domain not in ("", "ai.onnx")]
    try:
        got = _run(list(enumerate(matches)), values, opset, others, proto.ir_version, runtime)
    except VerificationError:
        got = {}
        for k, m in enumerate(matches):
            try:
                got.update(_run([(k, m)], values, opset, others, proto.ir_version, runtime))
            except VerificationError as exc:
                m.status, m.reason = "undone", f"its replacement does not run: {exc}"
    for k, m in enumerate(matches):
        if m.status != "applied":
            continue
        worst = 0.0
        for j, name in enumerate(m.outputs):
            check = compare(name, values[name], got[f"__check{k}_{j}"], tol)
            worst = max(worst, check.max_abs)
            if not check.ok:
                detail = check.note or f"max abs error {check.max_abs:.3g}, max rel {check.max_rel:.3g}"
                m.status = "undone"
                m.reason = f"its check failed on '{name}': {detail} (rtol {tol.rtol:g}, atol {tol.atol:g})"
                break
        m.error = worst


def _activations(
    proto: onnx.ModelProto, matches: Sequence[Match], feed: Mapping[str, np.ndarray], runtime: Runtime, base_dir: Any
) -> dict[str, np.ndarray]:
    import onnx

    from surgeon.ir.model import Model

    inputs = {i.name for i in proto.graph.input}
    wanted = []
    for m in matches:
        wanted += [t for t in m.inputs.values() if t and t not in m.consts]
        wanted += m.outputs
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    have = {o.name for o in exposed.graph.output}
    for name in dict.fromkeys(wanted):
        if name not in have and name not in inputs:
            exposed.graph.output.add().name = name
    out = _run_once(runtime, Model(exposed, base_dir=base_dir), feed)
    out.update({k: v for k, v in feed.items() if k in inputs})
    return out


def _run(
    items: Sequence[tuple[int, Match]],
    values: Mapping[str, np.ndarray],
    opset: int,
    others: Sequence[tuple[str, int]],
    ir_version: int,
    runtime: Runtime,
) -> dict[str, np.ndarray]:
    """The replacements of ``items`` as one model, run on ``values``; outputs ``__check{k}_{j}``."""
    import numpy as np
    from onnx import ValueInfoProto, helper, numpy_helper

    from surgeon.ir.model import Model

    nodes, inits, outputs = [], [], []
    inputs: dict[str, Any] = {}
    consts: dict[str, Any] = {}
    for k, m in items:
        names = [f"__check{k}_{j}" for j in range(len(m.outputs))]
        made, extra, _ = instantiate(m, f"__check{k}/", names, for_check=True)
        nodes += made
        inits += extra
        outputs += [ValueInfoProto(name=n) for n in names]
        for t in m.inputs.values():
            if not t:
                continue
            if t in m.consts:
                consts.setdefault(t, numpy_helper.from_array(np.asarray(m.consts[t]), t))
            elif t not in inputs:
                a = np.asarray(values[t])
                inputs[t] = helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
    graph = helper.make_graph(
        nodes, "rewrite-check", list(inputs.values()), outputs, initializer=[*consts.values(), *inits]
    )
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in others)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=min(int(ir_version) or 10, 10))
    return _run_once(runtime, Model(model), {t: values[t] for t in inputs})


def _run_once(runtime: Runtime, model: Any, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``model``'s outputs on ``feed`` in one session (as ``run_model`` runs it, without its
    garbage collection after each run: the pass runs a few small sessions, not model after model)."""
    from surgeon.errors import VerificationError
    from surgeon.verify.runtime import on_disk

    with on_disk(model) as (path, folder, data):
        sess = runtime.session(path, folder, data)
        names = [o.name for o in sess.get_outputs()]
        try:
            outs = sess.run(names, dict(feed))
        except Exception as exc:
            text = str(exc).strip().splitlines()
            raise VerificationError(
                f"onnxruntime failed to run it: {text[0][:300] if text else type(exc).__name__}"
            ) from None
    return dict(zip(names, outs))
