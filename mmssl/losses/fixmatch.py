"""FixMatch's loss (Sohn et al. 2020, "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence"): cross-entropy on the labelled images (weak view), plus, weighted by lambda_u, cross-entropy of each
unlabelled image's strong view against the hard pseudo-label its weak view predicts, counted only where that
prediction's probability reaches the threshold (tau = 0.95). The pseudo-labels carry no gradient, and the
unlabelled term is averaged over every unlabelled image (masked ones count as zero), as in the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fixmatch_loss(labelled_logits: Tensor, labels: Tensor, weak_logits: Tensor | None, strong_logits: Tensor | None,
                  threshold: float = 0.95, lambda_u: float = 1.0,
                  true_labels: Tensor | None = None) -> dict[str, Tensor]:
    """``loss`` (supervised + lambda_u * unlabelled), ``supervised_loss``, and with unlabelled logits
    ``unlabelled_loss``, ``mask_rate`` (the fraction of unlabelled images whose pseudo-label is confident enough to
    be used). `true_labels` (``[U]``, -1 where unknown) only feeds monitors: ``pseudo_label_accuracy`` (the weak
    view's argmax against the truth, every unlabelled image with a label) and ``confident_correct_rate`` (the
    fraction that is both used and right: over a window, confident_correct_rate / mask_rate is the accuracy of the
    pseudo-labels the loss used). `weak_logits` and `strong_logits` None: the supervised loss alone."""
    supervised = F.cross_entropy(labelled_logits.float(), labels)
    out = {"supervised_loss": supervised}
    if weak_logits is None or strong_logits is None:
        return {"loss": supervised, **out}
    with torch.no_grad():
        confidence, pseudo = weak_logits.detach().float().softmax(dim=1).max(dim=1)
        mask = (confidence >= threshold).float()
    per_image = F.cross_entropy(strong_logits.float(), pseudo, reduction="none")
    unlabelled = (per_image * mask).mean()
    out.update(unlabelled_loss=unlabelled, mask_rate=mask.mean())
    if true_labels is not None:
        known = true_labels >= 0
        right = (pseudo == true_labels) & known
        out["pseudo_label_accuracy"] = right.sum() / known.sum().clamp(min=1)
        out["confident_correct_rate"] = (right.float() * mask).sum() / known.sum().clamp(min=1)
    return {"loss": supervised + lambda_u * unlabelled, **out}
