"""The HTML report (``--html``): one self-contained page per run — no network, no external script,
style or font — made from the run's report data (what ``--report`` writes), and the node data
(``--node-data``) Google's Model Explorer colours a graph with.

A run's page shows the recipe, the model's identity, its inputs and outputs, the sizes used and
why, and the device; per pass its verdict, time, node and op counts before and after, every check
with its errors and tolerance, the structural change drawn as a small graph of the changed region
and its neighbours (laid out here: longest-path layers, barycenter ordering, SVG), and where a
check failed (or ``surgeon verify --localize``), the error of each tensor in topological order as
a plot with the first diverging node marked. Many models get an index page, sortable, linking to
each model's page. Every text that came from a model, a recipe or a path is escaped.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from surgeon._version import __version__

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def esc(value: Any) -> str:
    """Text for HTML: escaped (quotes too), control characters (ANSI escapes) shown as ``\\xNN``."""
    text = "" if value is None else str(value)
    return html.escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text), quote=True)


def _num(value: Any, fmt: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, fmt)
    return esc(value)


def _verdict_class(verdict: Any) -> str:
    v = str(verdict or "")
    if v.startswith("ok") or v == "proved (structural)":
        return "ok"
    if v == "FAIL":
        return "fail"
    if v == "proved nothing":
        return "warn"
    return "neutral"


def _badge(verdict: Any) -> str:
    return f'<span class="verdict v-{_verdict_class(verdict)}">{esc(verdict)}</span>'


STYLE = """
:root{--ok:#137333;--fail:#c5221f;--warn:#b06000;--mute:#5f6368;--line:#dadce0}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#202124;background:#fff}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--line)}
h3{font-size:16px;margin:0 0 8px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{width:160px}
.verdict{display:inline-block;padding:0 8px;border-radius:10px;font-weight:600;font-size:12px}
.v-ok{background:#e6f4ea;color:var(--ok)}.v-fail{background:#fce8e6;color:var(--fail)}
.v-warn{background:#fef7e0;color:var(--warn)}.v-neutral{background:#f1f3f4;color:var(--mute)}
section.pass{border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:14px 0}
section.pass.fail{border-color:var(--fail)}
.mute{color:var(--mute)}.plus{color:var(--ok)}.minus{color:var(--fail)}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.cols{display:flex;flex-wrap:wrap;gap:24px}.cols>div{min-width:280px}
svg{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px;background:#fcfcfc}
svg text{font:11px system-ui,sans-serif}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:middle}
th.sort{cursor:pointer}th.sort:after{content:" \\2195";color:var(--mute)}
details{margin:6px 0}summary{cursor:pointer}
"""

STATE_COLORS = {
    "added": ("#e6f4ea", "#137333"),
    "removed": ("#fce8e6", "#c5221f"),
    "rewired": ("#fef7e0", "#b06000"),
    "renamed": ("#e8f0fe", "#1a73e8"),
    "context": ("#ffffff", "#9aa0a6"),
    "io": ("#f1f3f4", "#5f6368"),
}


def _page(title: str, body: str, script: str = "") -> str:
    # no external reference of any kind: the style and the one script are inline
    tail = f"<script>{script}</script>" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main>{tail}</body></html>\n"
    )


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows if v not in (None, "", []))
    return f'<table class="kv">{cells}</table>'


def _lines(items: Sequence[Any]) -> str:
    return "<br>".join(esc(i) for i in items) if items else ""


# --- a run's page -------------------------------------------------------------------------------


def render_run(report: Mapping[str, Any], index_href: str | None = None) -> str:
    """The page of one model's run (a report of kind ``apply``)."""
    name = Path(str(report.get("input") or "model")).name
    ok = bool(report.get("ok"))
    verdict = "ok" if ok else "FAIL"
    parts = []
    if index_href:
        parts.append(f'<p><a href="{esc(index_href)}">&larr; all models</a></p>')
    parts.append(f"<h1>surgeon: {esc(name)} {_badge(verdict)}</h1>")
    if report.get("message"):
        parts.append(f'<p class="minus">{esc(report.get("failure_class"))}: {esc(report.get("message"))}</p>')
    device = report.get("device_line") or (report.get("device") or {}).get("reason")
    parts.append(
        _kv(
            [
                ("recipe", f"<code>{esc(report.get('recipe'))}</code>" if report.get("recipe") else None),
                ("recipe sha256", f"<code>{esc(report.get('recipe_sha256'))}</code>"),
                ("input", f"<code>{esc(report.get('input'))}</code>"),
                ("output", f"<code>{esc(report.get('output'))}</code>" if report.get("output") else "nothing written"),
                ("device", esc(device)),
                ("sizes used", _lines(report.get("sizes") or [])),
                ("input values", _lines(report.get("values") or [])),
                ("onnx checker", esc(report.get("onnx_checker"))),
                ("export", _export(report.get("export"))),
                ("time", f"{float(report.get('seconds') or 0):.2f} s"),
                ("surgeon", esc(report.get("surgeon_version") or __version__)),
            ]
        )
    )
    parts.append(_models_section(report.get("models") or {}))
    steps = report.get("steps") or []
    if steps:
        parts.append("<h2>Passes</h2>")
        parts.append(_steps_table(steps))
        for step in steps:
            parts.append(_step_section(step))
    final = report.get("final_check")
    if final:
        parts.append("<h2>End of pipeline</h2>" + _checks_table(final))
    if report.get("final_divergence"):
        parts.append(_divergence(report["final_divergence"], "end of pipeline"))
    ops = report.get("ops") or {}
    if ops:
        parts.append("<h2>Op counts (whole model)</h2>" + _ops_table(ops.get("before") or {}, ops.get("after") or {}))
    if report.get("traceback"):
        parts.append(f"<h2>Traceback</h2><pre><code>{esc(report['traceback'])}</code></pre>")
    return _page(f"surgeon: {name} ({verdict})", "".join(parts))


def _export(export: Any) -> str:
    """A recipe's ``source:`` export, verified against torch before the first pass."""
    if not isinstance(export, Mapping):
        return ""
    head = f"{esc(export.get('exporter'))}: {'ok' if export.get('ok') else 'FAIL'} against torch"
    return head + "".join(f"<br>{esc(n)}" for n in [*(export.get("notes") or []), *(export.get("warnings") or [])])


def _models_section(models: Mapping[str, Any]) -> str:
    if not models:
        return ""
    cols = []
    for key, title in (("before", "Source model"), ("after", "Result")):
        m = models.get(key)
        if not m:
            continue
        opsets = ", ".join(f"{d} {v}" for d, v in (m.get("opsets") or {}).items())
        ident = _kv(
            [
                ("file", f"<code>{esc(m.get('path'))}</code>" if m.get("path") else None),
                ("sha256", f"<code>{esc(m.get('sha256'))}</code>" if m.get("sha256") else None),
                ("graph", esc(m.get("graph"))),
                ("producer", esc(m.get("producer"))),
                ("IR version", esc(m.get("ir_version"))),
                ("opsets", esc(opsets)),
                ("nodes", esc(m.get("nodes"))),
            ]
        )
        cols.append(f"<div><h3>{title}</h3>{ident}{_io_table(m)}</div>")
    return '<h2>Model</h2><div class="cols">' + "".join(cols) + "</div>"


def _io_table(m: Mapping[str, Any]) -> str:
    rows = []
    for kind in ("inputs", "outputs"):
        for v in m.get(kind) or []:
            shape = v.get("shape")
            dims = "[" + ", ".join(esc(d) for d in shape) + "]" if shape is not None else "?"
            rows.append(f"<tr><td>{kind[:-1]}</td><td><code>{esc(v.get('name'))}</code></td>")
            rows.append(f"<td>{esc(v.get('dtype'))}</td><td><code>{dims}</code></td></tr>")
    head = "<tr><th></th><th>name</th><th>type</th><th>shape</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>" if rows else ""


def _steps_table(steps: Sequence[Mapping[str, Any]]) -> str:
    head = "<tr><th>#</th><th>pass</th><th>verdict</th><th>time</th><th>nodes</th><th>max abs error</th></tr>"
    rows = []
    for s in steps:
        i = s.get("index")
        label = s.get("name") or s.get("pass")
        rows.append(
            f'<tr><td class="n">{esc(i)}</td><td><a href="#pass-{esc(i)}">{esc(label)}</a></td>'
            f'<td>{_badge(s.get("verdict"))}</td><td class="n">{float(s.get("seconds") or 0):.3f} s</td>'
            f'<td class="n">{esc(s.get("nodes_before"))} &rarr; {esc(s.get("nodes_after"))}</td>'
            f'<td class="n">{_num(s.get("max_abs_error"))}</td></tr>'
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _step_section(s: Mapping[str, Any]) -> str:
    i = s.get("index")
    cls = _verdict_class(s.get("verdict"))
    title = esc(s.get("name") or s.get("pass"))
    if s.get("name") and s.get("name") != s.get("pass"):
        title += f' <span class="mute">({esc(s.get("pass"))})</span>'
    out = [
        f'<section class="pass {cls}" id="pass-{esc(i)}" data-verdict="{esc(s.get("verdict"))}">',
        f"<h3>passes[{esc(i)}] {title} {_badge(s.get('verdict'))}</h3>",
        f'<p class="mute">{float(s.get("seconds") or 0):.3f} s; nodes {esc(s.get("nodes_before"))} &rarr; '
        f"{esc(s.get('nodes_after'))}; {'modified the model' if s.get('modified') else 'left the model unchanged'}"
        + (f"; sizes: {esc(', '.join(map(str, s.get('sizes') or [])))}" if s.get("sizes") else "")
        + "</p>",
    ]
    params = s.get("params")
    if isinstance(params, Mapping):
        shown = json.dumps(dict(params), default=str) if params else "its defaults"
        out.append(f'<p class="params">params: <code>{esc(shown)}</code></p>')
    if s.get("notes"):
        out.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in s["notes"]) + "</ul>")
    details = s.get("details")
    if isinstance(details, Mapping) and details:
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{_detail_value(v)}</td></tr>" for k, v in details.items())
        out.append(_details("what the pass marked", f'<table class="kv">{rows}</table>'))
    if s.get("outputs"):
        out.append(_checks_table(s["outputs"]))
    elif s.get("modified"):
        out.append('<p class="mute">no check of its own (not verified at this step)</p>')
    structure = s.get("structure") or {}
    if structure.get("ops_before") is not None and s.get("modified"):
        out.append(_details("op counts before and after", _ops_table(structure["ops_before"], structure["ops_after"])))
    if structure.get("counts"):
        out.append(_structure(structure))
    if s.get("divergence"):
        out.append(_divergence(s["divergence"], f"passes[{i}]"))
    out.append("</section>")
    return "".join(out)


def _details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def _checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    head = (
        "<tr><th>check</th><th>name</th><th>verdict</th><th>max abs</th><th>max rel</th>"
        "<th>atol</th><th>rtol</th><th>shape</th><th>note</th></tr>"
    )
    rows = []
    for c in checks:
        rows.append(
            f"<tr><td>{esc(c.get('kind', 'output'))}</td><td><code>{esc(c.get('name'))}</code></td>"
            f'<td>{_badge(c.get("verdict"))}</td><td class="n">{_num(c.get("max_abs"))}</td>'
            f'<td class="n">{_num(c.get("max_rel"))}</td><td class="n">{_num(c.get("atol"), "g")}</td>'
            f'<td class="n">{_num(c.get("rtol"), "g")}</td><td><code>{esc(c.get("shape"))}</code></td>'
            f"<td>{esc(c.get('note'))}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _ops_table(before: Mapping[str, int], after: Mapping[str, int]) -> str:
    ops = list(dict.fromkeys([*before, *after]))
    changed = [op for op in ops if before.get(op, 0) != after.get(op, 0)]
    shown = ops if len(ops) <= 12 else changed
    rows = []
    for op in shown:
        b, a = before.get(op, 0), after.get(op, 0)
        delta = a - b
        cls = "plus" if delta > 0 else "minus" if delta < 0 else "mute"
        rows.append(
            f'<tr><td>{esc(op)}</td><td class="n">{b}</td><td class="n">{a}</td>'
            f'<td class="n {cls}">{delta:+d}</td></tr>'
        )
    rows.append(
        f'<tr><th>all ({len(ops)} op types)</th><td class="n">{sum(before.values())}</td>'
        f'<td class="n">{sum(after.values())}</td>'
        f'<td class="n">{sum(after.values()) - sum(before.values()):+d}</td></tr>'
    )
    note = (
        "" if shown is ops else f'<p class="mute">{len(ops) - len(shown)} op types with unchanged counts not shown</p>'
    )
    return f"<table><tr><th>op</th><th>before</th><th>after</th><th>change</th></tr>{''.join(rows)}</table>{note}"


def _structure(st: Mapping[str, Any]) -> str:
    counts = st.get("counts") or {}
    words = [f"{counts.get(k, 0)} {k.replace('_', ' ')}" for k in ("added", "removed", "rewired", "renamed")]
    if counts.get("tensors_renamed"):
        words.append(f"{counts['tensors_renamed']} tensors renamed")
    out = [f"<p><b>Structural change:</b> nodes {', '.join(words)}</p>"]
    lists = []
    for key in ("added", "removed", "rewired"):
        names = st.get(key) or []
        if names:
            more = counts.get(key, 0) - len(names)
            items = ", ".join(f"<code>{esc(n)}</code>" for n in names) + (f" and {more} more" if more > 0 else "")
            lists.append(f"<tr><th>{key}</th><td>{items}</td></tr>")
    pairs = [("renamed", st.get("renamed") or []), ("tensors renamed", st.get("tensors_renamed") or [])]
    for title, renames in pairs:
        if renames:
            cells = ", ".join(f"<code>{esc(a)}</code> &rarr; <code>{esc(b)}</code>" for a, b in renames)
            lists.append(f"<tr><th>{title}</th><td>{cells}</td></tr>")
    if lists:
        out.append(_details("which nodes", f'<table class="kv">{"".join(lists)}</table>'))
    region = st.get("region") or {}
    if region.get("nodes"):
        out.append(graph_svg(region))
    return "".join(out)


# --- the changed region as a graph ----------------------------------------------------------------


def layout(ids: Sequence[str], edges: Sequence[tuple[str, str]], sweeps: int = 4) -> dict[str, tuple[int, int]]:
    """(layer, position in layer) of each node: longest-path layers (a node one layer below its
    deepest producer; edges closing a cycle are ignored), then barycenter ordering, sweeping down
    and up, each node placed at the mean position of its neighbours in the layer before."""
    succ: dict[str, list[str]] = {i: [] for i in ids}
    pred: dict[str, list[str]] = {i: [] for i in ids}
    for a, b in edges:
        if a in succ and b in succ and a != b:
            succ[a].append(b)
            pred[b].append(a)
    indeg = {i: len(pred[i]) for i in ids}
    order = [i for i in ids if indeg[i] == 0]
    layer = dict.fromkeys(ids, 0)
    k = 0
    while k < len(order):
        n = order[k]
        k += 1
        for m in succ[n]:
            layer[m] = max(layer[m], layer[n] + 1)
            indeg[m] -= 1
            if indeg[m] == 0:
                order.append(m)
    seen = set(order)
    for n in ids:  # nodes on a cycle: below everything placed so far
        if n not in seen:
            layer[n] = max(layer.values(), default=0) + 1
            seen.add(n)
    layers: dict[int, list[str]] = {}
    for n in ids:
        layers.setdefault(layer[n], []).append(n)
    pos = {n: float(k) for row in layers.values() for k, n in enumerate(row)}
    depth = max(layers, default=0)
    for sweep in range(sweeps):
        down = sweep % 2 == 0
        rng = range(1, depth + 1) if down else range(depth - 1, -1, -1)
        for li in rng:
            row = layers.get(li, [])
            nbrs = pred if down else succ

            def bary(n: str, nbrs: Mapping[str, list[str]] = nbrs) -> float:
                near = [pos[m] for m in nbrs[n] if m in pos]
                return sum(near) / len(near) if near else pos[n]

            row.sort(key=bary)
            for k, n in enumerate(row):
                pos[n] = float(k)
    return {n: (layer[n], int(pos[n])) for n in ids}


def graph_svg(region: Mapping[str, Any]) -> str:
    """The changed region as an SVG graph: nodes coloured by what happened to them."""
    nodes = region.get("nodes") or []
    edges = [(str(a), str(b), str(t)) for a, b, t in region.get("edges") or []]
    ids = [str(n["id"]) for n in nodes]
    place = layout(ids, [(a, b) for a, b, _ in edges])
    w, h, gx, gy = 150, 34, 24, 40
    widths: dict[int, int] = {}
    for lay, p in place.values():
        widths[lay] = max(widths.get(lay, 0), p + 1)
    cols = max(widths.values(), default=1)
    rows = max((lay for lay, _ in place.values()), default=0) + 1
    width = cols * (w + gx) + gx
    height = rows * (h + gy) + gy

    def xy(n: str) -> tuple[float, float]:
        lay, p = place[n]
        offset = (cols - widths[lay]) * (w + gx) / 2
        return gx + offset + p * (w + gx), gy / 2 + lay * (h + gy)

    out = [
        f'<svg class="graph" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#80868b"/></marker></defs>',
    ]
    for a, b, t in edges:
        if a not in place or b not in place:
            continue
        (x1, y1), (x2, y2) = xy(a), xy(b)
        x1, y1, x2, y2 = x1 + w / 2, y1 + h, x2 + w / 2, y2
        mid = (y1 + y2) / 2
        out.append(
            f'<path d="M{x1:.0f},{y1:.0f} C{x1:.0f},{mid:.0f} {x2:.0f},{mid:.0f} {x2:.0f},{y2:.0f}" '
            f'fill="none" stroke="#80868b" marker-end="url(#arrow)"><title>{esc(t)}</title></path>'
        )
    for n in nodes:
        nid = str(n["id"])
        x, y = xy(nid)
        state = str(n.get("state") or "context")
        fill, stroke = STATE_COLORS.get(state, STATE_COLORS["context"])
        dash = ' stroke-dasharray="4 3"' if state == "removed" else ""
        rx = 14 if state == "io" else 4
        op, name = str(n.get("op") or ""), str(n.get("name") or "")
        out.append(
            f'<g class="node {esc(state)}"><title>{esc(state)}: {esc(op)} {esc(name)}</title>'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" stroke="{stroke}"'
            f'{dash} stroke-width="1.5"/>'
            f'<text x="{x + w / 2:.0f}" y="{y + 14:.0f}" text-anchor="middle" font-weight="600">{esc(_clip(op, 22))}'
            f'</text><text x="{x + w / 2:.0f}" y="{y + 27:.0f}" text-anchor="middle" fill="#5f6368">'
            f"{esc(_clip(name, 24))}</text></g>"
        )
    out.append("</svg>")
    legend = "".join(
        f'<span><i class="sw" style="background:{f};border:1px solid {s}"></i>{k}</span>'
        for k, (f, s) in STATE_COLORS.items()
    )
    more = region.get("omitted") or 0
    note = f'<p class="mute">{more} more changed nodes not drawn</p>' if more else ""
    return f'<div class="legend">{legend}</div>{"".join(out)}{note}'


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


# --- the error of each tensor ---------------------------------------------------------------------


def _divergence(div: Mapping[str, Any], where: str) -> str:
    out = ["<h3>Where the error enters</h3>"]
    if div.get("tensor"):
        ins = ", ".join(f"<code>{esc(k)}</code> {_num(v)}" for k, v in (div.get("inputs") or {}).items())
        out.append(
            f"<p>{esc(where)}: first divergence at node <code>{esc(div.get('node'))}</code> ({esc(div.get('op'))}), "
            f"output <code>{esc(div.get('tensor'))}</code> shape {esc(div.get('shape'))}: max abs "
            f"{_num(div.get('max_abs'))}, max rel {_num(div.get('max_rel'))}"
            f"{' (' + esc(div.get('note')) + ')' if div.get('note') else ''}; its inputs' error: "
            f"{ins or 'none compared'}</p>"
        )
    else:
        out.append(
            f"<p>{esc(where)}: no tensor of both models differs beyond tolerance "
            f"({esc(div.get('compared'))} compared)</p>"
        )
    if div.get("non_finite"):
        out.append(f'<p class="minus">first NaN/Inf from {esc(div["non_finite"])}</p>')
    trace = div.get("trace") or []
    if trace:
        out.append(error_plot(trace, str(div.get("tensor") or "")))
    return "".join(out)


def error_plot(trace: Sequence[Mapping[str, Any]], first: str = "") -> str:
    """Max abs error of each tensor in topological order (log scale), failing tensors in red, the
    first diverging one marked."""
    width, height, left, bottom, top, right = 900, 260, 60, 40, 16, 16
    values = [float(t.get("max_abs") or 0.0) for t in trace]
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    lo = math.floor(math.log10(min(finite))) if finite else -8
    hi = math.ceil(math.log10(max(finite))) if finite else 0
    lo = min(lo, hi - 1)
    n = len(values)

    def x(i: int) -> float:
        return left + (width - left - right) * (i / max(1, n - 1))

    def y(v: float) -> float:
        if not math.isfinite(v):
            return top
        lv = math.log10(v) if v > 0 else lo
        return top + (height - top - bottom) * (1 - (max(lo, min(hi, lv)) - lo) / (hi - lo))

    out = [
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img"><title>max abs error per tensor, topological order</title>'
    ]
    for e in range(lo, hi + 1):
        yy = y(10.0**e)
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#5f6368">1e{e}</text>'
        )
    out.append(
        f'<text x="{(width + left) / 2:.0f}" y="{height - 8}" text-anchor="middle" fill="#5f6368">'
        f"tensors in topological order ({n} compared); max abs error, log scale</text>"
    )
    line = " ".join(f"{'M' if i == 0 else 'L'}{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
    out.append(f'<path d="{line}" fill="none" stroke="#1a73e8" stroke-width="1.2"/>')
    bad = [i for i, t in enumerate(trace) if not t.get("ok", True)]
    if bad:
        dots = "".join(f"M{x(i) - 2:.1f},{y(values[i]):.1f}h4" for i in bad)
        out.append(f'<path d="{dots}" stroke="#c5221f" stroke-width="4" stroke-linecap="round"/>')
    mark = next((i for i, t in enumerate(trace) if t.get("tensor") == first), None) if first else None
    if mark is not None:
        t = trace[mark]
        xx = x(mark)
        anchor = "end" if xx > width * 0.7 else "start"
        dx = -6 if anchor == "end" else 6
        out.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{height - bottom}" stroke="#c5221f" '
            f'stroke-dasharray="4 3"/><text x="{xx + dx:.1f}" y="{top + 12}" text-anchor="{anchor}" '
            f'fill="#c5221f">first divergence: {esc(_clip(str(t.get("node") or ""), 40))} '
            f"({esc(t.get('op'))})</text>"
        )
    if n <= 400:  # hover for each point (a large model's plot stays small)
        for i, t in enumerate(trace):
            out.append(
                f'<circle cx="{x(i):.1f}" cy="{y(values[i]):.1f}" r="3" fill="transparent"><title>'
                f"{esc(t.get('node'))} ({esc(t.get('op'))}) {esc(t.get('tensor'))}: {_num(values[i])}</title></circle>"
            )
    out.append("</svg>")
    return "".join(out)


# --- surgeon verify -----------------------------------------------------------------------------


def render_verify(report: Mapping[str, Any], reference: str, candidate: str) -> str:
    """The page of ``surgeon verify``'s comparison (a report of kind ``verify``)."""
    ok = bool(report.get("ok"))
    verdict = "ok" if ok else "FAIL"
    parts = [
        f"<h1>surgeon verify {_badge(verdict)}</h1>",
        _kv(
            [
                ("reference", f"<code>{esc(reference)}</code>"),
                ("candidate", f"<code>{esc(candidate)}</code>"),
                ("device", esc(report.get("device"))),
                ("sizes used", _lines(report.get("sizes") or [])),
                ("input values", _lines(report.get("values") or [])),
                ("surgeon", esc(report.get("surgeon_version") or __version__)),
            ]
        ),
        _models_section(report.get("models") or {}),
        f'<section class="pass {_verdict_class(verdict)}" data-verdict="{verdict}">'
        f"<h3>comparison {_badge(verdict)}</h3>",
        _checks_table(report.get("outputs") or []),
    ]
    if report.get("divergence"):
        parts.append(_divergence(report["divergence"], "candidate"))
    parts.append("</section>")
    return _page(f"surgeon verify ({verdict})", "".join(parts))


# --- many models ----------------------------------------------------------------------------------

SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th.sort").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var dir = th.getAttribute("data-dir") === "asc" ? -1 : 1;
      th.setAttribute("data-dir", dir === 1 ? "asc" : "desc");
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-key"), y = b.cells[col].getAttribute("data-key");
        var nx = parseFloat(x), ny = parseFloat(y);
        if (!isNaN(nx) && !isNaN(ny)) { return (nx - ny) * dir; }
        return x < y ? -dir : x > y ? dir : 0;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def render_index(entries: Sequence[tuple[Mapping[str, Any], str | None]], recipe: str | None = None) -> str:
    """The index of a many-models run: each model's verdict, passes, time and message, sortable by
    any column, linking to each model's page (``href`` None: no page)."""
    failed = sum(not r.get("ok") for r, _ in entries)
    head = "".join(
        f'<th class="sort">{c}</th>' for c in ("model", "verdict", "passes", "failed checks", "time (s)", "message")
    )
    rows = []
    for r, href in entries:
        name = Path(str(r.get("input"))).name
        ok = bool(r.get("ok"))
        verdict = "ok" if ok else str(r.get("failure_class") or "FAIL")
        steps = r.get("steps") or []
        fails = sum(1 for s in steps if s.get("verdict") == "FAIL")
        link = f'<a href="{esc(href)}">{esc(name)}</a>' if href else esc(name)
        rows.append(
            f'<tr data-verdict="{esc(verdict)}"><td data-key="{esc(name)}">{link}</td>'
            f'<td data-key="{0 if ok else 1}">{_badge("ok" if ok else "FAIL")} '
            f"{'' if ok else esc(verdict)}</td>"
            f'<td data-key="{len(steps)}" class="n">{len(steps)}</td><td data-key="{fails}" class="n">{fails}</td>'
            f'<td data-key="{float(r.get("seconds") or 0):.3f}" class="n">{float(r.get("seconds") or 0):.2f}</td>'
            f'<td data-key="{esc(r.get("message") or "")}">{esc(r.get("message") or r.get("output") or "")}</td></tr>'
        )
    body = (
        f"<h1>surgeon: {len(entries)} models, {failed} failed</h1>"
        + (f"<p>recipe <code>{esc(recipe)}</code></p>" if recipe else "")
        + '<p class="mute">click a column to sort</p>'
        + f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    return _page(f"surgeon: {len(entries)} models, {failed} failed", body, SORT_SCRIPT)


# --- Model Explorer node data -----------------------------------------------------------------------

MARK_COLOR = "#1a73e8"
"""Label colour of the nodes a pass marks (e.g. kept in float32) in the node data."""


def node_data(report: Mapping[str, Any], model: Any = None) -> dict[str, Any]:
    """Model Explorer node data (``ModelNodeData``'s JSON: ``{graph id: GraphNodeData}``, the graph
    id the ONNX adapter gives the main graph, its name). ``results`` are keyed as that adapter
    keys nodes: by node name (an unnamed node by its output tensor's name, which Model Explorer
    matches to the node's output), and a graph output also as ``[value] <name>`` (the adapter
    draws graph outputs as nodes of their own). ``value``: the max abs error of the node's output
    as localization measured it (the last one the run made: the end of the pipeline, else the
    last failing pass, else ``surgeon verify --localize``), coloured on a white-to-red gradient.
    Nodes a pass lists in its report's ``details`` (``{"kept_float32": [node, ...]}``) get a blue
    label (value 0 where no error was measured). ``model``: the onnx ModelProto the data is for
    (its graph's name and outputs; default: what the report says of the result)."""
    results: dict[str, dict[str, Any]] = {}
    div = report.get("final_divergence") or report.get("divergence")
    if not div:
        for s in reversed(report.get("steps") or []):
            if s.get("divergence"):
                div = s["divergence"]
                break
    after = (report.get("models") or {}).get("after") or {}
    if model is not None:
        graph_id = model.graph.name
        outputs = {o.name for o in model.graph.output}
    else:
        graph_id = str(after.get("graph") or "")
        outputs = {str(o.get("name")) for o in after.get("outputs") or []}
    node_ids = adapter_node_ids(model) if model is not None else {}
    for t in (div or {}).get("trace") or []:
        v = float(t.get("max_abs") or 0.0)
        entry = {"value": v if math.isfinite(v) else 3.4e38}
        key = str(t.get("node") or node_ids.get(t["tensor"]) or t["tensor"])
        results[key] = max(results.get(key, entry), entry, key=lambda e: e["value"])
        if t["tensor"] in outputs:
            results[f"[value] {t['tensor']}"] = dict(entry)
    for s in report.get("steps") or []:
        details = s.get("details") or {}
        if not isinstance(details, Mapping):
            continue
        for name in marked_nodes(details, model):
            results.setdefault(name, {"value": 0.0})["textColor"] = MARK_COLOR
    graph = {"results": results, "gradient": [{"stop": 0, "bgColor": "#ffffff"}, {"stop": 1, "bgColor": "#d93025"}]}
    return {graph_id: graph}  # the adapter's id for it: its name, "" when it has none


def adapter_node_ids(model: Any) -> dict[str, str]:
    """Output tensor name -> the id Model Explorer's ONNX adapter (model-explorer-onnx) gives the
    node of the main graph that makes it: its name, or for an unnamed node the name onnx_ir's
    NameFixPass assigns (the adapter runs that pass first). Without onnx_ir (it comes with
    onnxscript), unnamed nodes stay keyed by their output tensor's name."""
    nodes = list(model.graph.node)
    names = [n.name for n in nodes]
    if not all(names):
        try:
            import onnx_ir
            from onnx_ir.passes.common import NameFixPass
        except ImportError:
            pass
        else:
            from surgeon.ir.walk import light_copy

            fixed = onnx_ir.serde.deserialize_model(light_copy(model, 0, output_shapes=False))
            NameFixPass()(fixed)
            named = [n.name or "" for n in fixed.graph]
            if len(named) == len(nodes):
                names = [old or new for old, new in zip(names, named)]
    return {o: name for n, name in zip(nodes, names) if name for o in n.output if o}


def marked_nodes(details: Mapping[str, Any], model: Any = None) -> list[str]:
    """The nodes a pass lists in its ``details``: entries ``{"node": name, ...}`` (to-fp16's
    ``kept_float32``), and plain strings that name a node of ``model`` (when given; a log line
    such as a search round is not a node)."""
    names = {n.name for n in model.graph.node} if model is not None else set()
    out: list[str] = []
    for entries in details.values():
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, Mapping) and e.get("node") is not None:
                out.append(str(e["node"]))
            elif isinstance(e, str) and e in names:
                out.append(e)
    return out


def _detail_value(v: Any) -> str:
    """One value of a pass's ``details`` as HTML: node entries as name (op): why, lists as code,
    mappings as JSON."""
    if isinstance(v, list):
        return ", ".join(
            f"<code>{esc(x['node'])}</code>"
            + (f" ({esc(x['op'])})" if x.get("op") else "")
            + (f": {esc(x['why'])}" if x.get("why") else "")
            if isinstance(x, Mapping) and "node" in x
            else f"<code>{esc(x if isinstance(x, str) else json.dumps(x, default=str))}</code>"
            for x in v
        )
    if isinstance(v, Mapping):
        return f"<code>{esc(json.dumps(v, default=str))}</code>"
    return esc(v)


def write_page(path: Path, text: str) -> None:
    """Write a page (or node data) atomically, through the one file writer."""
    from surgeon.ir.files import write_atomic

    write_atomic(path, text.encode("utf-8"))


def write_node_data(path: Path, data: Mapping[str, Any]) -> None:
    write_page(path, json.dumps(dict(data), indent=1) + "\n")
