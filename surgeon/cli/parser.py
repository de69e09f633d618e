"""The ``surgeon`` command line's parser: one sub-parser per command, and the flag groups commands
share (verification flags, output flags). Only argparse is imported here: ``surgeon --help``
starts fast."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any, NoReturn

from surgeon import __version__
from surgeon.errors import EPILOG, inert


def verification_flags(p: argparse.ArgumentParser, recipe: bool = True) -> argparse._ArgumentGroup:
    """--device, --no-verify, --dims, --rtol, --atol, --inputs: the verification flags apply, run
    and verify share (``recipe``: the command runs a recipe, whose ``verify:`` they override;
    ``surgeon verify`` has no recipe, and always verifies)."""
    over = " (overrides the recipe)" if recipe else ""
    g = p.add_argument_group("verification")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help=f"onnxruntime device{over}")
    if recipe:
        g.add_argument("--no-verify", action="store_true", help="skip verification (verify.mode: off)")
        g.add_argument(
            "--proof-only",
            action="store_true",
            help="run no onnxruntime session: every step must be proved structurally, or fails (verify.mode: proof)",
        )
        g.add_argument(
            "--no-proof",
            action="store_true",
            help="verify every step by running it, even one proved structurally (verify.prove: false)",
        )
    g.add_argument(
        "--dims",
        action="append",
        default=[],
        metavar="SYM=N",
        help="size of a symbolic dim for verification (repeatable)",
    )
    g.add_argument("--rtol", type=float, help="relative tolerance")
    g.add_argument("--atol", type=float, help="absolute tolerance")
    g.add_argument(
        "--inputs", type=Path, metavar="NPZ", help="input data (.npz, arrays named as the source model's inputs)"
    )
    return g


def report_flags(p: argparse.ArgumentParser) -> None:
    """--report, --html, --node-data: what apply, run and verify write about the run."""
    p.add_argument("--report", type=Path, metavar="JSON", help="write the summary as JSON")
    p.add_argument(
        "--html",
        type=Path,
        metavar="HTML",
        help="write a self-contained HTML report (many models: this index, and a page per model in --out-dir)",
    )
    p.add_argument(
        "--node-data",
        type=Path,
        metavar="JSON",
        help="write the per-node error as Google Model Explorer node data (one model)",
    )


def output_flags(p: argparse.ArgumentParser) -> None:
    """--force, --in-place, --report, --html, --node-data, --dry-run: the output flags apply and run share."""
    p.add_argument("--force", action="store_true", help="write the output even when verification fails (still exits 1)")
    p.add_argument("--in-place", action="store_true", help="allow overwriting the input model")
    report_flags(p)
    p.add_argument(
        "--dry-run", action="store_true", help="run and verify every pass, write nothing (the --report still)"
    )


class Parser(argparse.ArgumentParser):
    """argparse, whose messages reach the terminal inert: a usage error (it quotes the arguments
    given: a path, a tensor name) is one line, and help text is shown line by line."""

    def error(self, message: str) -> NoReturn:
        super().error(inert(message))

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            lines = message.split("\n")
            super()._print_message("\n".join(inert(line) for line in lines), file)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="surgeon", description="Verified graph surgery for exported ONNX models.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"surgeon {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every rewrite and every output compared")
    common = Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print errors only")
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print every rewrite and every output compared",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add = functools.partial(sub.add_parser, parents=[common])

    p = add("apply", help="apply a recipe to a model, verifying every pass", epilog=EPILOG)
    p.add_argument("recipe", type=Path)
    p.add_argument("-i", "--input", type=Path, help="input model (overrides the recipe's 'model')")
    p.add_argument("-o", "--output", type=Path, help="output model (overrides the recipe's 'output')")
    p.add_argument(
        "--out-dir",
        type=Path,
        metavar="DIR",
        help="many models (-i 'models/*.onnx'): write each output, and its .report.json, here",
    )
    p.add_argument(
        "-j", "--jobs", type=int, metavar="N", help="many models: parallel processes (default: the core count)"
    )
    p.add_argument(
        "--shard",
        metavar="K/N",
        help="many models: process only the K-th (1..N) of N deterministic slices of the models -i finds",
    )
    p.add_argument(
        "--trust-source",
        action="store_true",
        help="run the Python code a recipe's 'source:' block names (import its module, call its factory); "
        "also SURGEON_TRUST_SOURCE=1",
    )
    output_flags(p)
    verification_flags(p)

    p = add("run", help="apply one pass, no recipe needed", epilog=EPILOG)
    p.add_argument("pass_name", metavar="PASS")
    p.add_argument("model", type=Path)
    p.add_argument("-o", "--output", type=Path, help="output model (required unless --dry-run)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a param (YAML value; dotted keys for mappings)"
    )
    output_flags(p)
    verification_flags(p)

    p = add("inspect", help="I/O, opsets, ops, weights, external data and Resize nodes of a model")
    p.add_argument("model", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--tensors", action="store_true", help="list every tensor: name, op, dtype, shape (intermediate ones included)"
    )
    p.add_argument("--filter", metavar="REGEX", help="with --tensors: only names this regex matches (searched)")

    p = add("passes", help="list the available passes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add("explain", help="describe a pass and its params")
    p.add_argument("pass_name", metavar="PASS")
    p.add_argument("--json", action="store_true", help="print JSON")
    add("schema", help="print the JSON Schema of recipes")
    p = add("rules", help="list the built-in rules of the rewrite pass")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("validate", help="check a recipe (and its tensor names against a model); writes nothing", epilog=EPILOG)
    p.add_argument("recipe", type=Path)
    p.add_argument("-i", "--input", type=Path, help="model to check names against (default: the recipe's)")

    p = add("verify", help="compare two models on the same inputs", epilog=EPILOG)
    p.add_argument("reference", type=Path)
    p.add_argument("candidate", type=Path)
    p.add_argument(
        "--map", action="append", default=[], metavar="OLD=NEW", help="an input or output renamed in the candidate"
    )
    report_flags(p)
    p.add_argument(
        "--localize",
        action="store_true",
        help="name the first node whose output differs (tensors both models have, compared in topological order)",
    )
    g = verification_flags(p, recipe=False)
    g.add_argument(
        "--feed",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="the value of an input the candidate added (a promoted constant): factor=3.0, or a list (repeatable)",
    )
    _doctor_parser(add)
    _export_parser(add)

    p = add("report", help="work with reports: merge per-model reports into one summary", epilog=EPILOG)
    reports = p.add_subparsers(dest="report_command", metavar="ACTION", required=True)
    m = reports.add_parser("merge", parents=[common], help="join <name>.report.json files into one summary")
    m.add_argument("reports", type=Path, nargs="+", metavar="REPORT")
    m.add_argument("-o", "--output", type=Path, metavar="JSON", help="write the summary (kind: many) here")
    return parser


def _export_parser(add: Any) -> None:
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
        metavar="NAME:DIMS[:DTYPE][=VALUE]",
        help="an input, in forward's order: image:1x3x224x224:float32 (repeatable); =VALUE traces it with that "
        "value (factor=3.0, a float32 scalar; factor:1=3.0; one number fills the shape, or one per element)",
    )
    p.add_argument(
        "--inputs",
        type=Path,
        metavar="NPZ",
        help="input data (.npz, arrays by input name): traced and compared first; inputs --input does not name follow",
    )
    p.add_argument(
        "--range",
        action="append",
        default=[],
        metavar="NAME=LOW:HIGH",
        help="draw that input's random data from [LOW, HIGH) (repeatable)",
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _doctor_parser(add: Any) -> None:
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
        "--try",
        dest="trial",
        choices=("verify", "plan", "off"),
        default="verify",
        help="try the recipe before proposing it: applied and verified (default), its passes run unverified, or not",
    )
    p.add_argument(
        "-j", "--jobs", type=int, metavar="N", help="several models: parallel processes (default: the core count)"
    )
