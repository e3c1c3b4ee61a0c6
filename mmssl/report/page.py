"""Write the report: ``index.html`` with every figure embedded (base64 PNG: the page is one file to send or
open anywhere) and the same PNGs beside it. The report folder is mmssl's own (a marker file says so): a
folder that holds anything else is refused, and a rerun replaces only the report's files."""

from __future__ import annotations

import base64
import html
import os
import time
from pathlib import Path

from mmssl.errors import MmsslError
from mmssl.report.figures import Figure, all_figures
from mmssl.report.runs import Run, load_run

MARKER = ".mmssl-report"
HEADLINES = ("perplexity", "recall@1", "sts_spearman", "zero_shot_top1", "knn_top1", "linear_probe_top1",
             "caption_perplexity", "caption_names_class")


def _claim(folder: Path) -> None:
    if folder.exists():
        if not folder.is_dir():
            raise MmsslError(f"--out {str(folder)!r} is a file; give a folder for the report")
        entries = [p.name for p in folder.iterdir()]
        if entries and MARKER not in entries:
            raise MmsslError(f"--out {str(folder)!r} is not empty and was not written by mmssl report (it holds "
                             f"{', '.join(sorted(entries)[:3])}); choose a new or empty folder")
        for old in folder.iterdir():  # the previous report's own files only
            if old.suffix in (".png", ".html") and old.is_file():
                old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("written by mmssl report\n", encoding="utf-8")


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _run_table(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        if run.finetune and not run.train:
            results = [r for r in run.finetune.get("results", []) if isinstance(r, dict)]
            heads = [f"{r.get('init')} {r.get('mode')} {r.get('fraction', 0) * 100:g}%: {r.get('top1', float('nan')):.4g}"
                     for r in results]
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                run.name, "finetune", run.finetune.get("settings", {}).get("steps", ""), run.finetune.get("seconds", ""),
                "finished", ", ".join(heads))) + "</tr>")
            continue
        final = run.metrics.get("eval") or (run.evals[-1] if run.evals else {})
        heads = [f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and any(k.endswith(h) for h in HEADLINES)]
        status = "finished" if run.metrics else "unfinished"
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            run.name, run.objective, run.metrics.get("steps", run.train[-1]["step"] if run.train else 0),
            run.metrics.get("train_seconds", ""), status, ", ".join(heads[:6]))) + "</tr>")
    return ("<table><tr><th>run</th><th>objective</th><th>steps</th><th>train s</th><th>status</th>"
            "<th>final evaluation</th></tr>" + "".join(rows) + "</table>")


def render(runs: list[Run], figures: list[Figure]) -> str:
    sections = []
    for figure in figures:
        data = base64.b64encode(figure.png).decode("ascii")
        sections.append(f'<section id="{figure.name}"><h2>{html.escape(figure.title)}</h2>'
                        f'<p class="caption">{html.escape(figure.caption)}</p>'
                        f'<img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}"></section>')
    names = ", ".join(html.escape(r.name) for r in runs)
    toc = " · ".join(f'<a href="#{f.name}">{html.escape(f.title)}</a>' for f in figures)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mmssl report: {names}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
td, th {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }}
img {{ max-width: 100%; }} .caption {{ color: #555; font-size: 0.9rem; }} nav {{ font-size: 0.9rem; }}
</style></head><body>
<h1>mmssl report</h1>
<p>{len(runs)} run(s), generated {time.strftime('%Y-%m-%d %H:%M')} from log.jsonl and metrics.json.</p>
{_run_table(runs)}
<nav>{toc}</nav>
{''.join(sections)}
</body></html>
"""


def write_report(directories: list[str | Path], out: str | Path | None = None,
                 sweep: dict[str, dict] | None = None) -> Path:
    """Read the runs, draw every figure that applies, write ``index.html`` + PNGs into `out` (default: the run's
    ``report/`` folder for one run, ``./mmssl-report`` for several). `sweep` (run folder name -> its swept values)
    adds the metric-against-value figures of `mmssl sweep`. Returns the page's path."""
    if not directories:
        raise MmsslError("mmssl report: name at least one output folder")
    names = [Path(d).name for d in directories]
    unique = [f"{n} ({Path(d).parent.name})" if names.count(n) > 1 else n for n, d in zip(names, directories)]
    runs = [load_run(d, name) for d, name in zip(directories, unique)]
    folder = Path(out) if out else (Path(directories[0]) / "report" if len(runs) == 1 else Path("mmssl-report"))
    figures = all_figures(runs, sweep)
    if not figures:
        raise MmsslError(f"nothing to draw: {', '.join(map(str, directories))} logged no training steps yet "
                         "(and hold no mmssl finetune results)")
    _claim(folder)
    for figure in figures:
        _write(folder / f"{figure.name}.png", figure.png)
    page = folder / "index.html"
    _write(page, render(runs, figures).encode("utf-8"))
    return page
