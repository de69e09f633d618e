"""``surgeon validate`` (a recipe, and its names against a model; writes nothing) and ``surgeon
verify`` (two models compared on the same inputs)."""

from __future__ import annotations

import argparse
from typing import Any

from surgeon.errors import EXIT_OK, EXIT_VERIFY_FAILED, ModelError, UsageError


def cmd_validate(args: argparse.Namespace) -> int:
    from surgeon.cli.render import make_console, say
    from surgeon.errors import RecipeError
    from surgeon.ir.model import load
    from surgeon.recipe import check_recipe_paths, load_recipe

    recipe = load_recipe(args.recipe)
    check_recipe_paths(recipe, args.input is None, True)
    model_path = args.input or recipe.model
    sizes: list[str] = []
    if model_path is None and recipe.source is not None:  # checked without importing or running anything
        from surgeon.errors import UsageError
        from surgeon.export import check_factory
        from surgeon.recipe import place

        try:
            check_factory(recipe.source.factory, recipe.base_dir)
        except UsageError as exc:
            raise UsageError(f"{place(recipe, ('source', 'factory'))}: source.factory: {exc}") from None
    if model_path is not None:
        model = load(model_path)
        problems = recipe.pipeline.check_requirements(model)
        if problems:
            raise RecipeError(problems)
        sizes = _planned_sizes(model, recipe.pipeline)
    if not args.quiet:
        what = (
            f" against {model_path}"
            if model_path
            else (f", model exported from {recipe.source.factory} at apply" if recipe.source else "")
        )
        console = make_console()
        say(console, f"{args.recipe}: ok ({len(recipe.pipeline.steps)} passes){what}")
        for line in sizes:
            say(console, line)
    return EXIT_OK


def _planned_sizes(model: Any, pipeline: Any) -> list[str]:
    """What verification will use for the source's symbolic dims: sizes it defaults are named
    with the key that chooses them (nothing when verification is off or data is given)."""
    from surgeon.pipeline import size_hints
    from surgeon.verify.dims import choose_sizes
    from surgeon.verify.specs import graph_inputs

    cfg = pipeline.verify
    if cfg.mode == "off" or cfg.inputs:
        return []
    sizes = choose_sizes(graph_inputs(model.proto), cfg, hints=size_hints(pipeline.steps))
    lines = [f"verification sizes: {', '.join(sizes.lines())}"] if sizes.chosen else []
    defaulted = sizes.defaulted()
    if defaulted:
        keys = ", ".join(f"'{k}': N" if ":" in k else f"{k}: N" for k in defaulted)
        lines.append(
            f"verification will default {', '.join(defaulted)} to {cfg.default_dim} "
            f"(verify.default_dim); set verify.dims: {{{keys}}} to choose"
        )
    return lines


def cmd_verify(args: argparse.Namespace) -> int:
    from surgeon.app import pairs
    from surgeon.cli.apply import overrides
    from surgeon.cli.render import make_console, say, show_outputs, show_sizes
    from surgeon.ir.model import load
    from surgeon.ir.targets import Target, guard_writes
    from surgeon.report import verify_report, write_report
    from surgeon.verify.contract import IOContract
    from surgeon.verify.probes import probe_dynamic_axes
    from surgeon.verify.runtime import SessionLoadError
    from surgeon.verify.session import config_tolerance
    from surgeon.verify.verifier import Verifier

    cfg = overrides(args).verify_config()
    mapping = pairs(args.map, "--map")
    ref, cand = load(args.reference), load(args.candidate)
    named = [(args.report, "--report"), (args.html, "--html"), (args.node_data, "--node-data")]
    targets = [Target(path, flag) for path, flag in named if path is not None]
    if targets:  # checked before any run; the models and their weights are never written
        from surgeon.ir.targets import model_data_files

        reads = [args.reference, args.candidate, *model_data_files(ref), *model_data_files(cand)]
        guard_writes(targets, reads)
    in_names = {vi.name for vi in ref.proto.graph.input}
    contract = IOContract(
        renamed_inputs={k: v for k, v in mapping.items() if k in in_names},
        renamed_outputs={k: v for k, v in mapping.items() if k not in in_names},
    )
    contract.new_inputs = _added_inputs(ref, cand, contract, pairs(args.feed, "--feed"))
    probe_dynamic_axes(ref, cand, contract)
    verifier = Verifier(ref, cfg)
    try:
        verifier.reference()
    except SessionLoadError as exc:  # the reference itself: a model problem, not a failed comparison
        raise ModelError(f"{ref.name}: onnxruntime cannot load the model: {exc.reason}") from None
    tol = config_tolerance(cfg)
    check = verifier.check(cand, [contract], tol)
    divergence = verifier.localize(ref, 0, cand, tol) if args.localize else None
    check.outputs += verifier.probe(cand, [contract], 0, tol)
    console = make_console()
    if not args.quiet:
        show_outputs(console, check)
        show_sizes(console, check.sizes, verifier.values)
        if divergence is not None:
            say(console, divergence.line())
        say(console, f"verified on {verifier.device_line}: {'ok' if check.ok else 'FAIL'}")
    if targets:
        outputs = [o.as_dict() for o in check.outputs]
        div = divergence.as_dict() if divergence is not None else None
        data = verify_report(check.ok, verifier.device_line, check.sizes, verifier.values, outputs, div)
        if args.report:
            write_report(args.report, data)
        _write_pages(args, data, ref, cand)
    return EXIT_OK if check.ok else EXIT_VERIFY_FAILED


def _write_pages(args: argparse.Namespace, data: dict[str, Any], ref: Any, cand: Any) -> None:
    """``--html`` and ``--node-data`` of ``surgeon verify`` (the targets were checked before any run)."""
    if args.html is None and args.node_data is None:
        return
    from surgeon.html_report import node_data, render_verify, write_node_data, write_page
    from surgeon.results import model_identity

    if args.html is not None:
        page = data | {"models": {"before": model_identity(ref), "after": model_identity(cand)}}
        write_page(args.html, render_verify(page, str(args.reference), str(args.candidate)))
    if args.node_data is not None:
        write_node_data(args.node_data, node_data(data, cand.proto))


def _added_inputs(ref: Any, cand: Any, contract: Any, feed: dict[str, str]) -> dict[str, Any]:
    """Values for the inputs the candidate added (``--feed factor=3.0``): each is the constant the
    reference computes with (a promoted scale, a promoted initializer). One the user gives no value
    for is an error naming it, unless the candidate gives it a default (an initializer)."""
    import json

    import numpy as np
    from onnx import helper

    from surgeon.verify.feeds import conform
    from surgeon.verify.specs import InputSpec

    renamed = contract.renamed_inputs
    had = {renamed.get(vi.name, vi.name) for vi in ref.proto.graph.input}
    defaults = {t.name for t in cand.proto.graph.initializer}
    added = {vi.name: vi for vi in cand.proto.graph.input if vi.name not in had}
    unknown = sorted(set(feed) - set(added))
    if unknown:
        raise UsageError(
            f"--feed {unknown[0]}: not an input the candidate added; it added: {', '.join(added) or 'none'}"
        )
    values: dict[str, Any] = {}
    for name, vi in added.items():
        if name not in feed:
            if name in defaults:
                continue
            raise UsageError(
                f"input '{name}' of {cand.name} is not in {ref.name}: give the value it stands for, --feed {name}=VALUE"
            )
        try:
            raw = json.loads(feed[name])
        except json.JSONDecodeError:
            raise UsageError(f"--feed {name}={feed[name]}: not a number or a JSON list") from None
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        try:
            value = conform(f"--feed {name}={feed[name]}", InputSpec(name, np.dtype(dtype), ()), np.asarray(raw))
        except (TypeError, ValueError):
            raise UsageError(f"--feed {name}={feed[name]}: not a {dtype} value") from None
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.HasField("shape") and -1 not in dims and int(np.prod(dims)) == value.size:
            value = value.reshape(dims)
        values[name] = value
    return values
