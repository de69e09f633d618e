"""Convert the model to another opset of the default ONNX domain."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from surgeon.errors import PassError, PassPreconditionError
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.verify.contract import IOContract

if TYPE_CHECKING:
    import onnx

    from surgeon.ir.adapter import ModelIR

MIN_OPSET = 7


@register_pass("convert-opset")
class ConvertOpset(Pass):
    """Convert the default-domain opset with onnx.version_converter, then check every node's schema.

    After conversion every node of the default domain (subgraphs included) must have a schema at
    the target opset; nodes the converter cannot handle are listed by name and op in the error.
    Other domains (com.microsoft...) are left as they are. The model's IR version is raised when
    the target opset needs a newer one.

    Weights: the converter works on the model without its external data (weights stay on disk);
    inline weights are copied by onnx's converter (library behaviour).

    Resize-10 (and Upsample, which the converter turns into it) samples with asymmetric
    coordinates; Resize-11 defaults to half_pixel, and onnx's converter does not say otherwise, so
    the converted Resize gets ``coordinate_transformation_mode: asymmetric`` and, in nearest
    mode, the rounding onnxruntime's Resize-10 uses (down for scales of at least 1, up below 1).
    A nearest Resize with constant scales that upscale one axis and downscale another has no
    single Resize-11 rounding: the pass refuses it, naming the node.

    Contract: same interface, outputs equal within the pipeline tolerance.
    """

    class Params(PassParams):
        opset: int = Field(ge=MIN_OPSET, description="target opset of the default ONNX domain")

    params: Params

    def requires(self, model: ModelIR) -> None:
        import onnx

        latest = onnx.defs.onnx_opset_version()
        if self.params.opset > latest:
            raise PassPreconditionError(
                f"opset {self.params.opset} is newer than this onnx knows (opsets {MIN_OPSET}..{latest})",
                field=("opset",),
            )

    def run(self, model: ModelIR) -> PassResult:
        from onnx import helper, version_converter

        source = model.opset
        target = self.params.opset
        if source == target:
            return PassResult(False, IOContract())
        proto = model.to_proto()
        resize10: dict[str, _Resize10] = {}
        try:
            if source < 11 <= target:  # via opset 10, where Upsample has become Resize-10
                stage = version_converter.convert_version(proto, 10) if source < 10 else proto
                resize10 = _resize10_modes(stage)
                converted = version_converter.convert_version(stage, target)
            else:
                converted = version_converter.convert_version(proto, target)
        except Exception as exc:  # the converter raises RuntimeError / ConvertError on the first bad op
            bad = _unconvertible(proto, target)
            lines = str(exc).strip().splitlines()
            detail = lines[-1] if lines else type(exc).__name__
            if bad:
                raise PassError(
                    f"cannot convert opset {source} -> {target}; node(s) the converter cannot handle: "
                    f"{', '.join(bad)} ({detail})"
                ) from None
            raise PassError(f"cannot convert opset {source} -> {target}: {detail}") from None
        missing = _without_schema(converted.graph, target)
        if missing:
            raise PassError(
                f"after converting to opset {target}, node(s) with no schema at that opset: {', '.join(missing)}"
            )
        kept = _keep_resize10(converted.graph, resize10)
        need = helper.find_min_ir_version_for([helper.make_opsetid("", target)], ignore_unknown=True)
        if model.shell.ir_version < need:
            model.shell.ir_version = need
        converted.ir_version = model.shell.ir_version

        model.replace_graph(converted)
        ops = sorted({n.op_type for n in converted.graph.node} - {n.op_type for n in proto.graph.node})
        notes = [f"opset {source} -> {target}"]
        if ops:
            notes.append("new op types: " + ", ".join(ops))
        return PassResult(True, notes=notes + kept)


def _label(node: onnx.NodeProto) -> str:
    return f"'{node.name}' ({node.op_type})" if node.name else f"<unnamed> ({node.op_type} -> {', '.join(node.output)})"


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    from surgeon.ir.walk import iter_proto_graphs

    return [node for g in iter_proto_graphs(graph) for node in g.node]


def _without_schema(graph: onnx.GraphProto, opset: int) -> list[str]:
    import onnx

    bad = []
    for node in _nodes(graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            bad.append(_label(node))
            continue
        if schema.deprecated:
            bad.append(_label(node) + " deprecated")
    return bad


def _unconvertible(proto: onnx.ModelProto, target: int) -> list[str]:
    """Convert each distinct default-domain op on its own (one-node models) to find every node
    the converter fails on, not only the first."""
    import onnx
    from onnx import helper, version_converter

    source = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), target)
    failing: dict[tuple[str, bytes], bool] = {}
    bad = []
    for node in _nodes(proto.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        key = (node.op_type, b"".join(a.SerializeToString() for a in node.attribute if a.type not in (5, 10)))
        if key not in failing:
            single = onnx.NodeProto()
            single.CopyFrom(node)
            single.ClearField("attribute")
            single.attribute.extend(a for a in node.attribute if a.type not in (5, 10))
            ins = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.input if n]
            outs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n]
            g = helper.make_graph([single], "probe", ins, outs)
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", source)], ir_version=proto.ir_version)
            try:
                version_converter.convert_version(m, target)
                failing[key] = False
            except Exception:
                failing[key] = True
        if failing[key]:
            bad.append(_label(node))
    return bad


_Resize10 = tuple[str, str, "list[float] | None"]
"""A Resize-10 or Upsample node's label, its mode and its constant scales (None: not constant)."""


def _resize10_modes(proto: onnx.ModelProto) -> dict[str, _Resize10]:
    """The Resize-10 nodes of an opset-10 model, by their output's name (converting Resize on
    from opset 10 keeps output names; Upsample's conversion does not, so a model is first
    converted to opset 10): label, mode, constant scales where they are constant."""
    from onnx import helper, numpy_helper

    from surgeon.ir.external import is_external
    from surgeon.ir.walk import iter_proto_graphs

    consts: dict[str, list[float]] = {}
    for g in iter_proto_graphs(proto.graph):
        for t in g.initializer:
            if not is_external(t):
                consts[t.name] = [float(v) for v in numpy_helper.to_array(t).reshape(-1)]
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                value = next((a for a in n.attribute if a.name == "value"), None)
                if value is not None and not is_external(value.t):
                    consts[n.output[0]] = [float(v) for v in numpy_helper.to_array(value.t).reshape(-1)]
    found: dict[str, _Resize10] = {}
    for node in _nodes(proto.graph):
        if node.op_type not in ("Resize", "Upsample") or node.domain not in ("", "ai.onnx") or not node.output:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        scales = attrs.get("scales")  # Upsample-7 holds them as an attribute
        if scales is None and len(node.input) > 1:
            scales = consts.get(node.input[1])
        found[node.output[0]] = (_label(node), mode, list(scales) if scales is not None else None)
    return found


def _keep_resize10(graph: onnx.GraphProto, resize10: dict[str, _Resize10]) -> list[str]:
    """Give each converted Resize-10 the Resize-11 attributes that keep what it computed."""
    from onnx import helper

    if not resize10:
        return []
    done = []
    for node in _nodes(graph):
        old = resize10.get(node.output[0]) if node.op_type == "Resize" and node.output else None
        if old is None:
            continue
        label, mode, scales = old
        want = {"coordinate_transformation_mode": "asymmetric"}
        if mode == "nearest":
            moved = [s for s in scales or [] if s != 1.0]
            if any(s > 1 for s in moved) and any(s < 1 for s in moved):
                raise PassError(
                    f"Resize {label}: nearest with scales {scales} upscales one axis and downscales another; "
                    "onnxruntime's Resize-10 rounds those two ways and no Resize-11 nearest_mode does both"
                )
            down = bool(moved) and all(s < 1 for s in moved)
            want["nearest_mode"] = "ceil" if down else "floor"
        kept = [a for a in node.attribute if a.name not in want]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in want.items())
        how = ", ".join(f"{k}: {v}" for k, v in want.items())
        if mode == "nearest" and scales is None:
            how += "; its scales are not constant: rounding as for upscaling"
        done.append(f"Resize {label} keeps its opset-10 sampling ({how})")
    return done
