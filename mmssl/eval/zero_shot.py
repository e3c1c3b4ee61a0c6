"""Zero-shot classification and image<->text retrieval for image-text encoders.

Zero-shot (Radford et al. 2021): each class is the mean of its prompts' normalised text embeddings
(``templates`` such as ``"a photo of {}."``; ``{article}`` expands to "a"/"an"), and an image's prediction is
the class with the highest cosine similarity.

Retrieval: captions are deduplicated by text, so a caption shared by several images (common in the built-in
world, "a red circle on the left") counts every one of those images as relevant, and vice versa.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mmssl.data.classes import check_classes
from mmssl.errors import RecipeError
from mmssl.eval.retrieval import retrieval_metrics

DEFAULT_TEMPLATES = ["a photo of {article} {}.", "{article} {}."]


def format_prompt(template: str, name: str) -> str:
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if "{}" not in template:
        raise RecipeError(f"zero-shot template {template!r} has no '{{}}' placeholder for the class name")
    return template.replace("{article}", article).replace("{}", name)


@torch.no_grad()
def class_embeddings(
    encode_text: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """[C, D] normalised class embeddings: the renormalised mean of each class's prompt embeddings."""
    check_classes(class_names)
    if len(class_names) < 2:
        raise RecipeError(f"zero-shot classification needs at least 2 classes, got {list(class_names)}")
    if not templates:
        raise RecipeError("zero-shot templates: give at least one template, e.g. 'a photo of {}.'")
    prompts = [format_prompt(t, n) for n in class_names for t in templates]
    emb = F.normalize(encode_text(prompts).float(), dim=-1).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(image_features: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor,
                       ks: Sequence[int] = (1, 5), prefix: str = "zero_shot_") -> dict[str, float]:
    """Top-k accuracy of nearest-class predictions; images with label < 0 are ignored."""
    keep = labels >= 0
    if not bool(keep.any()):
        return {}
    scores = F.normalize(image_features[keep].float(), dim=-1) @ classes.T
    target = labels[keep].to(scores.device)
    out = {}
    for k in ks:
        if k > classes.shape[0] or (k > 1 and classes.shape[0] <= k):
            continue
        top = scores.topk(k, dim=1).indices
        out[f"{prefix}top{k}"] = (top == target[:, None]).any(1).float().mean().item()
    out[f"{prefix}images"] = int(keep.sum())
    return out


@torch.no_grad()
def image_text_retrieval(
    image_features: torch.Tensor,
    captions: Sequence[Sequence[str]],
    encode_text: Callable[[list[str]], torch.Tensor],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image->text and text->image recall@k (plus MRR@10/nDCG@10) over the deduplicated captions."""
    texts: list[str] = []
    index: dict[str, int] = {}
    owners: list[list[int]] = []
    image_to_texts: list[list[int]] = []
    for i, caps in enumerate(captions):
        mine = []
        for caption in caps:
            if caption not in index:
                index[caption] = len(texts)
                texts.append(caption)
                owners.append([])
            j = index[caption]
            if not owners[j] or owners[j][-1] != i:
                owners[j].append(i)
            if j not in mine:
                mine.append(j)
        image_to_texts.append(mine)
    text_features = F.normalize(encode_text(texts).float(), dim=-1)
    images = F.normalize(image_features.float(), dim=-1)
    scores = images @ text_features.T
    out = retrieval_metrics(scores, image_to_texts, ks, prefix="image_to_text_")
    out.update(retrieval_metrics(scores.T, owners, ks, prefix="text_to_image_"))
    return out
