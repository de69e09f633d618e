"""Make the constant scales (or sizes) of Resize / Upsample nodes a graph input."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from surgeon.errors import PassPreconditionError
from surgeon.ir.walk import all_tensor_names
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.passkit.ops import listing
from surgeon.verify.contract import IOContract, io_types
from surgeon.verify.probes import Ratio, ScaleProbe

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR

OPS = ("Resize", "Upsample")


@dataclass
class Site:
    """One Resize/Upsample node and the constant input the pass promotes."""

    node: gs.Node
    slot: int
    kind: Literal["scales", "sizes"]
    value: np.ndarray
    lead: int = 2
    """How many leading entries of the vector belong to non-spatial axes (batch, channels)."""


ScalesPlan = list[tuple[str, "np.ndarray", list[Site]]]
"""``[(input name, value it replaces, sites)]``."""


@register_pass("promote-resize-scales")
class PromoteResizeScales(Pass[ScalesPlan]):
    """Make the constant scales (or sizes) of Resize/Upsample nodes a graph input, so the upscale
    factor is chosen at run time.

    Handles TorchScript exports (scales from a Constant node), dynamo exports (scales an
    initializer), Resize driven by ``sizes`` (promoted as int64) and Upsample (opset 7-9; 7-8 are
    converted to opset 9 first). ``form: factor`` adds one float input (or one per spatial axis)
    expanded in the graph into ``[1, 1, f, f]``. Shapes that depend on the scale become symbolic.
    A Slice after the node whose constant ends crop a scaled axis back to its traced size (the
    ``y[:, :, :H * 2]`` TorchScript freezes) gets those ends opened, in a new constant of its own;
    any other crop of a scaled axis stops the pipeline, naming the Slice (``crops: keep`` leaves
    Slices as exported). Shapes at the traced and at a larger factor decide (passes/_crops.py).
    Contract: new input(s) fed their former constant give identical outputs; a probe runs another
    factor and checks the output shapes against ONNX shape inference at that factor.
    """

    class Params(PassParams):
        nodes: list[str] | str | None = Field(
            None,
            description=(
                "Resize/Upsample nodes: a list of names, or one regex matched against whole names (default: "
                "all with constant scales)"
            ),
        )
        input: str | None = Field(
            None, description="name of the new input (default: 'factor' for form factor, else 'scales' or 'sizes')"
        )
        form: Literal["scales", "factor"] = Field(
            "scales",
            description=(
                "scales: the full vector the node takes; factor: one float (or one per spatial axis) expanded "
                "into [1, 1, f, f]"
            ),
        )
        per_axis: bool = Field(
            False, description="form factor: one factor per spatial axis instead of one shared float"
        )
        per_node: bool = Field(
            False, description="one input per node (named <input>_<i>) instead of one input shared by all nodes"
        )
        crops: Literal["rewrite", "keep"] = Field(
            "rewrite",
            description=(
                "Slices after the nodes that crop a scaled axis: rewrite opens ends equal to the traced size "
                "and refuses any other crop; keep leaves them as exported"
            ),
        )
        probe_factor: float = Field(
            2.0, gt=0, description="the other factor the verifier tries (the current one + 1 when they are equal)"
        )

    params: Params

    # -- finding the nodes ---------------------------------------------------------------------
    def _selected(self, model: ModelIR) -> list[gs.Node]:
        nodes = [n for n in model.graph.nodes if n.op in OPS]
        sel = self.params.nodes
        if sel is None:
            return nodes
        existing = [n.name for n in nodes]
        if isinstance(sel, str):
            try:
                rx = re.compile(sel)
            except re.error as exc:
                raise PassPreconditionError(f"invalid nodes pattern '{sel}': {exc}", field=("nodes",)) from None
            picked = [n for n in nodes if rx.fullmatch(n.name)]
            if not picked:
                raise PassPreconditionError(
                    f"nodes pattern '{sel}' matches no Resize/Upsample node; they are: {listing(existing)}",
                    field=("nodes",),
                )
            return picked
        from surgeon.errors import suggest

        for i, name in enumerate(sel):
            if name not in existing:
                raise PassPreconditionError(
                    f"no Resize/Upsample node named '{name}'{suggest(name, existing)}; they are: {listing(existing)}",
                    field=("nodes", i),
                )
        return [n for n in nodes if n.name in sel]

    def _site(self, model: ModelIR, node: gs.Node, explicit: bool) -> Site | None:
        from surgeon.passkit.shapes import constant_values

        if node.op == "Upsample" and "scales" in node.attrs:
            import numpy as np

            return Site(node, -1, "scales", np.asarray(node.attrs["scales"], dtype=np.float32))
        kind: Literal["scales", "sizes"]
        if node.op == "Upsample" or model.opset < 11:
            slot, kind = 1, "scales"
        else:
            sizes = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
            slot, kind = (3, "sizes") if sizes is not None else (2, "scales")
        tensor = node.inputs[slot] if len(node.inputs) > slot else None
        value = constant_values(model, tensor) if tensor is not None and tensor.name else None
        if value is None or value.size == 0:
            if explicit:
                where = (
                    "a graph input" if tensor is not None and tensor in model.graph.inputs else "computed in the graph"
                )
                raise PassPreconditionError(
                    f"node '{node.name}': its {kind} are {where}, not a constant; nothing to promote", field=("nodes",)
                )
            return None
        lead = 2
        axes = node.attrs.get("axes")
        if axes:
            rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else max(axes) + 1
            lead = sum(1 for a in axes if (a + rank if a < 0 else a) < 2)
        return Site(node, slot, kind, value.astype(value.dtype, copy=True), lead)

    def _sites(self, model: ModelIR) -> list[Site]:
        explicit = self.params.nodes is not None
        sites = [s for n in self._selected(model) if (s := self._site(model, n, explicit)) is not None]
        if self.params.form == "factor":
            for s in sites:
                self._factor_of(s)
        return sites

    def _factor_of(self, site: Site) -> np.ndarray:
        import numpy as np

        name, v = site.node.name, site.value
        if site.kind == "sizes":
            raise PassPreconditionError(
                f"node '{name}' is driven by sizes {v.tolist()}, not scales; use form: scales (it "
                "promotes the sizes, int64)",
                field=("form",),
            )
        if not np.all(v[: site.lead] == 1):
            raise PassPreconditionError(
                f"node '{name}' scales {v.tolist()} change a non-spatial axis; use form: scales", field=("form",)
            )
        spatial = v[site.lead :].astype(np.float32)
        if spatial.size == 0:
            raise PassPreconditionError(f"node '{name}' has no spatial axis to scale", field=("form",))
        if self.params.per_axis:
            return spatial
        if not np.all(spatial == spatial[0]):
            raise PassPreconditionError(
                f"node '{name}' scales its spatial axes differently ({spatial.tolist()}); set per_axis: true",
                field=("per_axis",),
            )
        return np.asarray(spatial[0], dtype=np.float32)

    # -- params vs model -----------------------------------------------------------------------
    def plan(self, model: ModelIR) -> ScalesPlan:
        """``[(input name, value it replaces, sites)]``."""
        import numpy as np

        sites = self._sites(model)
        if not sites:
            return []
        p = self.params
        base = p.input or ("factor" if p.form == "factor" else sites[0].kind)
        values = [self._factor_of(s) if p.form == "factor" else s.value for s in sites]
        if p.per_node and len(sites) > 1:
            plan = [(f"{base}_{i}", v, [s]) for i, (v, s) in enumerate(zip(values, sites))]
        else:
            for s, v in zip(sites, values):
                same = (
                    s.kind == sites[0].kind
                    and v.shape == values[0].shape
                    and v.dtype == values[0].dtype
                    and np.array_equal(v, values[0])
                )
                if not same:
                    first = sites[0]
                    raise PassPreconditionError(
                        f"nodes '{first.node.name}' ({first.kind} {values[0].tolist()}) and "
                        f"'{s.node.name}' ({s.kind} {v.tolist()}) "
                        "differ, so they cannot share one input; set per_node: true or select nodes",
                        field=("per_node",),
                    )
            plan = [(base, values[0], sites)]
        taken = all_tensor_names(model.graph)
        for name, _, _ in plan:
            if name in taken:
                raise PassPreconditionError(
                    f"cannot add input '{name}': a tensor of that name already exists; choose another 'input'",
                    field=("input",),
                )
        return plan

    def requires(self, model: ModelIR, plan: ScalesPlan | None = None) -> None:
        self.plan_of(model, plan)  # the plan refuses what it cannot plan

    def run(self, model: ModelIR, plan: ScalesPlan | None = None) -> PassResult:
        notes: list[str] = []
        plan = self.plan_of(model, plan)
        if any(s.slot < 0 for _, _, sites in plan for s in sites):
            notes.append(_legacy_upsample_to_9(model))
            plan = self.plan(model)  # the sites are now the Resize nodes that replaced the Upsamples
        if not plan:
            return PassResult(False, IOContract())
        from surgeon.passes._crops import open_traced_crops, shapes_at

        others = [(s.node, s.slot, _grown(s)) for _, _, sites in plan for s in sites]
        shapes = self.params.crops == "rewrite" or self.params.form == "factor"  # what needs them
        at_a = _inferred(model) if shapes else None  # at the traced factor, and below at a larger
        at_b = shapes_at(model, others) if at_a is not None else None  # one: crops and scaled axes follow
        if self.params.crops == "rewrite" and at_a is not None:
            opened, at_b = open_traced_crops(model, others, at_a, at_b)
            notes += opened
        traced, scaled = _scaled_axes(model, at_a, at_b)
        contract = IOContract()
        io_before = io_types(model.graph)
        pins: dict[str, tuple[Any, ...]] = {}  # shared: each promotion re-infers every shape
        for name, value, sites in plan:
            notes += _promote(model, name, value, sites, self.params.form, traced, pins)
            contract.new_inputs[name] = value
        contract.probes.append(self._probe(plan))
        # a full vector as input may scale every axis; a factor only the spatial ones
        contract.declare_changes(
            io_before, io_types(model.graph), axes=scaled if self.params.form == "factor" else None
        )
        return PassResult(True, contract, notes)

    def _probe(self, plan: list[tuple[str, np.ndarray, list[Site]]]) -> ScaleProbe:
        import numpy as np

        p = self.params
        feed, vectors = {}, {}
        ratios: list[Ratio] = []
        for name, value, sites in plan:
            feed[name] = _probe_value(value, sites[0], p.probe_factor, p.form)
            for s in sites:
                full = s.value.copy()
                full[s.lead :] = (
                    np.broadcast_to(feed[name], full[s.lead :].shape) if p.form == "factor" else feed[name][s.lead :]
                )
                vectors[s.node.name] = (s.slot, full)
                ratios.append(
                    Ratio(
                        str(s.node.name),
                        s.kind,
                        s.lead,
                        s.value.astype(np.float64).tolist(),
                        full.astype(np.float64).tolist(),
                        **_resize_rule(s),
                    )
                )
        return ScaleProbe(feed, vectors, ratios)


# -- editing ------------------------------------------------------------------------------------


def _inferred(model: ModelIR) -> dict | None:
    from surgeon.errors import PassError
    from surgeon.passkit.shapes import infer

    try:
        return infer(model)
    except PassError:
        return None


def _scaled_axes(
    model: ModelIR, at_a: dict | None, at_b: dict | None
) -> tuple[dict[str, tuple[Any, tuple[Any, ...]]], dict[str, set[int]]]:
    """Shapes inferred at the traced factor, and per graph output the axes whose size follows
    the factor (inferred at the traced factor, ``at_a``, and a larger one, ``at_b``): the only
    dims the pass may change. Where inference failed, every axis of every output (the probe
    still checks them)."""
    from surgeon.passkit.shapes import changing_axes

    outputs = [t for t in model.graph.outputs if t.name]
    if not at_a or at_b is None:
        return {}, {t.name: set(range(len(t.shape or []) or 64)) for t in outputs}
    traced = {name: (elem, tuple(shape)) for name, (elem, shape) in at_a.items() if shape is not None}
    return traced, changing_axes(outputs, at_a, at_b)


def _promote(
    model: ModelIR,
    name: str,
    value: np.ndarray,
    sites: list[Site],
    form: str,
    traced: dict[str, tuple[Any, tuple[Any, ...]]],
    pins: dict[str, tuple[Any, ...]],
) -> list[str]:
    import onnx_graphsurgeon as gs
    from onnx import helper

    from surgeon.passkit.shapes import drop_orphan_constant, refresh_shapes

    g = model.graph
    new = gs.Variable(name, dtype=value.dtype, shape=list(value.shape))
    g.inputs.append(new)
    vectors: dict[tuple[int, int], gs.Variable] = {}
    for site in sites:
        node, old = site.node, site.node.inputs[site.slot]
        vector = new
        if form == "factor":
            key = (site.lead, len(site.value) - site.lead)
            if key not in vectors:
                vectors[key] = _expand_factor(model, new, *key)
            vector = vectors[key]
            x, y = node.inputs[0], node.outputs[0]
            elem, x_shape = traced.get(x.name, (None, None))  # TorchScript writes no value_info
            x_shape = x.shape if x.shape is not None else x_shape
            y.dtype = y.dtype or x.dtype or (helper.tensor_dtype_to_np_dtype(elem) if elem else None)
            if x_shape is not None and y.name and y.dtype is not None:
                # the factor only scales spatial axes: batch and channels keep their size
                pins[y.name] = tuple(x_shape[: site.lead]) + tuple(
                    f"{y.name}_{a}" for a in range(site.lead, len(site.value))
                )
        node.inputs[site.slot] = vector
        drop_orphan_constant(g, old)
    if vectors:
        g.toposort()
    refresh_shapes(model, cuts=pins)
    what = f"factor {value.tolist()}" if form == "factor" else f"{sites[0].kind} {value.tolist()}"
    return [f"input '{name}' ({what}) now drives {', '.join(repr(s.node.name) for s in sites)}"]


def _expand_factor(model: ModelIR, factor: gs.Variable, lead: int, n_spatial: int) -> gs.Variable:
    """``[1] * lead + [f] * n_spatial`` (f a scalar) or ``[1] * lead + f`` (f one per axis)."""
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.passkit.ops import unique_name

    g = model.graph
    spatial = factor
    if not factor.shape:  # scalar: broadcast to one per spatial axis
        spatial = gs.Variable(unique_name(model.graph, f"{factor.name}_spatial"), dtype=factor.dtype, shape=[n_spatial])
        count = gs.Constant(unique_name(model.graph, f"{factor.name}_count"), np.array([n_spatial], dtype=np.int64))
        g.nodes.append(
            gs.Node(
                "Expand", unique_name(model.graph, f"{factor.name}_Expand"), inputs=[factor, count], outputs=[spatial]
            )
        )
    ones = gs.Constant(unique_name(model.graph, f"{factor.name}_ones"), np.ones(lead, dtype=factor.dtype))
    vector = gs.Variable(
        unique_name(model.graph, f"{factor.name}_scales"), dtype=factor.dtype, shape=[lead + n_spatial]
    )
    g.nodes.append(
        gs.Node(
            "Concat",
            unique_name(model.graph, f"{factor.name}_Concat"),
            attrs={"axis": 0},
            inputs=[ones, spatial],
            outputs=[vector],
        )
    )
    return vector


def _legacy_upsample_to_9(model: ModelIR) -> str:
    """Upsample-7/8 keep their scales in an attribute: convert the model to opset 9 (scales an input)."""
    import onnx
    import onnx_graphsurgeon as gs

    from surgeon.errors import PassError

    before = model.opset
    try:
        proto = onnx.version_converter.convert_version(model.to_proto(), 9)
    except Exception as exc:
        raise PassError(
            f"Upsample-{before} keeps scales in an attribute and the model cannot be converted to "
            f"opset 9: {str(exc).splitlines()[0]}"
        ) from None
    model.graph = gs.import_onnx(proto)
    model.graph.opset = 9
    return f"converted the model from opset {before} to 9 (Upsample-9 takes scales as an input)"


def _resize_rule(site: Site) -> dict[str, Any]:
    """What the probe needs to size the node's output by the Resize rule: its data input's shape
    at the traced sizes (when static), the roi's extent (tf_crop_and_resize with a constant roi),
    keep_aspect_ratio_policy and axes."""
    import numpy as np
    import onnx_graphsurgeon as gs

    node = site.node
    shape = node.inputs[0].shape if node.inputs else None
    in_dims = tuple(shape) if shape is not None and all(isinstance(d, int) and d >= 0 for d in shape) else ()
    rule: dict[str, Any] = {
        "in_dims": in_dims,
        "policy": str(node.attrs.get("keep_aspect_ratio_policy", "stretch")),
        "axes": tuple(int(a) for a in node.attrs.get("axes", ()) or ()),
    }
    roi = node.inputs[1] if node.op == "Resize" and len(node.inputs) > 1 else None
    if node.attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize" and isinstance(roi, gs.Constant):
        values = np.asarray(roi.values, dtype=np.float64).reshape(-1)
        half = len(values) // 2
        rule["extent"] = tuple(float(e - b) for b, e in zip(values[:half], values[half:]))
    return rule


def _grown(site: Site) -> np.ndarray:
    """The node's vector at a larger factor, every spatial entry grown: where a crop bites."""
    out = site.value.copy()
    out[site.lead :] = out[site.lead :] * 2 if site.kind == "sizes" else out[site.lead :] + 1
    return out


def _probe_value(value: np.ndarray, site: Site, factor: float, form: str) -> np.ndarray:
    import numpy as np

    if site.kind == "sizes":  # the input size times the factor, or times factor + 1 where that is the traced size
        out = value.copy()
        x = site.node.inputs[0].shape
        for i in range(site.lead, len(out)):
            dim = x[i] if x is not None and len(x) == len(out) and isinstance(x[i], int) else None
            size = int(dim * factor) if dim else int(out[i]) * 2
            out[i] = size if size != int(value[i]) else (int(dim * (factor + 1)) if dim else size + 1)
        return out
    current = float(value.reshape(-1)[-1])
    f = factor + 1 if abs(factor - current) < 1e-6 else factor
    if form == "factor":
        return np.full_like(value, f)
    out = value.copy()
    out[site.lead :] = f
    return out
