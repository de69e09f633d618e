"""Rewrite rules as data: ONNX text pattern/replacement graphs, read from the built-in catalogue
(``passes/rules/*.yaml``) or written in a recipe, compiled to onnxscript rewriter patterns.

The pattern language is ONNX text as ``onnx.parser`` reads it, plus:

- an input of the pattern graph given a value (an initializer, ``<float c = {0.5}>``) matches a
  constant of that value (relative tolerance 1e-3); ``where:`` refines any input by name:
  ``{value: 0.7071, rtol: 1e-3}``, ``{between: [0, 1e-3]}`` (a constant in a range), ``{const: true}``,
  ``{rank: 2}``, ``{size: 1}`` (one element), ``{dtype: [float, float16]}``;
- an attribute written ``@name`` matches any value and is carried to the replacement's ``@name``;
  a literal attribute must equal the node's (a missing one counts as its schema default); a node
  attribute the pattern does not name must be at its default;
- ``commute: true`` tries the inputs of Add/Mul/Max/Min/... both ways round;
- ``ops: {Act: [Relu, LeakyRelu]}``: ``Act`` in the pattern is any op of the set (and ``Act`` in the
  replacement is the op that matched);
- several ``patterns:`` alternatives share one replacement (exporters write one function their
  own ways); the replacement's inputs are pattern inputs by name, its outputs the pattern's in order;
  a replacement output that is one of its inputs rewires the consumers to that input.

Matching is onnxscript's (``onnxscript.rewriter`` SimplePatternMatcher, with its commuted variants);
what a match must satisfy beyond its structure is checked here, so each refusal has its reason.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.errors import RecipeError, UsageError

if TYPE_CHECKING:
    import onnx

RULES_DIR = Path(__file__).with_name("rules")
VALUE_RTOL = 1e-3
_WHERE_KEYS = {"value", "rtol", "atol", "between", "const", "rank", "size", "dtype", "scalar"}
_RULE_KEYS = {"name", "summary", "pattern", "patterns", "replacement", "where", "opset", "commute", "ops"}


@dataclass
class Rule:
    """One rewrite rule: pattern alternatives, a replacement, conditions."""

    name: str
    patterns: list[onnx.GraphProto]
    replacement: onnx.GraphProto
    where: dict[str, dict[str, Any]] = field(default_factory=dict)
    opset: int = 0
    """The lowest default-domain opset of a model the replacement is valid in."""
    commute: bool = True
    ops: dict[str, list[str]] = field(default_factory=dict)
    summary: str = ""
    origin: str = ""

    @functools.cached_property
    def compiled(self) -> list[tuple[int, list[Any]]]:
        """For each pattern alternative, its onnxscript GraphPattern variants (commuted inputs)."""
        out = []
        for i, g in enumerate(self.patterns):
            gp = _graph_pattern(g, self.ops)
            out.append((i, list(gp.commute()) if self.commute else [gp]))
        return out


# --- reading ------------------------------------------------------------------------------------


def builtin_names() -> list[str]:
    return sorted(p.stem for p in RULES_DIR.glob("*.yaml"))


def builtin(name: str) -> Rule:
    path = RULES_DIR / f"{name}.yaml"
    if not path.is_file():
        from surgeon.errors import suggest

        names = builtin_names()
        raise RecipeError(f"unknown rewrite rule '{name}'{suggest(name, names)} (built-in: {', '.join(names)})")
    return _cached_builtin(name)


@functools.cache
def _cached_builtin(name: str) -> Rule:
    from surgeon.yaml12 import compose

    path = RULES_DIR / f"{name}.yaml"
    data, _ = compose(path.read_text(encoding="utf-8"), path.name)
    return parse_rule(data, f"built-in rule {name}")


def parse_rule(data: Any, where: str) -> Rule:
    """A rule from its mapping (a recipe's entry or a catalogue file); RecipeError names ``where``."""
    import onnx.parser

    if not isinstance(data, Mapping):
        raise RecipeError(f"{where}: a rule is a name or a mapping with name, pattern and replacement")
    unknown = set(data) - _RULE_KEYS
    if unknown:
        raise RecipeError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; known: {', '.join(sorted(_RULE_KEYS))}"
        )
    name = str(data.get("name") or "")
    if not name:
        raise RecipeError(f"{where}: the rule has no name")
    texts = data.get("patterns") or ([data["pattern"]] if data.get("pattern") else [])
    if isinstance(texts, str) or not texts or "replacement" not in data:
        raise RecipeError(
            f"{where} ({name}): give 'pattern' (or a list 'patterns') and 'replacement', ONNX text graphs"
        )

    def parse(text: Any, what: str) -> onnx.GraphProto:
        if not isinstance(text, str):
            raise RecipeError(f"{where} ({name}): {what} is not ONNX text")
        try:
            return onnx.parser.parse_graph(text)
        except Exception as exc:
            text = exc.args[0] if exc.args else ""
            text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Error context")]
            why = "; ".join(lines) or type(exc).__name__
            raise RecipeError(f"{where} ({name}): {what} is not a graph onnx.parser reads: {why}") from None

    patterns = [parse(t, f"pattern {i}") for i, t in enumerate(texts)]
    replacement = parse(data["replacement"], "replacement")
    where_ = dict(data.get("where") or {})
    for key, cond in where_.items():
        if not isinstance(cond, Mapping) or set(cond) - _WHERE_KEYS:
            raise RecipeError(f"{where} ({name}): where.{key}: a mapping of {', '.join(sorted(_WHERE_KEYS))}")
    ops = {str(k): [str(o) for o in v] for k, v in dict(data.get("ops") or {}).items()}
    rule = Rule(
        name,
        patterns,
        replacement,
        {str(k): dict(v) for k, v in where_.items()},
        int(data.get("opset", 0) or 0),
        bool(data.get("commute", True)),
        ops,
        str(data.get("summary", "")),
        where,
    )
    _check_rule(rule, where)
    return rule


def _check_rule(rule: Rule, where: str) -> None:
    """What a rule names must exist: every value a node reads made before it, replacement inputs
    among each pattern's inputs, the same number of outputs, ``where`` keys that are inputs."""
    for what, g in [*((f"pattern {i}", p) for i, p in enumerate(rule.patterns)), ("replacement", rule.replacement)]:
        known = {vi.name for vi in g.input} | {t.name for t in g.initializer}
        for k, node in enumerate(g.node):
            unknown_in = [n for n in node.input if n and n not in known]
            if unknown_in:
                raise RecipeError(
                    f"{where} ({rule.name}): {what} node {k} ({node.op_type}) reads {', '.join(unknown_in)}, "
                    "which is neither an input nor made by a node before it"
                )
            known.update(node.output)
        unmade = [o.name for o in g.output if o.name not in known]
        if unmade:
            raise RecipeError(f"{where} ({rule.name}): {what} output(s) {', '.join(unmade)} made by no node")
    rep_inputs = {vi.name for vi in rule.replacement.input}
    for i, g in enumerate(rule.patterns):
        names = {vi.name for vi in g.input} | {t.name for t in g.initializer}
        missing = rep_inputs - names
        if missing:
            raise RecipeError(
                f"{where} ({rule.name}): replacement input(s) {', '.join(sorted(missing))} not inputs of pattern {i}"
            )
        if len(g.output) != len(rule.replacement.output):
            raise RecipeError(
                f"{where} ({rule.name}): pattern {i} has {len(g.output)} outputs, "
                f"the replacement {len(rule.replacement.output)}"
            )
        unknown = set(rule.where) - names
        if unknown and i == 0 and len(rule.patterns) == 1:
            raise RecipeError(f"{where} ({rule.name}): where names {', '.join(sorted(unknown))}, not pattern inputs")


def require_onnxscript() -> None:
    """onnxscript's pattern matcher does the matching: without it, one line that says what to
    install (exit 2), not an internal error."""
    try:
        import onnxscript.rewriter  # noqa: F401
    except ImportError:
        raise UsageError(
            "the rewrite pass needs onnxscript (its pattern matcher): pip install onnxscript, "
            "or install surgeon with the torch extra"
        ) from None


# --- compiling to onnxscript patterns --------------------------------------------------------------


class _OneOf:
    """An op-type pattern matching any op of a set (onnxscript's StringPattern protocol)."""

    def __init__(self, ops: Sequence[str]) -> None:
        self.ops = set(ops)

    def matches(self, item: str) -> bool:
        return item in self.ops

    def __str__(self) -> str:
        return "|".join(sorted(self.ops))


def _graph_pattern(g: onnx.GraphProto, ops: Mapping[str, list[str]]) -> Any:
    from onnxscript.rewriter import _pattern_ir as pir

    inits = {t.name for t in g.initializer}
    names = [vi.name for vi in g.input] + [n for n in inits if n not in {vi.name for vi in g.input}]
    inputs = [pir.Var(n) for n in names]
    values: dict[str, Any] = dict(zip(names, inputs))
    builder = pir.OpsetPatternBuilder("", record=True)
    with pir.pattern_builder(builder):
        for k, node in enumerate(g.node):
            op: Any = _OneOf(ops[node.op_type]) if node.op_type in ops else node.op_type
            args = []
            for name in node.input:
                if name and name not in values:
                    raise RecipeError(
                        f"pattern node {k} ({node.op_type}) reads '{name}', which nothing before it makes"
                    )
                args.append(values[name] if name else None)
            attrs: dict[str, Any] = {
                a.name: pir.AttrVar(f"__a{k}_{a.name}", can_match_none=True) for a in node.attribute
            }
            outs = pir.OpPatternBuilder(builder, op)(
                *args, _domain=node.domain or "", _outputs=len(node.output), _allow_other_attributes=True, **attrs
            )
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for name, v in zip(node.output, outs):
                values[name] = v
    return pir.GraphPattern(inputs, [values[o.name] for o in g.output], builder.nodes())


# --- conditions on a match ------------------------------------------------------------------------


def dtype_name(elem: int) -> str:
    from onnx import helper

    return helper.tensor_dtype_to_string(elem).removeprefix("TensorProto.").lower() if elem else "?"


def check_where(name: str, cond: Mapping[str, Any], value: Any, const: Any, label: str) -> str:
    """'' when ``value`` (an onnx_ir Value; ``const`` its numpy value or None) meets ``cond``,
    else the reason it does not, naming ``label`` (the tensor as the model calls it)."""
    import numpy as np

    if ("value" in cond or "between" in cond or cond.get("const")) and const is None:
        return f"'{label}' (pattern's {name}) is not a constant"
    if "value" in cond:
        want = float(cond["value"])
        rtol, atol = float(cond.get("rtol", VALUE_RTOL)), float(cond.get("atol", 1e-8))
        arr = np.asarray(const, dtype=np.float64).reshape(-1)
        if arr.size == 0 or not all(math.isclose(float(v), want, rel_tol=rtol, abs_tol=atol) for v in arr):
            got = arr[0] if arr.size == 1 else arr[:4]
            return f"constant '{label}' is {got}, the rule needs {want:g} (rtol {rtol:g})"
    if "between" in cond:
        lo, hi = (float(v) for v in cond["between"])
        arr = np.asarray(const, dtype=np.float64).reshape(-1)
        if arr.size == 0 or not (np.all(arr >= lo) and np.all(arr <= hi)):
            return f"constant '{label}' is {arr[:4]}, outside [{lo:g}, {hi:g}] the rule allows"
    shape = _shape(value, const)
    if "rank" in cond:
        if shape is None:
            return f"the rank of '{label}' is unknown; the rule needs rank {cond['rank']}"
        if len(shape) != int(cond["rank"]):
            return f"'{label}' has rank {len(shape)} {list(shape)}, the rule needs rank {cond['rank']}"
    if "size" in cond or cond.get("scalar"):
        want_size = 1 if cond.get("scalar") else int(cond["size"])
        if shape is None or any(not isinstance(d, int) for d in shape):
            return f"the size of '{label}' is unknown; the rule needs {want_size} element(s)"
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n != want_size or (cond.get("scalar") and len(shape) > 1):
            return f"'{label}' has shape {list(shape)}, the rule needs {want_size} element(s)"
    if "dtype" in cond:
        allowed = [cond["dtype"]] if isinstance(cond["dtype"], str) else list(cond["dtype"])
        got = _dtype(value, const)
        if got not in allowed:
            return f"'{label}' is {got or 'of unknown dtype'}, the rule needs {' or '.join(allowed)}"
    return ""


def _shape(value: Any, const: Any) -> tuple[Any, ...] | None:
    if const is not None:
        return tuple(int(d) for d in const.shape)
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else str(d) for d in shape)


def _dtype(value: Any, const: Any) -> str:
    if const is not None:
        return {"float32": "float", "float64": "double"}.get(str(const.dtype), str(const.dtype))
    dt = getattr(value, "dtype", None)
    return dtype_name(int(dt.value)) if dt is not None else ""


def attribute_value(attr: Any) -> Any:
    """A plain value of an onnx_ir attribute (lists as tuples, strings decoded)."""
    v = attr.value
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (list, tuple)) or type(v).__name__ in ("list", "tuple"):
        return tuple(x.decode() if isinstance(x, bytes) else x for x in v)
    return v


def proto_attribute_value(a: onnx.AttributeProto) -> Any:
    from onnx import helper

    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return tuple(x.decode() if isinstance(x, bytes) else x for x in v)
    return v


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def schema_default(op_type: str, domain: str, opset: int, name: str) -> Any:
    """The default of attribute ``name`` of ``op_type`` at ``opset`` (None: no default, or unknown)."""
    import onnx

    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:
        return None
    attr = schema.attributes.get(name)
    if attr is None or not attr.default_value.name and attr.default_value.type == 0:
        return None
    return proto_attribute_value(attr.default_value) if attr.default_value.type else None
