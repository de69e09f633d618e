"""``surgeon doctor`` in the terminal: one block per finding, nodes and fix included."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from surgeon.doctor.findings import Diagnosis

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def show_diagnosis(console: Console, diag: Diagnosis | dict[str, Any], verbose: bool = False) -> None:
    """One model's findings (a Diagnosis, or its ``as_dict()`` from a worker process)."""
    from rich.markup import escape

    data = diag if isinstance(diag, dict) else diag.as_dict()
    model = str(data["model"])
    if data.get("failure_class"):
        console.print(
            f"[bold red]{escape(model)}: doctor failed ({data['failure_class']}): {escape(data.get('message', ''))}[/bold red]"
        )
        return
    if not data["findings"]:
        console.print(f"[green]{escape(model)}: nothing found[/green]")
        return
    counts = data["counts"]
    summary = ", ".join(f"{counts[k]} {k}" for k in ("error", "warning", "info") if counts.get(k))
    console.print(f"[bold]{escape(model)}[/bold]: {summary} ({counts['fixable']} fixable)")
    for f in data["findings"]:
        style = STYLE[f["severity"]]
        console.print(f"  [{style}]{f['severity']}[/{style}] {escape(f['code'])}: {escape(f['message'])}")
        if f["fix"]:
            console.print(f"      fix: {escape(f['fix'])} {escape(str(f['params'] or {}))}", highlight=False)
        elif f["recipe"]:
            console.print(f"      fix: recipe {escape(str(f['recipe']))}", highlight=False)
        if f["advice"] and (verbose or not f["fixable"]):
            console.print(f"      {escape(f['advice'])}", highlight=False)
        if verbose and f["nodes"]:
            console.print(f"      nodes: {escape(', '.join(f['nodes']))}", highlight=False)
