"""Evaluation of a CoCa captioner on an image-text table: the teacher-forced caption loss, perplexity and token
accuracy (first caption of each image), and greedy captions of a few images, scored by whether they name the
image's class."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from mmssl.data.image_text import ImageTextTable
from mmssl.data.image_views import eval_view
from mmssl.models.captioning import CaptionModule, decode, generate_captions


def names_class(caption: str, class_name: str) -> bool:
    """Whether `caption` says `class_name` as whole words, ignoring case and '_' ("golden_retriever")."""
    words = [re.escape(w) for w in class_name.replace("_", " ").lower().split()]
    return bool(words) and re.search(r"\b" + r"\s+".join(words) + r"\b", caption.lower()) is not None


@torch.no_grad()
def caption_metrics(model: nn.Module, tokenizer, table: ImageTextTable, class_names: list[str] | None, size: int,
                    mean, std, *, batch_size: int = 256, generate_images: int = 64, generate_max_length: int = 20,
                    limit: int | None = None, device: torch.device | str = "cpu") -> tuple[dict[str, float], list[dict]]:
    """Metrics on the first `limit` rows of `table`, and the captions generated for the first `generate_images`
    of them (``{"generated", "reference"[, "class"]}``)."""
    n = len(table) if limit is None else min(limit, len(table))
    was_training = model.training
    model.eval()
    captioner = CaptionModule(model)
    total = torch.zeros(3, dtype=torch.float64)  # loss x tokens, correct tokens, tokens
    try:
        for start in range(0, n, batch_size):
            rows = range(start, min(n, start + batch_size))
            images = eval_view(table.images[list(rows)], size, mean, std).to(device)
            text = tokenizer([table.captions[i][0] for i in rows]).to(device)
            out = captioner(images, text)
            tokens = float((text[:, 1:] != 0).sum())
            total += torch.tensor([float(out["loss"]) * tokens, float(out["token_accuracy"]) * tokens, tokens],
                                  dtype=torch.float64)
        count = min(n, generate_images)
        generated: list[dict] = []
        named = 0
        if count:
            images = eval_view(table.images[:count], size, mean, std).to(device)
            texts = decode(tokenizer, generate_captions(model, images, generate_max_length))
            for i, text in enumerate(texts):
                label = int(table.labels[i]) if class_names else -1
                entry = {"generated": text, "reference": table.captions[i][0]}
                if label >= 0:
                    entry["class"] = class_names[label]
                    named += names_class(text, class_names[label])
                generated.append(entry)
    finally:
        model.train(was_training)
    loss = float(total[0] / max(total[2], 1.0))
    out = {"caption_loss": loss, "caption_perplexity": math.exp(min(loss, 50.0)),
           "caption_token_accuracy": float(total[1] / max(total[2], 1.0))}
    labelled = [g for g in generated if "class" in g]
    if labelled:
        out["caption_names_class"] = named / len(labelled)
    return out, generated
