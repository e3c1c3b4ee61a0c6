"""``curate_report.html``: one self-contained page (no script, no network) with what `mmssl curate` kept and
dropped per filter, examples of each, and the score histograms (inline SVG)."""

from __future__ import annotations

import html
from typing import Any

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>mmssl curate: {title}</title><style>
body{{font:14px system-ui,sans-serif;margin:2em;max-width:960px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}td.n{{text-align:right}}
.k{{fill:#3a7d44}}.d{{fill:#c0392b}}</style></head><body><h1>mmssl curate</h1><p>{title}</p>{body}</body></html>
"""


def _histogram_svg(name: str, hist: dict[str, Any], width: int = 640, height: int = 180) -> str:
    edges, kept, dropped = hist["edges"], hist["kept"], hist["dropped"]
    bins = len(kept)
    top = max(max(k + d for k, d in zip(kept, dropped)), 1)
    bar = width / bins
    parts = []
    for i, (k, d) in enumerate(zip(kept, dropped)):
        x = i * bar
        hk, hd = height * k / top, height * d / top
        parts.append(f'<rect class="k" x="{x:.1f}" y="{height - hk:.1f}" width="{bar - 1:.1f}" height="{hk:.1f}"/>')
        parts.append(f'<rect class="d" x="{x:.1f}" y="{height - hk - hd:.1f}" width="{bar - 1:.1f}" '
                     f'height="{hd:.1f}"/>')
    span = edges[-1] - edges[0] or 1.0
    cut = width * (hist["cut"] - edges[0]) / span
    parts.append(f'<line x1="{cut:.1f}" x2="{cut:.1f}" y1="0" y2="{height}" stroke="#000" stroke-dasharray="4"/>')
    return (f"<h3>{html.escape(name)}</h3><svg width='{width}' height='{height + 4}'>{''.join(parts)}</svg>"
            f"<p>{edges[0]:.3f} … {edges[-1]:.3f}; dashed: the cut ({hist['cut']:.4f}); green kept, red dropped; "
            f"highest bar {top} samples</p>")


def render(summary: dict[str, Any], examples: dict[str, list[dict[str, str]]], histograms: dict[str, Any],
           shown: int = 10) -> str:
    read = max(summary["read"], 1)
    counts = [("kept", summary["kept"])] + [(f"dropped: {name}", n) for name, n in summary["dropped"].items()]
    rows = [f"<tr><td>{html.escape(what)}</td><td class='n'>{n}</td><td class='n'>{n / read:.1%}</td></tr>"
            for what, n in counts]
    body = [f"<table><tr><th></th><th>samples</th><th>of {summary['read']} read</th></tr>{''.join(rows)}</table>"]
    body += [f"<p><b>Warning:</b> {html.escape(w)}</p>" for w in summary.get("warnings", [])]
    titles = {"clip_score": "CLIP score (cosine of image and caption)",
              "semantic_dedup": "semantic dedup: each sample's highest cosine to an earlier kept one of its cluster"}
    body += [_histogram_svg(titles.get(name, name), hist) for name, hist in histograms.items()]
    for name, items in examples.items():
        lines = "".join(f"<tr><td>{html.escape(e['key'])}</td><td>{html.escape(e['reason'])}</td></tr>"
                        for e in items[:shown])
        body.append(f"<h3>dropped by {html.escape(name)} (first {min(shown, len(items))})</h3><table>{lines}</table>")
    title = f"{html.escape(summary['output'])}: kept {summary['kept']} of {summary['read']} ({summary['kind']})"
    return PAGE.format(title=title, body="".join(body))
