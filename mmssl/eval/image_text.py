"""Evaluation of a contrastive image-text model (open_clip's ``encode_image``/``encode_text``) on an image-text
table: zero-shot accuracy over class names x prompt templates, image<->text retrieval, the contrastive loss,
and compositional probes (relation, attribute binding) on two-object world images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.data.image_text import ImageTextTable
from mmssl.data.image_views import eval_view
from mmssl.data.world import POSITIONS, relation_probes
from mmssl.eval.embeddings import pair_diagnostics
from mmssl.eval.zero_shot import DEFAULT_TEMPLATES, class_embeddings, image_text_retrieval, zero_shot_accuracy
from mmssl.losses import info_nce

# Prompts that read like the built-in world's captions ("there is a red circle on the left"), averaged over
# the positions an object can take (prompt ensembling, as CLIP does with "a photo of a {}" variants).
WORLD_TEMPLATES = [f"there is {{article}} {{}} {position}" for position in POSITIONS]


def prompt_templates(templates: list[str] | None, source: str) -> list[str]:
    """The zero-shot prompts: `templates` if given, else the world's for ``data.source: world``, else CLIP's."""
    return templates or (WORLD_TEMPLATES if source == "world" else DEFAULT_TEMPLATES)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    tokenizer,
    table: ImageTextTable,
    class_names: list[str] | None,
    templates: list[str],
    size: int,
    mean,
    std,
    logit_scale: float,
    *,
    batch_size: int = 256,
    retrieval_ks: Sequence[int] = (1, 5, 10),
    limit: int | None = None,
    device: torch.device | str = "cpu",
    diagnostics: dict | None = None,
) -> dict[str, float]:
    """Zero-shot accuracy, image<->text retrieval and the contrastive loss (first caption) on the first `limit`
    rows of `table`; `diagnostics`, if given, receives the report's arrays (zero-shot confusion matrix,
    similarity histograms)."""
    n = len(table) if limit is None else min(limit, len(table))
    bs = batch_size
    feats = torch.cat([
        model.encode_image(eval_view(table.images[i : i + bs], size, mean, std).to(device)).float().cpu()
        for i in range(0, n, bs)
    ])

    def encode_text(texts: list[str]) -> torch.Tensor:
        return torch.cat([model.encode_text(tokenizer(texts[i : i + bs]).to(device)).float().cpu()
                          for i in range(0, len(texts), bs)])

    captions = table.captions[:n]
    out: dict[str, float] = {}
    first = encode_text([c[0] for c in captions])
    losses = [
        info_nce(feats[i : i + bs], first[i : i + bs], logit_scale=logit_scale, symmetric=True)
        for i in range(0, n, bs) if min(bs, n - i) >= 2
    ]
    if losses:
        out["loss"] = float(torch.stack(losses).mean())
    out["logit_scale"] = logit_scale
    labels = table.labels[:n].clone()
    labels[~table.zero_shot[:n]] = -1
    if class_names and len(class_names) >= 2 and bool((labels >= 0).any()):
        classes = class_embeddings(encode_text, class_names, templates)
        out.update(zero_shot_accuracy(feats, labels, classes))
        if diagnostics is not None:
            keep = labels >= 0
            predicted = (F.normalize(feats[keep], dim=-1) @ classes.T.cpu()).argmax(1)
            confusion = torch.zeros(len(class_names), len(class_names), dtype=torch.long)
            confusion.index_put_((labels[keep], predicted), torch.ones_like(predicted), accumulate=True)
            diagnostics["confusion_matrix"] = confusion.tolist()
            diagnostics["class_names"] = list(class_names)
    out.update(image_text_retrieval(feats, captions, encode_text, list(retrieval_ks)))
    out.update(compositional_accuracy(feats, captions, encode_text))
    if diagnostics is not None:
        image, text = F.normalize(feats, dim=-1), F.normalize(first, dim=-1)
        diagnostics.update(pair_diagnostics(image, text, torch.cat([image, text])))
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in out.items()}


def compositional_accuracy(feats: torch.Tensor, captions: list[list[str]], encode_text) -> dict[str, float]:
    """On two-object world images: how often the image scores its caption above the same words with the
    objects swapped (`relation_accuracy`) and with the colours swapped between the objects
    (`attribute_binding_accuracy`); chance 0.5. Empty for data without such captions."""
    rows, true, objects, attributes = [], [], [], []
    for i, caps in enumerate(captions):
        probes = relation_probes(caps[0]) if caps else None
        if probes is not None:
            rows.append(i)
            true.append(caps[0])
            objects.append(probes[0])
            attributes.append(probes[1])
    if not rows:
        return {}
    image = F.normalize(feats[rows], dim=-1)

    def score(texts: list[str], which: list[int]) -> torch.Tensor:
        return (image[which] * F.normalize(encode_text(texts), dim=-1)).sum(-1)

    every = list(range(len(rows)))
    right = score(true, every)
    out = {"relation_accuracy": float((right > score(objects, every)).float().mean()),
           "relation_probes": float(len(rows))}
    kept = [k for k, a in enumerate(attributes) if a is not None]
    if kept:
        swapped = score([attributes[k] for k in kept], kept)
        out["attribute_binding_accuracy"] = float((right[kept] > swapped).float().mean())
    return out
