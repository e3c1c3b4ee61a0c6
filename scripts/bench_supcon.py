"""SupCon measured on the built-in world, several seeds at equal steps; prints markdown tables.

Images (``--part images``): `configs/supcon_world.yaml` at label fractions 1.0 and 0.1 (the rest of the images
unlabelled, contrasted as in SimCLR). Metrics of the frozen backbone on the held-out images: the existing eval
(kNN and linear probe trained on every labelled train image, ``metrics.json``), and a linear probe trained on the
fraction's labelled rows only (`labelled_rows`, recipe seed: the rows the SupCon loss saw labelled), as the
common protocol's SSL-then-probe rows are measured. Cross-entropy from random init and SimCLR-then-probe are
helper B's (`mmssl finetune`) and are not repeated here.

Sentence pairs (``--part text``), all on `configs/simcse_sup_world.yaml`'s data, model and optimiser, equal steps:

* ``supcon``: `configs/simcse_supcon_world.yaml` (pairs + every in-batch pair with the anchor's label);
* ``pairs``: `configs/simcse_sup_world.yaml` (supervised SimCSE, the labels unused);
* ``cross-entropy``: the same encoder and tokenizer with a linear head on its (normalised) embedding, logits
  scaled by 1/0.05 as the InfoNCE temperature scales them, cross-entropy on the labels of anchors and positives,
  AdamW at the recipe's learning rate, warmup and linear decay, clipping 1.0;
* ``unsup-then-probe``: `configs/simcse_unsup_world.yaml` (dropout views, no labels).

Metrics: the world eval the simcse objective reports (STS Spearman, recall@1, hard-negative accuracy on held-out
pairs) and ``label_probe``: a linear probe (`mmssl.eval.linear_probe`) on the frozen embeddings of train
anchors (their labels) tested on the held-out anchors' labels (the scene's colour and shape, 24 classes).

    nice -n 10 python scripts/bench_supcon.py --part images --seeds 0 1 2 --steps 300
    nice -n 10 python scripts/bench_supcon.py --part text --seeds 0 1 2 --steps 150
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmssl.data.label_fraction import labelled_rows  # noqa: E402
from mmssl.recipes import load_recipe  # noqa: E402
from mmssl.train.loop import train  # noqa: E402


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


# ---------------------------------------------------------------- images


def image_run(seed: int, fraction: float, steps: int, scenes: int, batch: int, out: Path) -> dict[str, float]:
    from mmssl.data.image_sources import ImageTable, load_images
    from mmssl.eval.frozen_backbone import frozen_backbone_metrics
    from mmssl.models.vision import load_backbone
    from mmssl.registry import get_objective

    folder = out / f"supcon_f{fraction}_s{seed}"
    recipe = load_recipe(ROOT / "configs/supcon_world.yaml", [
        f"seed={seed}", f"output_dir={folder}", f"objective.label_fraction={fraction}",
        f"train.max_steps={steps}", f"train.eval_every={steps}", "train.progress=false", "train.overwrite=true",
        f"data.world.num_scenes={scenes}", f"train.batch_size={batch}", "objective.eval_before=false"])
    start = time.time()
    metrics = train(recipe)
    seconds = time.time() - start
    result = {"knn_top1": metrics["eval"]["knn_top1"], "probe_all_labels": metrics["eval"]["linear_probe_top1"],
              "seconds": seconds}
    # the probe of the common protocol: trained on the fraction's labelled rows only
    objective = get_objective("supcon")(recipe)
    backbone = load_backbone(str(folder))
    splits = load_images(recipe.data, objective.params.image_size, recipe.seed)
    keep = labelled_rows(splits.train.labels, fraction, seed, splits.class_names)
    masked = ImageTable(splits.train.images, torch.where(keep, splits.train.labels, -1))
    objective.train, objective.eval, objective.class_names = masked, splits.eval, splits.class_names
    objective.mean, objective.std = backbone.mean, backbone.std
    few = frozen_backbone_metrics(backbone, masked, splits.eval, objective.settings(), torch.device("cpu"))
    result.update(probe_fraction_labels=few["linear_probe_top1"], knn_fraction_labels=few["knn_top1"],
                  labelled_rows=int(keep.sum()))
    return result


def images(args) -> None:
    rows = {}
    for fraction in args.fractions:
        rows[fraction] = [image_run(seed, fraction, args.steps, args.scenes, args.batch, args.out) for seed in args.seeds]
        print(json.dumps({"fraction": fraction, "runs": rows[fraction]}), flush=True)
    print(f"\nImages: SupCon on the world ({args.scenes} scenes, {args.steps} steps, batch {args.batch}, seeds "
          f"{args.seeds}; mean ± sd)\n")
    print("| labels used by SupCon | labelled rows | kNN top-1 (all labels) | probe top-1 (all labels) | "
          "kNN top-1 (fraction's labels) | probe top-1 (fraction's labels) | s/run |")
    print("|---|---|---|---|---|---|---|")
    for fraction, runs in rows.items():
        print(f"| {fraction:.0%} | {runs[0]['labelled_rows']} | {mean_sd([r['knn_top1'] for r in runs])} | "
              f"{mean_sd([r['probe_all_labels'] for r in runs])} | "
              f"{mean_sd([r['knn_fraction_labels'] for r in runs])} | "
              f"{mean_sd([r['probe_fraction_labels'] for r in runs])} | "
              f"{statistics.mean(r['seconds'] for r in runs):.0f} |")


# ---------------------------------------------------------------- sentence pairs


def label_probe(encoder, tokenizer, max_length: int, data, seed: int, max_train: int = 2000) -> float:
    """Linear probe on frozen embeddings: train anchors -> their label, tested on held-out anchors."""
    from mmssl.data.world import world_columns
    from mmssl.eval.linear_probe import linear_probe_accuracy

    train_rows, eval_rows = world_columns(data.world, "pairs", "train"), world_columns(data.world, "pairs", "eval")
    names = sorted(set(train_rows["label"]))
    index = {n: i for i, n in enumerate(names)}
    texts, labels = train_rows["anchor"][:max_train], [index[x] for x in train_rows["label"][:max_train]]
    held = [(t, index[x]) for t, x in zip(eval_rows["anchor"], eval_rows["label"]) if x in index]
    with torch.no_grad():
        a = encoder.encode(texts, tokenizer, max_length=max_length)
        b = encoder.encode([t for t, _ in held], tokenizer, max_length=max_length)
    return linear_probe_accuracy(a, labels, b, [y for _, y in held], num_classes=len(names), seed=seed)[
        "linear_probe_top1"]


def text_recipe_run(config: str, seed: int, steps: int, out: Path, name: str) -> dict[str, float]:
    from mmssl.models.text_encoder import load_sentence_transformer_dir

    folder = out / f"{name}_s{seed}"
    recipe = load_recipe(ROOT / config, [f"seed={seed}", f"output_dir={folder}", f"train.max_steps={steps}",
                                         f"train.eval_every={steps}", "train.save_every=0", "train.progress=false",
                                         "train.overwrite=true", "objective.eval_before=false"])
    start = time.time()
    metrics = train(recipe)
    seconds = time.time() - start
    encoder, tokenizer, max_length = load_sentence_transformer_dir(folder)
    return {**{k: metrics["eval"][k] for k in ("sts_spearman", "recall@1", "hard_negative_accuracy")},
            "label_probe": label_probe(encoder, tokenizer, max_length, recipe.data, seed), "seconds": seconds}


def cross_entropy_run(seed: int, steps: int, out: Path) -> dict[str, float]:
    """The supcon recipe's encoder and tokenizer, a linear head, cross-entropy on the labels; same steps and
    optimiser settings."""
    from mmssl.recipes import apply_overrides, parse_recipe, read_yaml
    from mmssl.registry import get_objective

    raw = apply_overrides(read_yaml(ROOT / "configs/simcse_supcon_world.yaml"), [
        f"seed={seed}", f"output_dir={out / f'ce_s{seed}'}", "objective.hard_negatives=false",
        "objective.eval_before=false", "train.cpu=true"])
    recipe = parse_recipe(raw)
    torch.manual_seed(seed)
    objective = get_objective("simcse")(recipe)
    objective.setup()
    module, cfg = objective.module, recipe.train
    head = torch.nn.Linear(module.encoder.embedding_dim, len(objective.label_names))
    params = [*[p for p in module.parameters() if p.requires_grad], *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    rows = objective.train_dataset
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    start, position, losses = time.time(), 0, []
    module.train()
    for _ in range(steps):
        if position + cfg.batch_size > len(order):
            order, position = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed + 1)), 0
        batch = objective.collate([rows[int(i)] for i in order[position:position + cfg.batch_size]])
        position += cfg.batch_size
        embeddings = module(packed=batch["packed"])  # [anchors; positives]
        labels = batch["labels"].repeat(2)
        logits = head(embeddings) / recipe.objective.temperature
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimiser.step()
        schedule.step()
        losses.append(float(loss))
    seconds = time.time() - start
    encoder = module.encoder
    metrics = objective._metrics(encoder)
    return {**{k: metrics[k] for k in ("sts_spearman", "recall@1", "hard_negative_accuracy")},
            "label_probe": label_probe(encoder, objective.tokenizer, objective.params.max_length, recipe.data, seed),
            "seconds": seconds, "first_loss": losses[0], "last_loss": statistics.mean(losses[-10:])}


def text(args) -> None:
    methods = {
        "supcon (pairs + same label)": lambda s: text_recipe_run("configs/simcse_supcon_world.yaml", s, args.steps,
                                                                args.out, "supcon"),
        "cross-entropy (linear head)": lambda s: cross_entropy_run(s, args.steps, args.out),
        **({"supervised SimCSE (pairs, no labels)": lambda s: text_recipe_run("configs/simcse_sup_world.yaml", s,
                                                                             args.steps, args.out, "pairs")}
           if args.pairs_control else {}),
        "unsupervised SimCSE, then probe": lambda s: text_recipe_run("configs/simcse_unsup_world.yaml", s,
                                                                     args.steps, args.out, "unsup"),
    }
    rows = {}
    for name, run in methods.items():
        rows[name] = [run(seed) for seed in args.seeds]
        print(json.dumps({"method": name, "runs": rows[name]}), flush=True)
    print(f"\nSentence pairs on the world (2000 scenes, {args.steps} steps, batch 64, seeds {args.seeds}; mean ± sd)\n")
    print("| method | label probe top-1 (held-out anchors) | STS Spearman | recall@1 | hard-negative acc. | s/run |")
    print("|---|---|---|---|---|---|")
    for name, runs in rows.items():
        print(f"| {name} | {mean_sd([r['label_probe'] for r in runs])} | {mean_sd([r['sts_spearman'] for r in runs])} "
              f"| {mean_sd([r['recall@1'] for r in runs])} | {mean_sd([r['hard_negative_accuracy'] for r in runs])} "
              f"| {statistics.mean(r['seconds'] for r in runs):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["images", "text"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default: 300 (images), 150 (text)")
    parser.add_argument("--scenes", type=int, default=4000, help="world scenes (images)")
    parser.add_argument("--batch", type=int, default=128, help="images per step (images)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--pairs-control", action="store_true", help="also supervised SimCSE without labels (text)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_supcon")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.part == "images":
        args.steps = args.steps or 300
        images(args)
    else:
        args.steps = args.steps or 150
        text(args)


if __name__ == "__main__":
    main()
