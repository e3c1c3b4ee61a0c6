"""Supervised contrastive learning (Khosla et al. 2020, "Supervised Contrastive Learning") for images: SimCLR's
two views, backbone and projection MLP, and SupCon's L_out (`mmssl.losses.supcon`): every view of every image with
the anchor's class is a positive besides its own other view.

Labels on part of the data: ``label_fraction`` keeps the labels of a stratified, seeded, nested choice of the
training rows (`mmssl.data.label_fraction.labelled_rows`, the same rows `mmssl finetune` and the semi-supervised
methods use for one seed); the other rows, and images without a label, are contrasted as in SimCLR (their other
view is their only positive). So ``label_fraction`` between 0 and 1 is SimCLR on the unlabelled part and SupCon on
the labelled part in one loss; a combined recipe adds any other SSL objective on the same backbone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import nn

from mmssl.data.label_fraction import labelled_rows
from mmssl.losses.supcon import supcon
from mmssl.models.heads import simclr_projection
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams, check_pairs_per_step
from mmssl.objectives.simclr import SimCLRModule
from mmssl.registry import register_objective
from mmssl.schema import PositiveFloat, PositiveInt, Range


@dataclass
class SupConParams(ImageSSLParams):
    temperature: PositiveFloat = 0.1  # Khosla et al.: 0.1
    projection_layers: PositiveInt = 2
    # the share of the labelled training rows whose label is used (stratified, seeded by the recipe's seed)
    label_fraction: Annotated[float, Range(0, 1, open_low=True)] = 1.0
    gather: bool = True  # anchors, positives and negatives from every process


@register_objective("supcon")
class SupCon(ImageSSL):
    Params = SupConParams

    def check(self, world_size: int) -> None:
        check_pairs_per_step(self.recipe, world_size if self.params.gather else 1, "SupCon")

    def stream_refusal(self) -> str | None:
        return ("SupCon needs each training image's class label, which streamed images do not carry (the stream "
                "yields only the image and its id)")

    def setup(self) -> None:
        super().setup()
        keep = labelled_rows(self.train.labels, self.params.label_fraction, self.recipe.seed, self.class_names)
        self.used_labels = torch.where(keep, self.train.labels, torch.full_like(self.train.labels, -1))

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        return SimCLRModule(backbone, simclr_projection(backbone.dim, p.hidden_dim, p.projection_dim,
                                                        num_layers=p.projection_layers))

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p = self.params
        z1, z2 = module(batch["view1"], batch["view2"])
        labels = self.used_labels[batch["index"].cpu()].to(z1.device)
        loss = supcon(z1, z2, labels, p.temperature, gather=p.gather)
        return {"loss": loss, "embedding": z1, "labelled": (labels >= 0).float().mean()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "label_fraction": self.params.label_fraction,
                "labelled_train_images": int((self.used_labels >= 0).sum())}
