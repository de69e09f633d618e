"""``surgeon rules``: the built-in rewrite rules of the ``rewrite`` pass, one line each."""

from __future__ import annotations

import argparse
import json

from surgeon.errors import EXIT_OK


def cmd_rules(args: argparse.Namespace) -> int:
    from surgeon.cli.render import make_console, say
    from surgeon.passes._rewrite_rules import builtin, builtin_names

    rules = [builtin(name) for name in builtin_names()]
    if args.json:
        print(json.dumps([{"name": r.name, "summary": r.summary, "opset": r.opset} for r in rules], indent=2))
        return EXIT_OK
    console = make_console()
    width = max(len(r.name) for r in rules)
    for r in rules:
        say(console, f"{r.name:<{width}}  {r.summary}")
    return EXIT_OK
