"""``surgeon inspect``: a model's I/O, opsets, ops, weights, external data and Resize nodes, or
(``--tensors``) every tensor."""

from __future__ import annotations

import argparse
import json

from surgeon.errors import EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from surgeon.cli.render import make_console, show_inspect
    from surgeon.ir.model import load
    from surgeon.ir.summary import inspect_model

    if args.tensors or args.filter:
        return inspect_tensors(args)
    info = inspect_model(load(args.model))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        show_inspect(make_console(), info)
    return EXIT_OK


def inspect_tensors(args: argparse.Namespace) -> int:
    from rich.table import Table

    from surgeon.cli.render import make_console
    from surgeon.cli.render import markup as escape
    from surgeon.ir.model import load
    from surgeon.ir.tensors import list_tensors

    rows = list_tensors(load(args.model), args.filter)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = Table(title=f"tensors ({len(rows)})", title_justify="left")
    for col in ("name", "op", "node", "dtype", "shape"):
        table.add_column(col)
    for r in rows:
        name = escape(r["name"]) + (" (output)" if r["graph_output"] else "")
        table.add_row(
            name, escape(r["op"]), escape(r["node"]), r["dtype"], escape("[" + ", ".join(map(str, r["shape"])) + "]")
        )
    make_console().print(table)
    return EXIT_OK
