"""``surgeon export MODULE:FACTORY``: a plain ``torch.onnx.export``, verified against torch."""

from __future__ import annotations

import argparse
import os

from surgeon.errors import EXIT_OK, EXIT_VERIFY_FAILED, UsageError


def cmd_export(args: argparse.Namespace) -> int:
    from surgeon.cli.render import error_line, fmt_err, make_console, markup, say
    from surgeon.export import ExportRefused, export, load_factory, parse_input, parse_range, read_inputs
    from surgeon.ir.targets import Target, guard_writes

    if not args.input and args.inputs is None:
        raise UsageError("export: give the inputs, in forward's order: --input image:1x3x224x224:float32")
    guard_writes([Target(args.output, "-o")])
    if os.path.lexists(args.output) and not args.overwrite:
        raise UsageError(f"{args.output}: exists; not overwritten (--overwrite replaces it)")
    specs = [parse_input(t) for t in args.input]
    if args.inputs is not None:
        specs = read_inputs(args.inputs, specs)
    for text in args.range:
        parse_range(text, specs)
    module = load_factory(args.factory)  # the user named this code on the command line: no --trust-source
    try:
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
    except ExportRefused as exc:
        if args.verbose and exc.detail:
            err = make_console(stderr=True)
            for line in exc.detail.splitlines():
                say(err, line)
        raise
    console = make_console()
    if not args.quiet:
        if result.warnings:
            total = sum(n for _, n in result.warnings)
            say(console, f"{total} warning(s) from the exporter, {len(result.warnings)} distinct:")
            for line, n in result.warnings[: 10 if not args.verbose else None]:
                say(console, f"  {n}x {line}")
        for note in result.notes:
            say(console, note)
        for o in result.outputs:
            verdict = "[green]ok[/green]" if o["ok"] else "[bold red]FAIL[/bold red]"
            tail = f"  ({markup(o['note'])})" if o["note"] else ""
            console.print(
                f"{markup(o['name'])}: shape {markup(o['shape'])}  max abs {fmt_err(o['max_abs'])}  "
                f"max rel {fmt_err(o['max_rel'])}  {verdict}{tail}",
                highlight=False,
            )
        say(
            console,
            f"export ({args.exporter}) verified against torch on onnxruntime CPU: {'ok' if result.ok else 'FAIL'}",
        )
    if not result.ok:
        error_line("outputs differ from torch's; " + ("written anyway (--force)" if args.force else "nothing written"))
        return EXIT_VERIFY_FAILED
    if not args.quiet:
        say(console, f"wrote {args.output} (next: surgeon doctor {args.output})")
    return EXIT_OK
