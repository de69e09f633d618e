"""The front-door commands: ``surgeon doctor``, ``surgeon export`` and ``surgeon inspect
--tensors`` (the parsers and ``cmd_*`` functions ``surgeon.cli`` wires in). Heavy imports stay
inside the functions so ``surgeon --help`` starts fast."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgeon.errors import EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED, UsageError

if TYPE_CHECKING:
    from rich.console import Console

from surgeon.errors import EPILOG  # noqa: E402


def make_console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def export_parser(add: Any) -> None:
    p = add("export", help="torch.onnx.export a module a factory returns, verified against torch", epilog=EPILOG)
    p.add_argument(
        "factory",
        metavar="MODULE:FACTORY",
        help="e.g. mypkg.models:build (a callable taking no arguments, returning an nn.Module)",
    )
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME:DIMS[:DTYPE]",
        help="an input, in forward's order: image:1x3x224x224:float32 (repeatable)",
    )
    p.add_argument(
        "--output-name", action="append", default=[], metavar="NAME", help="output names, in order (repeatable)"
    )
    p.add_argument(
        "--dynamic",
        action="append",
        default=[],
        metavar="NAME:AXIS:SYMBOL",
        help="a dynamic axis: image:0:batch (repeatable)",
    )
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    p.add_argument("--opset", type=int)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument(
        "--force", action="store_true", help="write the model even when its outputs differ from torch's (still exits 1)"
    )


def doctor_parser(add: Any) -> None:
    p = add(
        "doctor",
        help="what will bite a model at deployment, and a recipe that fixes it",
        epilog=EPILOG + ", 5 findings remain",
    )
    p.add_argument("models", type=Path, nargs="+", metavar="MODEL")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--emit-recipe", type=Path, metavar="YAML", help="write a recipe that fixes every fixable finding")
    p.add_argument("--force", action="store_true", help="overwrite an existing --emit-recipe file")
    p.add_argument(
        "--no-runtime", action="store_true", help="skip the onnxruntime checks (kernels, IR and opset limits)"
    )
    p.add_argument(
        "-j", "--jobs", type=int, metavar="N", help="several models: parallel processes (default: the core count)"
    )


def inspect_tensors(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

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


def cmd_doctor(args: argparse.Namespace) -> int:
    from surgeon.doctor import diagnose
    from surgeon.doctor.show import show_diagnosis
    from surgeon.ir.model import load

    if args.emit_recipe is not None:
        if len(args.models) != 1:
            raise UsageError("--emit-recipe: give exactly one model")
        _check_new_file(args.emit_recipe, args.force)
    if len(args.models) > 1:
        from surgeon.cli_batch import doctor_many

        reports = doctor_many(args)
        if args.json:
            print(json.dumps(reports, indent=2, default=str))
        elif not args.quiet:
            for r in reports:
                show_diagnosis(make_console(), r, args.verbose)
        return max(
            (r.get("exit_code", EXIT_USAGE if r.get("failure_class") == "usage" else 3) for r in reports),
            default=EXIT_OK,
        )
    diags = [diagnose(load(m), runtime_checks=not args.no_runtime) for m in args.models]
    if args.json:
        print(json.dumps(diags[0].as_dict(), indent=2, default=str))
    elif not args.quiet:
        show_diagnosis(make_console(), diags[0], args.verbose)
    if args.emit_recipe is not None:
        from surgeon.doctor.emit import recipe_text

        _write_text(args.emit_recipe, recipe_text(diags[0], args.emit_recipe, args.models[0]))
        if not args.quiet and not args.json:
            make_console().print(
                f"wrote {args.emit_recipe} (check it: surgeon validate {args.emit_recipe})", markup=False
            )
    return max(d.exit_code for d in diags)


def _check_new_file(path: Path, force: bool) -> None:
    if path.is_dir():
        raise UsageError(f"{path}: is a folder")
    if path.exists() and not force:
        raise UsageError(f"{path}: exists; not overwritten (--force overwrites it)")
    if not path.parent.resolve().is_dir():
        raise UsageError(f"{path}: folder {path.parent} does not exist")


def _write_text(path: Path, text: str) -> None:
    from surgeon.ir.files import write_atomic

    write_atomic(path, text.encode("utf-8"))


def cmd_export(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from surgeon.export import export, load_factory, parse_input
    from surgeon.render import fmt_err

    if not args.input:
        raise UsageError("export: give the inputs, in forward's order: --input image:1x3x224x224:float32")
    if args.output.exists() and not args.force:
        raise UsageError(f"{args.output}: exists; not overwritten (--force overwrites it)")
    specs = [parse_input(t) for t in args.input]
    module = load_factory(args.factory)
    result = export(
        module,
        specs,
        args.output,
        exporter=args.exporter,
        opset=args.opset,
        output_names=args.output_name,
        dynamic=args.dynamic,
        rtol=args.rtol,
        atol=args.atol,
        force=args.force,
    )
    console = make_console()
    if not args.quiet:
        if result.warnings:
            total = sum(n for _, n in result.warnings)
            console.print(f"{total} warning(s) from the exporter, {len(result.warnings)} distinct:", markup=False)
            for line, n in result.warnings[: 10 if not args.verbose else None]:
                console.print(f"  {n}x {line}", markup=False)
        for note in result.notes:
            console.print(note, markup=False)
        for o in result.outputs:
            verdict = "[green]ok[/green]" if o["ok"] else "[bold red]FAIL[/bold red]"
            tail = f"  ({escape(o['note'])})" if o["note"] else ""
            console.print(
                f"{escape(o['name'])}: shape {o['shape']}  max abs {fmt_err(o['max_abs'])}  max rel {fmt_err(o['max_rel'])}  {verdict}{tail}",
                highlight=False,
            )
        console.print(
            f"export ({args.exporter}) verified against torch on onnxruntime CPU: {'ok' if result.ok else 'FAIL'}",
            markup=False,
        )
    if not result.ok:
        make_console(stderr=True).print(
            "outputs differ from torch's; " + ("written anyway (--force)" if args.force else "nothing written"),
            markup=False,
        )
        return EXIT_VERIFY_FAILED
    if not args.quiet:
        console.print(f"wrote {args.output} (next: surgeon doctor {args.output})", markup=False)
    return EXIT_OK
