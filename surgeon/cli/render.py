"""The one renderer: every line surgeon shows on a terminal goes through this module (rich).

Whatever came from a model, a recipe or a path is shown inert (:func:`inert`): control characters
as escapes (``\\x1b``, ``\\n``, ``\\0``), so an error stays one line and no model can move the cursor,
set the window title or clear the screen; rich markup in it is escaped (:func:`markup`), so a
producer named ``[/]`` is text, not a markup error. ``--json`` and ``--report`` hold the original
strings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from surgeon.errors import inert

if TYPE_CHECKING:
    from rich.console import Console

    from surgeon.results import PipelineResult, StepReport
    from surgeon.verify.compare import StepCheck


def markup(text: object) -> str:
    """``text`` made inert and its rich markup escaped: safe inside a markup string."""
    from rich.markup import escape

    return escape(inert(text))


_e = markup


def make_console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True, emoji=False)  # ':smile:' in a name stays text


def say(console: Console, text: object) -> None:
    """One plain line (no markup), made inert."""
    console.print(inert(text), markup=False, highlight=False)


def error_line(text: object) -> None:
    """One line on stderr, made inert: an error stays one line whatever names it holds."""
    say(make_console(stderr=True), text)


def fmt_err(value: float | None) -> str:
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.2e}"


def step_verdict(verdict: object, check: StepCheck | None) -> str:
    """A step's verdict as markup: a step whose probes proved nothing (accepted) is never a plain
    green "ok" ("ok, 1 proved nothing" in yellow)."""
    from surgeon.verify.compare import Verdict

    text = str(verdict)
    unproved = sum(o.verdict is Verdict.PROVED_NOTHING for o in check.outputs) if check is not None else 0
    if text == "ok" and unproved:
        return f"[yellow]ok, {unproved} proved nothing[/yellow]"
    style = {"ok": "green", "proved (structural)": "green", "FAIL": "bold red"}.get(text, "dim")
    return f"[{style}]{_e(text)}[/{style}]"


def progress_line(console: Console, step: StepReport, total: int, verbose: bool = False) -> None:
    err = fmt_err(step.check.max_abs) if step.check else "-"
    console.print(
        f"\\[{step.index + 1}/{total}] [bold]{_e(step.label)}[/bold]  "
        f"{'modified' if step.modified else 'unchanged'}  nodes {step.nodes_before}→{step.nodes_after}  "
        f"{step.seconds:.2f}s  max err {err}  {step_verdict(step.verdict, step.check)}",
        highlight=False,
    )
    if verbose:
        for note in step.notes:
            say(console, f"    {note}")
    if step.check is not None:
        show_outputs(console, step.check, only_failures=not verbose, indent="    ")
        if step.check.divergence is not None:
            say(console, f"    {step.check.divergence.line()}")


def show_outputs(console: Console, check: StepCheck, only_failures: bool = False, indent: str = "") -> None:
    """One line per check; ``only_failures`` (the default output) still shows every probe that
    proved nothing, in yellow: it is never shown as ok."""
    from surgeon.verify.compare import Verdict

    for o in check.outputs:
        unproved = o.verdict is Verdict.PROVED_NOTHING
        if only_failures and o.ok and not unproved:
            continue
        style = "yellow" if unproved else "green" if o.ok else "bold red"
        tail = f"  ({_e(o.note)})" if o.note else ""
        why = f" ({_e(o.tolerance)})" if getattr(o, "tolerance", "") else ""
        if o.kind == "proof":  # shown without running: no shape, no error
            console.print(f"{indent}{_e(o.name)}: [{style}]{o.verdict}[/{style}]{tail}", highlight=False)
            continue
        console.print(
            f"{indent}{_e(o.name)}: shape {_e(list(o.shape))}  max abs {fmt_err(o.max_abs)}  max rel "
            f"{fmt_err(o.max_rel)}  "
            f"tol rtol={o.rtol:g} atol={o.atol:g}{why}  [{style}]{o.verdict}[/{style}]{tail}",
            highlight=False,
        )


def summary_table(console: Console, result: PipelineResult) -> None:
    from rich.table import Table

    table = Table(title="surgeon summary", title_justify="left")
    for col in ("#", "pass", "modified", "nodes", "time", "max error", "verdict"):
        table.add_column(col, justify="right" if col in ("#", "time", "max error") else "left")
    if result.export is not None:  # the recipe's source: torch against onnxruntime, before the passes
        errs = [o["max_abs"] for o in result.export["outputs"] if o["max_abs"] is not None]
        style = "green" if result.export["ok"] else "bold red"
        table.add_row(
            "0",
            _e(f"export ({result.export['exporter']})"),
            "",
            "",
            "",
            fmt_err(max(errs)) if errs else "-",
            f"[{style}]{'ok' if result.export['ok'] else 'FAIL'}[/{style}]",
        )
    for s in result.steps:
        table.add_row(
            str(s.index + 1),
            _e(s.label),
            "yes" if s.modified else "no",
            f"{s.nodes_before}→{s.nodes_after}",
            f"{s.seconds:.2f}s",
            fmt_err(s.check.max_abs) if s.check else "-",
            step_verdict(s.verdict, s.check),
        )
    if result.final_check is not None:
        table.add_row(
            "",
            "end of pipeline",
            "",
            "",
            "",
            fmt_err(result.final_check.max_abs),
            step_verdict("ok" if result.final_check.ok else "FAIL", result.final_check),
        )
    console.print(table)
    if result.final_check is not None:
        show_outputs(console, result.final_check, indent="  ")
    if result.device:
        say(console, f"verified on {result.device}")
    show_sizes(console, result.sizes, result.values)
    for s in result.steps:
        if s.check is not None and s.check.sizes and s.check.sizes != result.sizes:
            say(console, f"  after {s.label}: sizes " + ", ".join(s.check.sizes))


def show_sizes(console: Console, sizes: list[str], values: list[str] | None = None) -> None:
    """The sizes chosen for symbolic dims and the values chosen for integer inputs, with why."""
    if sizes:
        say(console, "sizes: " + ", ".join(sizes))
    if values:
        say(console, "integer inputs: " + "; ".join(values))


def show_inspect(console: Console, info: dict[str, Any]) -> None:
    from rich.table import Table

    console.print(
        f"[bold]{_e(info['file'])}[/bold]  ir_version {_e(info['ir_version'])}  producer {_e(info['producer'] or '-')}",
        highlight=False,
    )
    say(console, "opsets: " + ", ".join(f"{k} {v}" for k, v in info["opsets"].items()))
    for kind in ("inputs", "outputs"):
        table = Table(title=kind, title_justify="left")
        for col in ("name", "dtype", "shape"):
            table.add_column(col)
        for io in info[kind]:
            name = _e(io["name"]) + (" (has default)" if io.get("default") else "")
            table.add_row(name, _e(io["dtype"]), _e("[" + ", ".join(map(str, io["shape"])) + "]"))
        console.print(table)
    say(console, f"nodes: {info['nodes']}  " + ", ".join(f"{k} {v}" for k, v in info["ops"].items()))
    ini = info["initializers"]
    say(
        console,
        f"weights: {ini['count']} tensors, {ini['inline_bytes']:,} bytes inline, "
        f"{ini['external_bytes']:,} bytes external",
    )
    if info["external_data_files"]:
        say(console, "external data files: " + ", ".join(info["external_data_files"]))
    if info["functions"]:
        say(console, "functions: " + ", ".join(info["functions"]))
    for r in info["resize_nodes"]:
        parts = []
        for role in ("roi", "scales", "sizes"):
            if role in r:
                src = r[role]
                desc = src["from"] + (f" '{src['tensor']}'" if src.get("tensor") else "")
                if src.get("value") is not None:
                    desc += f" = {src['value']}"
                parts.append(f"{role}: {desc}")
        say(console, f"{r['op']} '{r['node']}': " + "; ".join(parts) + f"  {r['attributes']}")


def op_table(console: Console, before: dict[str, int], after: dict[str, int], changed_only: bool = False) -> None:
    """Op counts before and after, with the difference; unchanged ops dimmed (or left out)."""
    from rich.table import Table

    table = Table(title="ops", title_justify="left")
    for col in ("op", "before", "after", "change"):
        table.add_column(col, justify="left" if col == "op" else "right")
    ops = list(dict.fromkeys([*before, *after]))
    for op in ops:
        b, a = before.get(op, 0), after.get(op, 0)
        if changed_only and a == b:
            continue
        style = "" if a != b else "dim"
        change = f"{a - b:+d}" if a != b else ""
        table.add_row(_e(op), str(b), str(a), change, style=style)
    table.add_row(
        "total",
        str(sum(before.values())),
        str(sum(after.values())),
        f"{sum(after.values()) - sum(before.values()):+d}",
        style="bold",
    )
    console.print(table)


STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
"""The style of each doctor finding's severity."""


def show_diagnosis(console: Console, diag: Any, verbose: bool = False) -> None:
    """``surgeon doctor`` in the terminal: one model's findings, one block each with its fix (and,
    with ``verbose``, its advice and nodes). ``diag`` is a Diagnosis, or its ``as_dict()`` from a
    worker process."""
    data = diag if isinstance(diag, dict) else diag.as_dict()
    model = _e(data["model"])
    if data.get("failure_class"):
        console.print(
            f"[bold red]{model}: doctor failed ({_e(data['failure_class'])}): {_e(data.get('message', ''))}[/bold red]"
        )
        return
    if not data["findings"]:
        console.print(f"[green]{model}: nothing found[/green]")
        return
    counts = data["counts"]
    summary = ", ".join(f"{counts[k]} {k}" for k in ("error", "warning", "info") if counts.get(k))
    console.print(f"[bold]{model}[/bold]: {summary} ({counts['fixable']} fixable)")
    for f in data["findings"]:
        style = STYLE.get(f["severity"], "bold")
        console.print(f"  [{style}]{_e(f['severity'])}[/{style}] {_e(f['code'])}: {_e(f['message'])}")
        if f["fix"]:
            say(console, f"      fix: {f['fix']} {f['params'] or {}}")
        elif f["recipe"]:
            say(console, f"      fix: recipe {f['recipe']}")
        if f["advice"] and (verbose or not f["fixable"]):
            say(console, f"      {f['advice']}")
        if verbose and f["nodes"]:
            say(console, f"      nodes: {', '.join(f['nodes'])}")
