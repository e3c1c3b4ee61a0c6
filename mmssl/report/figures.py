"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display): each function takes
the runs and returns zero or more `Figure`s, one per thing to look at; several runs overlay in one axes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from io import BytesIO

from mmssl.errors import MmsslError
from mmssl.report.runs import Run


@dataclass
class Figure:
    name: str  # file stem of the PNG
    title: str
    caption: str
    png: bytes


def _matplotlib():
    try:
        from matplotlib.figure import Figure as MplFigure
    except ImportError:
        raise MmsslError("mmssl report draws with matplotlib: pip install 'mmssl[report]'") from None
    return MplFigure


def _png(fig) -> bytes:
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _grid(count: int, width: float = 4.2, height: float = 3.0, columns: int = 3):
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    fig = _matplotlib()(figsize=(width * cols, height * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(count)]
    return fig, axes


def _label(run: Run, runs: list[Run]) -> str:
    return run.name if len(runs) > 1 else run.objective


def curves(runs: list[Run], keys: list[str], events: str, name: str, title: str, caption: str,
           log_y: bool = False) -> list[Figure]:
    keys = [k for k in keys if any(run.series(getattr(run, events), k)[0] for run in runs)]
    if not keys:
        return []
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        for run in runs:
            steps, values = run.series(getattr(run, events), key)
            if steps:
                ax.plot(steps, values, marker="o" if events == "evals" else None, markersize=3,
                        label=_label(run, runs))
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if log_y and all(v > 0 for run in runs for v in run.series(getattr(run, events), key)[1]):
            ax.set_yscale("log")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0].legend(fontsize=7)
    return [Figure(name, title, caption, _png(fig))]


def training_curves(runs: list[Run]) -> list[Figure]:
    losses = list(dict.fromkeys(k for run in runs for e in run.train for k in e if k.endswith("loss")))
    out = curves(runs, losses, "train", "loss", "Training loss",
                 "Training loss per logged step (each objective's own under its label in a combined run).")
    out += curves(runs, ["lr"], "train", "learning_rate", "Learning rate", "The schedule as applied.")
    speed = ["tokens_per_s"] if any(run.series(run.train, "tokens_per_s")[1] and
                                    max(run.series(run.train, "tokens_per_s")[1]) > 0 for run in runs) else []
    out += curves(runs, ["examples_per_s", *speed], "train", "throughput", "Throughput",
                  "Examples (and tokens) per second over all processes.")
    return out


def eval_curves(runs: list[Run]) -> list[Figure]:
    keys = list(dict.fromkeys(k for run in runs for k in run.eval_keys()))
    figures = []
    for start in range(0, len(keys), 12):
        part = keys[start : start + 12]
        suffix = f"_{start // 12 + 1}" if len(keys) > 12 else ""
        figures += curves(runs, part, "evals", f"eval{suffix}", "Evaluation metrics" + (f" ({start // 12 + 1})" if suffix else ""),
                          "Every evaluation metric over steps (held-out data; perplexities on a log scale).",
                          log_y=all("perplexity" in k for k in part))
    return figures


def alignment_uniformity(runs: list[Run]) -> list[Figure]:
    """Wang & Isola's two properties of a contrastive embedding, one point per evaluation (lower is better)."""
    pairs = []
    for run in runs:
        for key in run.eval_keys():
            if key.endswith("alignment") and f"{key[: -len('alignment')]}uniformity" in run.eval_keys():
                pairs.append((run, key, f"{key[: -len('alignment')]}uniformity"))
    if not pairs:
        return []
    fig, (ax,) = _grid(1, 5.5, 4.2)
    for run, a_key, u_key in pairs:
        both = [e for e in run.evals if isinstance(e.get(a_key), (int, float)) and isinstance(e.get(u_key), (int, float))]
        if not both:
            continue
        steps, align, uniform = [e["step"] for e in both], [e[a_key] for e in both], [e[u_key] for e in both]
        line = ax.plot(uniform, align, marker="o", markersize=4, label=f"{_label(run, runs)} {a_key[: -len('alignment')].rstrip('/')}")
        ax.annotate(f"step {steps[-1]}", (uniform[-1], align[-1]), fontsize=7, color=line[0].get_color())
    ax.set_xlabel("uniformity (lower: spread over the sphere)", fontsize=8)
    ax.set_ylabel("alignment (lower: positives closer)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [Figure("alignment_uniformity", "Alignment and uniformity",
                   "Each evaluation as a point (Wang & Isola 2020); training should move it down and to the left.",
                   _png(fig))]


def similarity_histograms(runs: list[Run]) -> list[Figure]:
    panels = [(run, label, d) for run in runs for label, d in run.diagnostics().items()
              if d.get("positive_similarity") and d.get("negative_similarity")]
    if not panels:
        return []
    fig, axes = _grid(len(panels))
    for ax, (run, label, d) in zip(axes, panels):
        bins = len(d["positive_similarity"])
        centres = [-1 + (i + 0.5) * 2 / bins for i in range(bins)]
        for key, colour in (("positive_similarity", "tab:green"), ("negative_similarity", "tab:red")):
            counts = d[key]
            total = max(1, sum(counts))
            ax.bar(centres, [c / total for c in counts], width=2 / bins, alpha=0.55, color=colour,
                   label=key.split("_")[0] + "s")
        ax.set_title(" ".join(x for x in (run.name if len(runs) > 1 else "", label) if x) or run.objective, fontsize=9)
        ax.set_xlabel("cosine similarity", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return [Figure("similarities", "Positive vs negative similarities",
                   "Cosine similarity of held-out positive pairs and of every other pairing (negatives) at the last "
                   "evaluation: the further apart the two, the easier retrieval.", _png(fig))]


def spectra(runs: list[Run]) -> list[Figure]:
    panels = [(run, label, d["spectrum"]) for run in runs for label, d in run.diagnostics().items() if d.get("spectrum")]
    if not panels:
        return []
    fig, (ax,) = _grid(1, 5.5, 3.8)
    for run, label, values in panels:
        ax.plot(range(1, len(values) + 1), values, marker=".", label=" ".join(x for x in (_label(run, runs), label) if x))
    ax.set_yscale("log")
    ax.set_xlabel("singular value index", fontsize=8)
    ax.set_ylabel("share of the sum", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [Figure("spectrum", "Embedding spectrum",
                   "Singular values of the held-out embeddings (normalised to sum to 1): a collapsed representation puts "
                   "nearly all of it in the first few; the effective rank is in the evaluation metrics.", _png(fig))]


def confusion_matrices(runs: list[Run]) -> list[Figure]:
    panels = [(run, label, d) for run in runs for label, d in run.diagnostics().items() if d.get("confusion_matrix")]
    if not panels:
        return []
    size = len(panels[0][2]["confusion_matrix"])
    fig, axes = _grid(len(panels), 0.32 * size + 2.5, 0.32 * size + 2.0, columns=2)
    for ax, (run, label, d) in zip(axes, panels):
        matrix = d["confusion_matrix"]
        names = d.get("class_names") or [str(i) for i in range(len(matrix))]
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(" ".join(x for x in (run.name if len(runs) > 1 else "", label, "zero-shot") if x), fontsize=9)
    return [Figure("confusion", "Zero-shot confusion matrix",
                   "Held-out images by true class (rows) and zero-shot prediction (columns) at the last evaluation.",
                   _png(fig))]


SWEEP_METRICS = ("zero_shot_top1", "image_to_text_recall@1", "recall@1", "sts_spearman", "knn_top1",
                 "linear_probe_top1", "perplexity", "caption_names_class", "attribute_binding_accuracy",
                 "relation_accuracy")


def _position(value) -> float | None:
    """A swept value as a number on the x axis: numbers as they are, a numeric list by its first item
    (e.g. crop_scale [0.2, 1.0] -> 0.2); None for anything else (drawn by its order)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (int, float)):
        return float(value[0])
    return None


def sweep_curves(runs: list[Run], sweep: dict[str, dict]) -> list[Figure]:
    """Each headline metric against each swept value, one line per combination of the other swept values."""
    by_name = {run.directory.name: run for run in runs if run.directory.name in sweep and run.metrics}
    if not by_name:
        return []
    keys = list(next(iter(sweep.values())))
    metrics = [m for m in dict.fromkeys(k for run in by_name.values() for k in (run.metrics.get("eval") or {}))
               if any(m.endswith(h) for h in SWEEP_METRICS)]
    figures = []
    for key in keys:
        if not metrics:
            break
        fig, axes = _grid(len(metrics))
        others = [k for k in keys if k != key]
        groups: dict[str, list] = {}
        for name, run in by_name.items():
            values = sweep[name]
            label = ", ".join(f"{k.split('.')[-1]}={values[k]}" for k in others) or run.objective
            groups.setdefault(label, []).append((values[key], run))
        distinct = list(dict.fromkeys(json.dumps(sweep[name][key]) for name in by_name))
        categorical = any(_position(json.loads(v)) is None for v in distinct)
        for ax, metric in zip(axes, metrics):
            if categorical:  # one position per distinct value, the same in every line
                ax.set_xticks(range(len(distinct)), distinct, fontsize=7)
            for label, members in groups.items():
                xs = [float(distinct.index(json.dumps(v))) if categorical else _position(v) for v, _ in members]
                points = sorted((x, run.metrics["eval"].get(metric)) for x, (_, run) in zip(xs, members)
                                if isinstance(run.metrics["eval"].get(metric), (int, float)))
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel(key, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        if len(groups) > 1:
            axes[0].legend(fontsize=7)
        slug = key.replace(".", "_")
        figures.append(Figure(f"sweep_{slug}", f"Sweep: final metrics against {key}",
                              f"Each run's final evaluation against its {key} (lists by their first value); one line "
                              "per setting of the other swept keys.", _png(fig)))
    return figures


def tracking_curves(runs: list[Run]) -> list[Figure]:
    """Mask IoU per frame of a video-colourisation run's tracking (learned pointer, raw pixels, copying)."""
    found = [(run, label, d["tracking_iou_curve"]) for run in runs for label, d in run.diagnostics().items()
             if isinstance(d.get("tracking_iou_curve"), dict)]
    if not found:
        return []
    fig, axes = _grid(len(found))
    for ax, (run, label, curves) in zip(axes, found):
        for name, values in curves.items():
            ax.plot(range(len(values)), values, marker="o", label=name)
        ax.set(xlabel="frame", ylabel="mask IoU", ylim=(0, 1.02),
               title=f"{_label(run, runs)}{f' ({label})' if label else ''}")
        ax.legend(fontsize=8)
    return [Figure("tracking_iou", "Tracking: mask IoU per frame",
                   "The first frame's masks propagated through held-out videos by the learned pointer, by raw-pixel "
                   "pointing and by copying the first mask; frame 0 is given.", _png(fig))]


# pictures a method writes into its output folder: file -> (title, caption)
SAVED_PICTURES = {
    "tracking.png": ("Tracked masks", "Held-out videos: frames, the true masks, then the masks that copying, raw "
                                      "pixels and the learned pointer propagate from the first frame."),
    "nade_samples.png": ("Samples from the NADE", "Images drawn pixel by pixel from the trained density."),
    "samples.png": ("Samples from the prior", "Code grids drawn from the autoregressive prior, decoded by the "
                                              "VQ-VAE's decoder."),
    "reconstructions.png": ("Reconstructions", "Held-out images (top half) above their reconstructions from their "
                                               "codes."),
}
MAX_PICTURE_BYTES = 8 << 20


def saved_pictures(runs: list[Run]) -> list[Figure]:
    """The PNGs a method saved beside its model (tracked masks, samples), shown as they are."""
    figures = []
    for run in runs:
        for file, (title, caption) in SAVED_PICTURES.items():
            path = run.directory / file
            if path.is_file() and path.stat().st_size <= MAX_PICTURE_BYTES:
                png = path.read_bytes()
                if png.startswith(b"\x89PNG"):
                    stem = "".join(c if c.isalnum() else "_" for c in run.name)
                    figures.append(Figure(f"{stem}_{path.stem}", f"{title}: {run.name}", caption, png))
    return figures


FINETUNE_STYLE = {("pretrained", "probe"): ("o", "-"), ("pretrained", "full"): ("s", "-"),
                  ("random_init", "probe"): ("o", ":"), ("random_init", "full"): ("s", ":")}


def finetune_points(run: Run) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(init, mode) -> sorted (label fraction, held-out top-1) of an `mmssl finetune` output."""
    points: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in run.finetune.get("results", []):
        if isinstance(row, dict) and isinstance(row.get("fraction"), (int, float)) and isinstance(row.get("top1"), (int, float)):
            points.setdefault((str(row.get("init")), str(row.get("mode"))), []).append((float(row["fraction"]), float(row["top1"])))
    return {key: sorted(values) for key, values in points.items()}


def _percent_label(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def label_efficiency(runs: list[Run]) -> list[Figure]:
    """Held-out top-1 against the fraction of labels (log x): pretrained (solid) vs random init (dotted), linear
    probe (circles) vs full fine-tune (squares); each finetune output in its own colour when there are several."""
    found = [(run, finetune_points(run)) for run in runs if run.finetune]
    found = [(run, points) for run, points in found if points]
    if not found:
        return []
    fig, (ax,) = _grid(1, 6.0, 4.2)
    colours = {"probe": "tab:blue", "full": "tab:orange"}
    cycle = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    fractions: set[float] = set()
    for i, (run, points) in enumerate(found):
        for (init, mode), values in points.items():
            marker, style = FINETUNE_STYLE.get((init, mode), ("^", "--"))
            colour = cycle[i % len(cycle)] if len(found) > 1 else colours.get(mode, "tab:gray")
            label = f"{init.replace('_', ' ')}, {'linear probe' if mode == 'probe' else 'full fine-tune'}"
            ax.plot([v[0] for v in values], [v[1] for v in values], marker=marker, linestyle=style, color=colour,
                    label=f"{run.name}: {label}" if len(found) > 1 else label)
            fractions.update(v[0] for v in values)
        reference = (run.finetune.get("reference") or {}).get("linear_probe_top1")
        if isinstance(reference, (int, float)):  # the run's own `mmssl eval` probe (all labels)
            ax.plot([1.0], [reference], marker="*", markersize=11, linestyle="none",
                    color=cycle[i % len(cycle)] if len(found) > 1 else "black",
                    label=f"{run.name}: mmssl eval linear probe" if len(found) > 1 else "mmssl eval linear probe")
    classes = found[0][0].finetune.get("class_names") or []
    if classes:
        ax.axhline(1 / len(classes), color="gray", linewidth=0.8, linestyle="--", label="chance")
    ax.set_xscale("log")
    ticks = sorted(fractions)
    ax.set_xticks(ticks, [_percent_label(f) for f in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("labelled training images (fraction, log scale)", fontsize=8)
    ax.set_ylabel("held-out top-1", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [Figure("label_efficiency", "Label efficiency",
                   "Held-out top-1 against the fraction of training labels used (the same rows for every method with "
                   "one seed): the pretrained encoder (solid) against the same architecture from random init "
                   "(dotted), with a linear probe of the frozen encoder (circles) and with full fine-tuning "
                   "(squares); the star is the run's own mmssl eval linear probe on all labels.", _png(fig))]


def all_figures(runs: list[Run], sweep: dict[str, dict] | None = None) -> list[Figure]:
    return [*label_efficiency(runs), *(sweep_curves(runs, sweep) if sweep else []), *training_curves(runs),
            *eval_curves(runs),
            *alignment_uniformity(runs), *similarity_histograms(runs), *spectra(runs), *confusion_matrices(runs),
            *tracking_curves(runs), *saved_pictures(runs)]
