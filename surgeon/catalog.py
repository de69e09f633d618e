"""The passes by name, known without importing them: ``surgeon passes`` lists them and ``get_pass``
imports only the module of the pass asked for. Imports nothing heavy (no pydantic, no onnx)."""

from __future__ import annotations

import functools
import importlib.util
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import NamedTuple

BUILTIN_PACKAGE = "surgeon.passes"
ENTRY_POINT_GROUP = "surgeon.passes"


class PassEntry(NamedTuple):
    """A pass known by name before its module is imported: where it lives and its summary line."""

    name: str
    module: str
    summary: str
    third_party: bool = False
    """From a ``surgeon.passes`` entry point: its summary is known once its module is imported."""


@functools.cache
def catalog() -> dict[str, PassEntry]:
    """Every pass by name, without importing the pass modules: built-in passes are found by reading
    their source (``@register_pass("name")`` on a class, its docstring's first paragraph); third-party
    ones are the ``surgeon.passes`` entry points (name = pass name, value = its module)."""
    out: dict[str, PassEntry] = {}
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        for path in sorted(Path(folder).glob("[!_]*.py")):
            for name, summary in _declared_passes(path.read_text(encoding="utf-8")):
                out[name] = PassEntry(name, f"{BUILTIN_PACKAGE}.{path.stem}", summary)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in out:
            out[ep.name] = PassEntry(ep.name, ep.module, "", third_party=True)
    return dict(sorted(out.items()))


_DECLARED = re.compile(
    r"""^@register_pass\(\s*["']([a-z0-9-]+)["']\s*\)\s*\nclass \w+[^\n]*:\s*\n\s+(?:[rR]?(?:\"\"\"|'''))?"""
    r"""([\s\S]*?)(?=\"\"\"|'''|\n[ \t]*\n)""",
    re.M,
)


def _declared_passes(source: str) -> list[tuple[str, str]]:
    """``(name, first docstring paragraph on one line)`` of every ``@register_pass("name")`` class in ``source``: a
    line scan, cheaper than parsing (tests check it agrees with the imported classes)."""
    return [(name, " ".join(doc.split())) for name, doc in _DECLARED.findall(source)]
