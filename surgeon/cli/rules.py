"""``surgeon rules``: the built-in rewrite rules of the ``rewrite`` pass, one line each. The rule
files (``rules/*.yaml`` beside the pass modules) are read as data: the core and the command line
never import a pass's modules."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from surgeon.errors import EXIT_OK


def builtin_rules() -> list[dict[str, Any]]:
    """Name, summary and opset of every built-in rule, by name."""
    from surgeon.catalog import BUILTIN_PACKAGE
    from surgeon.yaml12 import compose

    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    out = []
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        for path in sorted((Path(folder) / "rules").glob("*.yaml")):
            data, _ = compose(path.read_text(encoding="utf-8"), path.name)
            if isinstance(data, dict):
                out.append({"name": path.stem, "summary": str(data.get("summary", "")), "opset": data.get("opset", 0)})
    return out


def cmd_rules(args: argparse.Namespace) -> int:
    from surgeon.cli.render import make_console, say

    rules = builtin_rules()
    if args.json:
        print(json.dumps(rules, indent=2))
        return EXIT_OK
    console = make_console()
    width = max((len(r["name"]) for r in rules), default=0)
    for r in rules:
        say(console, f"{r['name']:<{width}}  {r['summary']}")
    return EXIT_OK
