"""The recipe YAML loader: YAML 1.2 core schema, with limits, every problem a one-line error.

What :func:`compose` guarantees:

- **YAML 1.2 core schema.** Only ``true``/``false`` (also ``True``, ``TRUE``, ``False``, ``FALSE``)
  are booleans; ``null``, ``Null``, ``NULL``, ``~`` and the empty scalar are null; integers are
  ``[-+]?[0-9]+`` (so ``010`` is 10), ``0o[0-7]+`` and ``0x[0-9a-fA-F]+``; floats are the 1.2
  core forms (``1.0e-4``, ``.5``, ``1e3``, ``.inf``, ``-.inf``, ``.nan``). Everything else is a
  string: ``off``, ``yes``, ``y``, ``1_000``, ``1:20``, ``2001-12-14`` and ``<<`` included.
- **Explicit tags.** Only the core tags ``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``
  (on scalars), ``!!seq`` (on sequences) and ``!!map`` (on mappings) are accepted, plus the
  non-specific ``!``. Every other tag (``!!timestamp``, ``!!binary``, ``!!set``, ``!!omap``,
  ``!!python/...``, local tags such as ``!foo``) is refused, and so is a value its core tag does
  not describe (``!!int abc``). Nothing is ever constructed but str, int, float, bool, None,
  list and dict.
- **Limits.** The text is at most :data:`MAX_BYTES` (UTF-8); nodes nest at most
  :data:`MAX_DEPTH` deep and the document has at most :data:`MAX_NODES` nodes, both counted with
  aliases expanded (each use of an alias counts its whole target again), checked while composing
  so no input reaches PyYAML's recursive composer past the depth limit; an alias inside the node
  it names is refused.
- **Keys.** Mapping keys are scalars (so hashable); a duplicate key is an error. Keys that are not
  strings (``1: x``, ``null: x``) load as they are, for the recipe validation to report.
- **Strings.** An escaped surrogate pair (``"\\ud83d\\ude00"``, as JSON writes a character past
  U+FFFF) is the one character it encodes, so a recipe written as JSON reads back unchanged.
- **Errors.** Every problem is a :class:`~surgeon.errors.RecipeError` whose lines each read
  ``name:line:column: what`` (1-based); any other exception is a bug.

:func:`dump` (block YAML) and :func:`dump_flow` (one line, printable ASCII) write YAML that reads
back equal through :func:`compose` and through PyYAML's YAML 1.1 ``safe_load`` alike: a string
either schema would read as something else is quoted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

import yaml

from surgeon.errors import RecipeError

MAX_BYTES = 16 * 1024 * 1024
"""Largest recipe text accepted, in bytes of UTF-8."""
MAX_DEPTH = 100
"""Most nodes on one path from the root to a leaf (``[[x]]`` is 3), aliases expanded."""
MAX_NODES = 100_000
"""Most nodes in the document (keys, values, items), aliases expanded."""
MAX_INT_DIGITS = 4300
"""Longest decimal integer (Python's own default limit for int(str))."""

Loc = tuple[Any, ...]
Positions = dict[Loc, tuple[int, int]]

_CORE = "tag:yaml.org,2002:"
_NULL = re.compile(r"(?:null|Null|NULL|~|)\Z")
_BOOL = re.compile(r"(?:true|True|TRUE|false|False|FALSE)\Z")
_INT = re.compile(r"(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)\Z")
_FLOAT = re.compile(
    r"(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z"
)
_RESOLVERS: list[tuple[str, re.Pattern[str], list[str]]] = [  # in order: the first match wins
    (_CORE + "null", _NULL, ["n", "N", "~", ""]),
    (_CORE + "bool", _BOOL, list("tTfF")),
    (_CORE + "int", _INT, list("-+0123456789")),
    (_CORE + "float", _FLOAT, list("-+0123456789.")),
]


def _int(value: str) -> int:
    if value.startswith(("0o", "0x")):
        return int(value[2:], 8 if value[1] == "o" else 16)
    if len(value.lstrip("+-")) > MAX_INT_DIGITS:
        raise ValueError(f"more than {MAX_INT_DIGITS} digits")
    return int(value)


def _float(value: str) -> float:
    low = value.lower()
    if low.endswith(".inf"):
        return -math.inf if low.startswith("-") else math.inf
    return math.nan if low == ".nan" else float(value)


_SCALARS: dict[str, tuple[re.Pattern[str], Callable[[str], Any]]] = {
    _CORE + "null": (_NULL, lambda value: None),
    _CORE + "bool": (_BOOL, lambda value: value[0] in "tT"),
    _CORE + "int": (_INT, _int),
    _CORE + "float": (_FLOAT, _float),
}
"""The constructors: each core scalar tag, the values it describes, and how to build one."""
_KIND_TAGS: dict[type, set[str]] = {
    yaml.ScalarNode: {_CORE + "str", *_SCALARS},
    yaml.SequenceNode: {_CORE + "seq"},
    yaml.MappingNode: {_CORE + "map"},
}


def _where(name: str, mark: Any) -> str:
    return f"{name}:{mark.line + 1}:{mark.column + 1}"


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag


def _show(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


class _Loader(yaml.SafeLoader):
    """PyYAML's reader, scanner and parser (all iterative), the YAML 1.2 core resolvers, and a
    composer that keeps the limits as it goes. It constructs nothing: :class:`_Walk` does."""

    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}
    yaml_constructors: ClassVar[dict[Any, Any]] = {}

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name
        self.open: list[list[int]] = []
        """Per node being composed: [expanded size so far, expanded depth of its deepest child]."""
        self.anchored: dict[int, tuple[int, int]] = {}
        """id of each finished anchored node: (expanded size, expanded depth)."""
        self.total = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self.anchored:
                raise RecipeError(
                    f"{_where(self.name, event.start_mark)}: alias *{event.anchor} is used inside the "
                    "node it names (a recursive alias)"
                )
            size, depth = self.anchored[id(node)]
            self.grow(event, size, len(self.open) + depth)
        else:
            self.open.append([1, 0])
            self.grow(event, 1, len(self.open))
            node = super().compose_node(parent, index)
            if node is not None and isinstance(event, yaml.ScalarEvent) and event.tag == "!":
                node.tag = _CORE + "str"  # the non-specific tag: a string (PyYAML resolves it as plain)
            size, child_depth = self.open.pop()
            depth = child_depth + 1
            if getattr(event, "anchor", None) is not None:
                self.anchored[id(node)] = (size, depth)
        if self.open:
            self.open[-1][0] += size
            self.open[-1][1] = max(self.open[-1][1], depth)
        return node

    def grow(self, event: Any, size: int, depth: int) -> None:
        self.total += size
        if depth > MAX_DEPTH:
            raise RecipeError(
                f"{_where(self.name, event.start_mark)}: YAML nests deeper than {MAX_DEPTH} levels "
                "(aliases expanded), the limit for recipes"
            )
        if self.total > MAX_NODES:
            raise RecipeError(
                f"{_where(self.name, event.start_mark)}: YAML document has more than {MAX_NODES} "
                "nodes (aliases expanded), the limit for recipes"
            )


for _tag, _pattern, _first in _RESOLVERS:
    _Loader.add_implicit_resolver(_tag, _pattern, _first)


class _Walk:
    """Builds Python data from the composed nodes, recording each node's position, checking tags
    and keys. Recursion is bounded: the composer refused anything deeper than MAX_DEPTH."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.positions: Positions = {}
        self.problems: list[str] = []

    def problem(self, node: Any, what: str) -> None:
        self.problems.append(f"{_where(self.name, node.start_mark)}: {what}")

    def node(self, node: Any, loc: Loc) -> Any:
        self.positions[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if not self.tag_ok(node):
            return None
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self.node(item, (*loc, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def tag_ok(self, node: Any) -> bool:
        allowed = _KIND_TAGS[type(node)]
        if node.tag in allowed:
            return True
        tag = _short_tag(node.tag)
        if any(node.tag in tags for tags in _KIND_TAGS.values()):
            kind = {yaml.ScalarNode: "a scalar", yaml.SequenceNode: "a sequence", yaml.MappingNode: "a mapping"}[
                type(node)
            ]
            self.problem(node, f"YAML tag '{tag}' cannot tag {kind}")
        else:
            self.problem(
                node,
                f"YAML tag '{tag}' is not allowed in recipes; allowed: !!str, !!int, !!float, !!bool, "
                "!!null, !!seq, !!map",
            )
        return False

    def scalar(self, node: Any) -> Any:
        if node.tag == _CORE + "str":
            return _joined(node.value)
        pattern, make = _SCALARS[node.tag]
        try:
            if pattern.match(node.value):
                return make(node.value)
            reason = "not in the YAML 1.2 core schema"
        except ValueError as exc:
            reason = str(exc)
        self.problem(node, f"{_show(node.value)} is not a valid {_short_tag(node.tag)} ({reason})")
        return None

    def mapping(self, node: Any, loc: Loc) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                kind = "a sequence" if isinstance(knode, yaml.SequenceNode) else "a mapping"
                self.problem(knode, f"a mapping key must be a scalar, not {kind}")
                continue
            if not self.tag_ok(knode):
                continue
            key = self.scalar(knode)
            if key in out:
                self.problem(knode, f"duplicate key {key!r}")
            self.positions[loc + ("__key__", key)] = (knode.start_mark.line + 1, knode.start_mark.column + 1)
            out[key] = self.node(vnode, (*loc, key))
        return out


_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _joined(value: str) -> str:
    """A string whose escaped surrogate pairs (``"\\ud83d\\ude00"``, as JSON writes characters past
    U+FFFF) are the one character they encode, as JSON reads them; a lone surrogate stays."""
    if not any("\ud800" <= c <= "\udfff" for c in value):
        return value
    return _PAIR.sub(lambda m: chr(0x10000 + ((ord(m[0][0]) - 0xD800) << 10) + (ord(m[0][1]) - 0xDC00)), value)


def compose(text: str, name: str) -> tuple[Any, Positions]:
    """``text`` as Python data, and the (line, column) of every node, 1-based, keyed by its place
    (``("passes", 0, "cleanup")``; a mapping key's own place is ``(*mapping, "__key__", key)``).

    Raises :class:`RecipeError` for every problem, each line ``name:line:column: what``."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise RecipeError(f"{name}:1:1: recipe is {size} bytes, more than the {MAX_BYTES // 2**20} MiB limit")
    node = _compose_node(text, name)
    if node is None:
        return None, {}
    walk = _Walk(name)
    data = walk.node(node, ())
    if walk.problems:
        raise RecipeError(walk.problems)
    return data, walk.positions


def _compose_node(text: str, name: str) -> Any:
    loader: _Loader | None = None
    try:
        loader = _Loader(text, name)
        return loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise RecipeError(
            f"{_where_index(name, text, exc.position)}: YAML syntax error: unacceptable character "
            f"#x{char:04x}: {exc.reason}"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _where(name, mark) if mark else f"{name}:1:1"
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context:
            context_at = f" at {exc.context_mark.line + 1}:{exc.context_mark.column + 1}" if exc.context_mark else ""
            problem += f" ({exc.context}{context_at})"
        raise RecipeError(f"{where}: YAML syntax error: {' '.join(problem.split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _where_index(name: str, text: str, index: int) -> str:
    """``name:line:column`` of a character index, counting line breaks as PyYAML does."""
    before = text[:index]
    breaks = list(re.finditer(r"\r\n|[\n\r\x85\u2028\u2029]", before))
    column = index - breaks[-1].end() if breaks else index
    return f"{name}:{len(breaks) + 1}:{column + 1}"


class _Dumper(yaml.SafeDumper):
    """``yaml.safe_dump`` whose resolver also knows the YAML 1.2 core forms, so a string that
    either YAML 1.1 or 1.2 would read as something else ('off', '010', '08', '1e3') is quoted."""


for _tag, _pattern, _first in _RESOLVERS:
    _Dumper.add_implicit_resolver(_tag, _pattern, _first)


def dump(data: Any) -> str:
    """``data`` (str, int, float, bool, None, list, dict) as block YAML, keys in their order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


class _FlowDumper(_Dumper):
    """:class:`_Dumper` that double-quotes (with escapes) every string holding a character
    outside printable ASCII, so each scalar stays on its line."""

    def choose_scalar_style(self) -> str:
        value = getattr(self.event, "value", None)
        if isinstance(value, str) and not all(" " <= c <= "~" for c in value):
            return '"'
        return str(super().choose_scalar_style())


def dump_flow(data: Any) -> str:
    """``data`` as one line of flow YAML (``{inputs: {input.1: image}}``) that reads back equal
    through :func:`compose` and PyYAML's ``safe_load``: a string either schema would read as
    something else is quoted, and one holding a control, non-ASCII or line-breaking character is
    double-quoted with escapes (``"\\e[31m"``, ``"\\0"``, ``"\\n"``, ``"\\u202E"``), so the text is
    printable ASCII."""
    text = yaml.dump(data, Dumper=_FlowDumper, default_flow_style=True, width=2**31 - 1, allow_unicode=False)
    text = text.strip()
    if text.endswith("\n...") or text.endswith("..."):
        text = text.removesuffix("...").strip()
    return text
