"""``surgeon doctor`` in the terminal: one block per finding, nodes and fix included."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from surgeon.doctor import Diagnosis

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def show_diagnosis(console: Console, diag: Diagnosis, verbose: bool = False) -> None:
    from rich.markup import escape

    if not diag.findings:
        console.print(f"[green]{escape(diag.model)}: nothing found[/green]")
        return
    counts = diag.counts()
    summary = ", ".join(f"{counts[k]} {k}" for k in ("error", "warning", "info") if counts.get(k))
    console.print(f"[bold]{escape(diag.model)}[/bold]: {summary} ({counts['fixable']} fixable)")
    for f in diag.findings:
        style = STYLE[f.severity]
        console.print(f"  [{style}]{f.severity}[/{style}] {escape(f.code)}: {escape(f.message)}")
        if f.fix:
            console.print(f"      fix: {escape(f.fix)} {escape(str(f.params or {}))}", highlight=False)
        elif f.recipe:
            console.print(f"      fix: recipe {escape(str(f.recipe))}", highlight=False)
        if f.advice and (verbose or not f.fixable):
            console.print(f"      {escape(f.advice)}", highlight=False)
        if verbose and f.nodes:
            console.print(f"      nodes: {escape(', '.join(f.nodes))}", highlight=False)
