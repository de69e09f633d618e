"""Make initializers or Constant outputs graph inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from surgeon.errors import PassPreconditionError
from surgeon.pass_api import Pass, PassParams, PassResult, register_pass
from surgeon.verify.contract import IOContract, io_types

if TYPE_CHECKING:
    import numpy as np
    import onnx_graphsurgeon as gs

    from surgeon.ir.adapter import ModelIR


@register_pass("promote-initializer")
class PromoteInitializer(Pass):
    """Turn initializers or Constant node outputs, by name, into graph inputs
    (required, or keeping their value as a default).

    ``keep_default: true`` keeps the initializer as the input's default (overridable at run time);
    otherwise the input is required. Shapes that depended on the constant's value are re-inferred.
    Contract: the new inputs fed their former values give identical outputs.
    """

    class Params(PassParams):
        names: list[str] = Field(
            min_length=1, description="initializers or Constant node outputs (main graph) to turn into inputs"
        )
        keep_default: bool = Field(
            False,
            description=(
                "keep the value as the input's default (an initializer of the same name) instead of requiring it"
            ),
        )

    params: Params

    def _targets(self, model: ModelIR) -> list[tuple[str, gs.Tensor]]:
        import onnx_graphsurgeon as gs

        from surgeon.errors import suggest
        from surgeon.ir.walk import all_tensor_names
        from surgeon.passkit.shapes import constant_values

        g = model.graph
        tensors = g.tensors()
        candidates = sorted(n for n, t in tensors.items() if isinstance(t, gs.Constant) or _from_constant_node(t))
        out = []
        for i, name in enumerate(self.params.names):
            t = tensors.get(name)
            if t is None:
                where = (
                    " (it is inside a subgraph; only main-graph constants can become inputs)"
                    if name in all_tensor_names(g)
                    else ""
                )
                shown = ", ".join(candidates[:20]) + (
                    f" ... ({len(candidates)} in all)" if len(candidates) > 20 else ""
                )
                raise PassPreconditionError(
                    "no initializer or Constant output named "
                    f"'{name}'{where}{suggest(name, candidates)}; they are: {shown or '(none)'}",
                    field=("names", i),
                )
            if isinstance(t, gs.Variable) and t in g.inputs:
                raise PassPreconditionError(f"'{name}' is already a graph input", field=("names", i))
            if not isinstance(t, gs.Constant):
                if not _from_constant_node(t):
                    raise PassPreconditionError(
                        f"'{name}' is computed by a {t.inputs[0].op if t.inputs else 'no'} node, not a constant",
                        field=("names", i),
                    )
                if constant_values(model, t) is None:
                    raise PassPreconditionError(
                        f"Constant node '{t.inputs[0].name}' has no dense value (sparse or string "
                        "list); cannot make it an input",
                        field=("names", i),
                    )
            out.append((name, t))
        return out

    def requires(self, model: ModelIR) -> None:
        self._targets(model)

    def run(self, model: ModelIR) -> PassResult:
        import onnx_graphsurgeon as gs

        from surgeon.passkit.shapes import constant_values, refresh_shapes

        g = model.graph
        contract = IOContract()
        io_before = io_types(g)
        notes: list[str] = []
        for name, t in self._targets(model):
            value: np.ndarray = constant_values(model, t)  # type: ignore[assignment]
            if isinstance(t, gs.Constant) and t in g.inputs:
                continue  # already an input with this default
            how = "input with its value as default" if self.params.keep_default else "required input"
            if not isinstance(t, gs.Constant):  # a Constant node's output: drop the node
                node = t.inputs[0]
                t.inputs.clear()
                g.nodes.remove(node)
                how += f" (was Constant node '{node.name}')"
                if self.params.keep_default:
                    t.to_constant(value)
                else:
                    t.dtype, t.shape = value.dtype, list(value.shape)
            elif not self.params.keep_default:
                t.to_variable(dtype=value.dtype, shape=list(value.shape))
                t.type = "tensor_type"  # onnx-graphsurgeon's in-place conversion leaves it unset
            g.inputs.append(t)
            contract.new_inputs[name] = value
            notes.append(f"'{name}' {value.dtype}{list(value.shape)} -> {how}")
        if not contract.new_inputs:
            return PassResult(False, contract, notes)
        refresh_shapes(model)
        contract.declare_changes(io_before, io_types(g))
        return PassResult(True, contract, notes)


def _from_constant_node(t: gs.Tensor) -> bool:
    return len(t.inputs) == 1 and t.inputs[0].op == "Constant"
