"""``surgeon run PASS --set KEY=VALUE``: params from the command line.

A dotted key is split only where its head is a param of the pass, so TorchScript names with dots
stay whole (``--set inputs.input.1=image`` renames ``input.1``); a value may be a YAML mapping
(``--set 'inputs={input.1: image}'``); names are taken as strings (``--set outputs.32=logits``,
``--set inputs.x=32``) wherever the param holds strings.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from surgeon.errors import RecipeError, UsageError, listing, suggest

QUOTE_HINT = (
    "hint: quote names YAML would read as numbers, and use a mapping for names with dots: "
    "--set 'inputs={\"input.1\": image}'"
)


def _value_type(ann: Any) -> Any:
    """The value type of a ``dict[K, V]`` annotation (through ``X | None``), else None."""
    for cand in (ann, *typing.get_args(ann)):
        if typing.get_origin(cand) is dict:
            return typing.get_args(cand)[1]
    return None


def _wants_str(ann: Any) -> bool:
    if ann is str:
        return True
    args = typing.get_args(ann)
    return (
        typing.get_origin(ann) in (typing.Union, types.UnionType)
        and str in args
        and not any(a in (int, float, bool) for a in args)
    )


def _key_type(ann: Any) -> Any:
    for cand in (ann, *typing.get_args(ann)):
        if typing.get_origin(cand) is dict:
            return typing.get_args(cand)[0]
    return None


def _coerce(ann: Any, raw: str, parsed: Any) -> Any:
    """``parsed`` (YAML) as the param's type wants it: names stay strings."""
    if _wants_str(ann) and not isinstance(parsed, (str, dict, list)) and parsed is not None:
        return raw
    if isinstance(parsed, dict) and _key_type(ann) is not None:
        kt, vt = _key_type(ann), _value_type(ann)
        return {
            (str(k) if kt is str else k): (str(v) if _wants_str(vt) and isinstance(v, (int, float, bool)) else v)
            for k, v in parsed.items()
        }
    return parsed


def parse_set(params_cls: Any, pass_name: str, items: Sequence[str]) -> dict[str, Any]:
    """The params mapping the ``--set`` items give (validated later, with the recipe)."""
    from surgeon.yaml12 import compose

    fields = params_cls.model_fields
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set '{item}': expected KEY=VALUE; params of {pass_name} are: {listing(fields)}")
        name = (
            key
            if key in fields
            else next((f for f in sorted(fields, key=len, reverse=True) if key.startswith(f + ".")), None)
        )
        if name is None:
            head = key.split(".")[0]
            raise UsageError(
                f"--set '{item}': {pass_name} has no param '{head}'{suggest(head, list(fields))}; "
                f"params are: {listing(fields)}"
            )
        try:  # YAML 1.2, as recipes: 'off' is a string, 010 is 10
            parsed = compose(raw, "--set")[0] if raw else ""
        except RecipeError as exc:
            mark = str(exc).splitlines()[0].partition(": ")[2] or "not valid YAML"
            raise UsageError(f"--set '{item}': the value is not valid YAML ({mark}); {QUOTE_HINT}") from None
        ann = fields[name].annotation
        if name == key:
            out[name] = _coerce(ann, raw, parsed)
            continue
        sub = key[len(name) + 1 :]
        vt = _value_type(ann)
        if vt is None:
            raise UsageError(
                f"--set '{item}': param '{name}' of {pass_name} is not a mapping; write --set {name}=VALUE"
            )
        node = out.setdefault(name, {})
        if not isinstance(node, dict):
            raise UsageError(f"--set '{item}': param '{name}' was already set to a value")
        inner = _value_type(vt)
        if inner is not None and "." in sub:  # dict of dicts (mark-dynamic inputs.NAME.AXIS=sym)
            outer_key, _, inner_key = sub.rpartition(".")
            node.setdefault(outer_key, {})[inner_key] = _coerce(inner, raw, parsed)
        else:
            node[sub] = _coerce(vt, raw, parsed)
    return out
