"""``surgeon explain``: a pass's params with readable types (``bool``, ``list[str]``,
``'auto' | 'cpu'``) and an example step that ``surgeon validate`` accepts on a typical
TorchScript export (input ``input.1``, output ``output``; see :data:`EXAMPLE_MODEL`)."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

EXAMPLE_MODEL = (
    "a TorchScript export: input 'input.1' float[1, 3, 8, 8] -> Identity -> Add 'bias' -> Resize '/up/Resize' "
    "(constant scales) -> Relu ('/relu/Relu_output_0') -> output 'output', and a second output 'aux' (the Add's)"
)
EXAMPLES: dict[str, dict[str, Any]] = {
    "add-outputs": {"tensors": ["/relu/Relu_output_0"]},
    "append-op": {"output": "output", "op": "Softmax", "axis": 1},
    "cleanup": {},
    "convert-opset": {"opset": 18},
    "dedupe-initializers": {},
    "extract": {"inputs": ["input.1"], "outputs": ["/relu/Relu_output_0"]},
    "fix-dims": {"dims": {"batch": 1}},
    "fix-negative-indices": {},
    "fold-constants": {},
    "mark-dynamic": {"batch": "batch"},
    "prepend-op": {
        "input": "input.1",
        "op": "Normalize",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "axis": 1,
    },
    "promote-initializer": {"names": ["bias"], "keep_default": True},
    "promote-resize-scales": {"input": "factor", "form": "factor"},
    "remove-nodes": {"ops": ["Identity"]},
    "remove-outputs": {"outputs": ["aux"]},
    "rename-io": {"inputs": {"input.1": "image"}, "outputs": {"output": "logits"}},
    "rewrite": {"rules": ["fuse-gemm", "fuse-gelu"]},
    "set-metadata": {"producer_name": "my-team", "metadata_props": {"license": "apache-2.0"}},
    "simplify": {},
    "strip-doc": {},
    "to-fp16": {"keep_io_types": True},
}
"""One valid step per built-in pass; a test validates each against :data:`EXAMPLE_MODEL`."""


def type_text(ann: Any) -> str:
    """An annotation as a user reads it: ``bool``, ``list[str]``, ``dict[str, int]``,
    ``'scales' | 'factor'``, ``str | None``."""
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if ann is type(None):
        return "None"
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        return " | ".join(parts + (["None"] if type(None) in args else []))
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")


def describe(cls: Any) -> dict[str, Any]:
    """A pass as data: what ``surgeon explain`` prints and ``--json`` returns."""
    doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")
    params = []
    for name, fld in cls.Params.model_fields.items():
        default = None if fld.is_required() else fld.get_default(call_default_factory=True)
        params.append(
            {
                "name": name,
                "type": type_text(fld.annotation),
                "required": fld.is_required(),
                "default": _jsonable(default),
                "description": fld.description or "",
            }
        )
    example = EXAMPLES.get(cls.name)
    return {
        "name": cls.name,
        "summary": cls.summary(),
        "doc": "\n\n".join(doc[1:]).strip(),
        "params": params,
        "example": {cls.name: example} if example is not None else None,
        "example_model": EXAMPLE_MODEL if example is not None else None,
    }


def example_yaml(step: dict[str, Any]) -> str:
    import yaml

    ((name, params),) = step.items()
    return f"- {name}: {yaml.safe_dump(params, default_flow_style=True, width=10000).strip()}"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)
