"""What the installed onnxruntime refuses: an IR version or opset beyond it, and ops its CPU
execution provider has no kernel for — found by building sessions, not from a hand-kept list."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from surgeon.doctor.findings import Finding
from surgeon.verify.runtime import ort_limits, session_error

if TYPE_CHECKING:
    import onnx

    from surgeon.doctor.graphinfo import GraphInfo

TARGET_OPSET = 17
"""What an opset older than onnxruntime supports is converted to (capped at the newest it runs)."""
_KERNEL = re.compile(r"Could not find an implementation for (\S+?)\((\d+)\) node with name '([^']*)'")
_UNKNOWN = re.compile(
    r"No Op registered for (\S+) with domain_version of (\d+)|(\S+):(\S+)\(-?\d+\) is not a registered function/op"
)


def check_runtime(info: GraphInfo, facts: dict[str, Any]) -> list[Finding]:
    import onnxruntime as ort

    limits = ort_limits()
    facts["onnxruntime"] = {"version": ort.__version__, **limits}
    out: list[Finding] = []
    proto = info.proto
    blocked = False
    if limits["max_ir_version"] and proto.ir_version > limits["max_ir_version"]:
        blocked = True
        out.append(
            Finding(
                "ir-version",
                "error",
                f"IR version {proto.ir_version} is newer than onnxruntime {ort.__version__} loads (at "
                f"most {limits['max_ir_version']})",
                advice=(
                    f"save it with an onnx release whose IR version is <= {limits['max_ir_version']}, or "
                    "upgrade onnxruntime"
                ),
            )
        )
    opset = info.opset
    if opset and limits["max_opset"] and opset > limits["max_opset"]:
        blocked = True
        out.append(
            Finding(
                "opset-too-new",
                "error",
                f"opset {opset} is newer than onnxruntime {ort.__version__} supports (at most {limits['max_opset']})",
                fix="convert-opset",
                params={"opset": limits["max_opset"]},
            )
        )
    elif opset and opset < limits["min_opset"]:
        target = min(TARGET_OPSET, limits["max_opset"] or TARGET_OPSET)
        out.append(
            Finding(
                "opset-too-old",
                "warning",
                f"opset {opset} is older than onnxruntime supports (opset {limits['min_opset']} and above)",
                fix="convert-opset",
                params={"opset": target},
            )
        )
    if not blocked:
        out += _kernel_findings(info)
    return out


def _kernel_findings(info: GraphInfo) -> list[Finding]:
    from surgeon.verify.runtime import on_disk

    with on_disk(info.model) as (path, folder, data):
        text = session_error(data if data is not None else str(path), str(folder) if folder else None)
    if not text:
        return []
    m = _KERNEL.search(text)
    if m:
        op, version, node = m.groups()
        return [
            Finding(
                "no-cpu-kernel",
                "error",
                f"onnxruntime's CPU provider has no kernel for {op} (opset {version}) at node "
                f"'{node or _first_node(info.graph, op)}' (the first one found)",
                nodes=[node or _first_node(info.graph, op)],
                advice="replace the op, or convert to an opset where it has a kernel",
            )
        ]
    m = _UNKNOWN.search(text)
    if m:
        op = m.group(1) or f"{m.group(3)}:{m.group(4)}"
        return [
            Finding(
                "unknown-op",
                "error",
                f"onnxruntime does not know the op {op} (a custom op needs its library registered)",
                nodes=[_first_node(info.graph, op.split(":")[-1])],
            )
        ]
    first = next((line for line in text.strip().splitlines() if line.strip()), text)
    return [Finding("ort-load-error", "error", f"onnxruntime cannot load the model: {first[:300]}")]


def _first_node(graph: onnx.GraphProto, op: str) -> str:
    from surgeon.doctor.graphinfo import label

    return next((label(n) for n in graph.node if n.op_type == op), "")
