"""FixMatch (Sohn et al. 2020, "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence"):
semi-supervised image classification from a labelled fraction of the training images and all of them unlabelled.
Each step a classifier on the backbone sees a labelled batch (weak view, cross-entropy) and ``mu`` times as many
unlabelled images: the weak view of each gives a hard pseudo-label where its top probability reaches
``threshold`` (0.95), and the strong view is trained towards it (`mmssl.losses.fixmatch`), weighted by
``lambda_u``. ``lambda_u: 0`` is the supervised baseline on the labelled rows alone (no unlabelled pass).

Which rows keep their label: `mmssl.data.label_fraction.labelled_rows` (stratified, seeded by the recipe's seed,
nested), so "10 %" is the same rows as for SupCon and `mmssl finetune`. The loader batches every training row
(``train.batch_size`` unlabelled images per step); the labelled batch of a step (``batch_size / mu`` images,
rounded, at least 1) is drawn with replacement from the labelled rows by a hash of (seed, epoch, row) of the
step's first unlabelled rows, and its weak view is seeded by the same row ids on a stream of its own: every view
and draw is a function of (seed, epoch, row), so a resumed run repeats an unbroken one exactly.

Views: ``view1`` is the weak view (flip and a mild crop), ``view2`` the strong one (the SimCLR preset: crop, colour
jitter, grayscale; the paper's RandAugment is not in this code base). Evaluation: the base's frozen-backbone kNN and
linear probe (the probe on up to ``eval_max_images`` labelled training images, i.e. all labels), plus
``classifier_top1`` (the trained classifier on the eval split) and ``labelled_probe_top1`` (a linear probe of the
frozen backbone fitted on the labelled rows only, as SSL-then-probe is). Export: the backbone (timm), and the
classifier's weights beside it (`CLASSIFIER_FILE`, a linear layer on the pooled features, class names in the
eval metadata). Streamed data is refused: the labelled batch needs every row's label up front."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn

from mmssl.data.image_sources import ImageTable
from mmssl.data.image_views import TwoViewsConfig, ViewOverrides, view_uniforms
from mmssl.data.label_fraction import labelled_rows
from mmssl.eval.frozen_backbone import ProbeSettings, labelled_features
from mmssl.eval.linear_probe import linear_probe_accuracy
from mmssl.losses.fixmatch import fixmatch_loss
from mmssl.models.heads import BackboneClassifier, classifier_head
from mmssl.models.image_features import image_features, precise_bn
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams
from mmssl.registry import register_objective
from mmssl.schema import NonNegativeFloat, PositiveInt, Probability, Range

CLASSIFIER_FILE = "fixmatch_classifier.safetensors"  # beside the exported backbone
LABELLED_DRAW, LABELLED_VIEW = 101, 102  # random streams of the labelled batch (the views use 0, 1, 2 ...)


def _fixmatch_views() -> TwoViewsConfig:
    # view1 weak: flip and a mild crop (the paper: flip and a translation of up to 12.5 %); view2 strong: SimCLR's
    weak = ViewOverrides(crop_scale=[0.6, 1.0], color_jitter=0.0, grayscale=0.0, gaussian_blur=0.0, solarize=0.0)
    return TwoViewsConfig(preset="simclr", view1=weak)


@dataclass
class FixMatchParams(ImageSSLParams):
    views: TwoViewsConfig = field(default_factory=_fixmatch_views)  # view1: weak, view2: strong
    label_fraction: Annotated[float, Range(0, 1, open_low=True)] = 0.1  # of the training rows' labels kept
    threshold: Probability = 0.95  # tau: a pseudo-label is used where the weak view's top probability reaches it
    lambda_u: NonNegativeFloat = 1.0  # the unlabelled term's weight; 0: supervised on the labelled rows alone
    mu: PositiveInt = 7  # unlabelled images per labelled image in a step
    head: Literal["linear", "mlp"] = "linear"  # the classifier; mlp: Linear-BN-ReLU-Linear, hidden_dim wide


@torch.no_grad()
def labelled_probe_top1(backbone: nn.Module, train: ImageTable, evaluation: ImageTable, keep: torch.Tensor,
                        s: ProbeSettings, device: torch.device) -> float:
    """Top-1 on the labelled eval images of a linear probe of the frozen `backbone` (batch-norm statistics
    recomputed on the training images, as the base's probe) fitted on the training rows in `keep` only."""
    was_training = backbone.training
    try:
        model = precise_bn(backbone, train.images, s, device)
        model.eval()
        rows = keep.nonzero().flatten()
        bank = image_features(model, train.images[rows], s, device).cpu()
        queries, labels = labelled_features(model, evaluation, s, device)
    finally:
        backbone.train(was_training)
    decays = {} if len(rows) >= 5 else {"weight_decays": (1e-2,)}  # too few rows to hold some out for validation
    return float(linear_probe_accuracy(bank, train.labels[rows], queries, labels, num_classes=s.num_classes,
                                       seed=s.seed, **decays)["linear_probe_top1"])


@register_objective("fixmatch")
class FixMatch(ImageSSL):
    Params = FixMatchParams

    def stream_refusal(self) -> str | None:
        return ("FixMatch draws each step's labelled batch from the rows that keep their label "
                "(objective.label_fraction of the training table), which needs every row's label up front")

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        # the data is loaded by now: a table without labels or a fraction that empties a class stops here (DataError)
        self.labelled = labelled_rows(self.train.labels, p.label_fraction, self.recipe.seed, self.class_names)
        self.labelled_index = self.labelled.nonzero().flatten()
        classes = len(self.class_names) if self.class_names else int(self.train.labels.max()) + 1
        return BackboneClassifier(backbone, classifier_head(backbone.dim, p.hidden_dim if p.head == "mlp" else None,
                                                        classes))

    def labelled_batch(self, ids: torch.Tensor) -> torch.Tensor:
        """The labelled rows drawn for unlabelled rows `ids` (one each, with replacement): (seed, epoch, id) only."""
        u = view_uniforms(ids, self.epoch, self.recipe.seed, LABELLED_DRAW, draws=1)[:, 0]
        n = len(self.labelled_index)
        return self.labelled_index[(u * n).long().clamp(max=n - 1)]

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        p, seed, fmt = self.params, self.recipe.seed, torch.channels_last
        device = batch["index"].device
        rows = batch["index"].cpu()
        ids = rows[:max(1, round(len(rows) / p.mu))]  # the rows whose hash picks (and seeds) the labelled batch
        picked = self.labelled_batch(ids)
        out: dict[str, Any] = {"index": batch["index"], "labels": self.train.labels[picked].to(device)}
        out["labelled"] = self.views.view(self.train.images[picked], ids, self.epoch, seed, 0,
                                          stream=LABELLED_VIEW).to(device, memory_format=fmt)
        if p.lambda_u > 0:
            images = self.train.images[rows]
            out["view1"] = self.views.view(images, rows, self.epoch, seed, 0).to(device, memory_format=fmt)
            out["view2"] = self.views.view(images, rows, self.epoch, seed, 1).to(device, memory_format=fmt)
            out["true_labels"] = self.train.labels[rows].to(device)  # for the pseudo-label monitors only
        return out

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p = self.params
        labelled = batch["labelled"]
        if "view1" not in batch:  # lambda_u = 0: supervised on the labelled batch alone
            features, logits = module(labelled)
            out = fixmatch_loss(logits, batch["labels"], None, None)
        else:  # one pass (batch norm sees the labelled, weak and strong images together, as in the paper)
            b, u = labelled.shape[0], batch["view1"].shape[0]
            features, logits = module(torch.cat([labelled, batch["view1"], batch["view2"]]))
            out = fixmatch_loss(logits[:b], batch["labels"], logits[b:b + u], logits[b + u:], p.threshold,
                                p.lambda_u, batch["true_labels"])
        return {**out, "embedding": features[:labelled.shape[0]].detach()}

    def batch_size_of(self, batch: dict[str, Any]) -> tuple[int, int]:
        return batch["labelled"].shape[0] + (batch["view1"].shape[0] if "view1" in batch else 0), 0

    # -- evaluation and export ---------------------------------------------------------------------
    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        out = super().evaluate(module, loader, accelerator)
        if out:
            out.update(self.classifier_metrics(self.core(module), accelerator.device))
        return out

    @torch.no_grad()
    def classifier_metrics(self, inner: BackboneClassifier, device: torch.device) -> dict[str, float]:
        """``classifier_top1``: the trained classifier's top-1 on the labelled eval images (the model as trained:
        its running batch-norm statistics); ``labelled_probe_top1`` (`labelled_probe_top1`); ``labelled_images``."""
        s = self.settings()
        was_training = inner.training
        inner.eval()
        try:
            rows = (self.eval.labels >= 0).nonzero().flatten()
            logits = torch.cat([inner.classifier(image_features(inner.backbone, self.eval.images[rows[i:i + 1024]],
                                                                s, device)).cpu()
                                for i in range(0, len(rows), 1024)])
        finally:
            inner.train(was_training)
        top1 = (logits.argmax(dim=1) == self.eval.labels[rows]).float().mean()
        probe = labelled_probe_top1(inner.backbone, self.train, self.eval, self.labelled, s, device)
        return {"classifier_top1": float(top1), "labelled_probe_top1": probe,
                "labelled_images": float(self.labelled.sum())}

    def export(self, module: nn.Module, directory: Path) -> None:
        from safetensors.torch import save_file

        super().export(module, directory)
        state = self.core(module).classifier.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(Path(directory) / CLASSIFIER_FILE))

    def eval_meta(self) -> dict[str, Any]:
        p = self.params
        return {**super().eval_meta(), "classifier_file": CLASSIFIER_FILE, "classifier_head": p.head,
                "label_fraction": p.label_fraction, "labelled_images": int(self.labelled.sum())}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "label_fraction": self.params.label_fraction,
                "labelled_images": int(self.labelled.sum())}
