"""``surgeon passes``, ``surgeon explain PASS`` and ``surgeon schema``: what the passes are, one
pass's params, and the JSON Schema of recipes."""

from __future__ import annotations

import argparse
import json

from surgeon.errors import EXIT_OK


def cmd_passes(args: argparse.Namespace) -> int:
    from rich.table import Table

    from surgeon.catalog import catalog
    from surgeon.cli.render import make_console, markup

    entries = catalog()
    if any(e.third_party for e in entries.values()):  # only their code knows their summaries
        from surgeon.pass_api import registry

        summaries = {name: cls.summary() for name, cls in registry().items()}
    else:
        summaries = {name: e.summary for name, e in entries.items()}

    if args.json:
        print(
            json.dumps(
                [
                    {"name": name, "summary": summary, "module": entries[name].module if name in entries else None}
                    for name, summary in summaries.items()
                ],
                indent=2,
            )
        )
        return EXIT_OK
    table = Table(title="passes", title_justify="left")
    table.add_column("name")
    table.add_column("what it does")
    for name, summary in summaries.items():
        table.add_row(markup(name), markup(summary))
    make_console().print(table)
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from rich.table import Table

    from surgeon.cli.explain import describe, example_yaml
    from surgeon.cli.render import make_console, say
    from surgeon.cli.render import markup as escape
    from surgeon.pass_api import get_pass

    info = describe(get_pass(args.pass_name))
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    console = make_console()
    console.print(f"[bold]{escape(info['name'])}[/bold]: {escape(info['summary'])}")
    if info["doc"]:
        for line in str(info["doc"]).split("\n"):
            say(console, line)
    table = Table(title="params", title_justify="left")
    for col in ("name", "type", "default", "description"):
        table.add_column(col)
    for p in info["params"]:
        default = "required" if p["required"] else json.dumps(p["default"])
        table.add_row(escape(p["name"]), escape(p["type"]), escape(default), escape(p["description"]))
    console.print(table)
    if info["example"] is not None:
        say(console, f"example step (for {info['example_model']}):")
        say(console, f"  {example_yaml(info['example'])}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from surgeon.recipe import recipe_schema

    print(json.dumps(recipe_schema(), indent=2))
    return EXIT_OK
