"""DeepCluster (Caron et al. 2018, "Deep Clustering for Unsupervised Learning of Visual Features"): at the start
of every epoch the backbone's features of the whole training set (eval view; PCA, whitening and L2 normalisation)
are clustered by k-means (`mmssl.models.kmeans`: faiss where installed); the cluster indices become pseudo-labels
for the epoch and a freshly initialised classifier head (its optimiser state forgotten too, as the paper's code
builds a new optimiser for it) learns them with the backbone. Clusters count equally: each image's loss is
weighted by 1 / (its cluster's size), the expectation of the paper's uniform sampling over clusters with lower
variance and without changing the data order. The assignments are module state, so a resumed run continues
with exactly the epoch's pseudo-labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.errors import RecipeError
from mmssl.models.image_features import image_features, precise_bn
from mmssl.models.kmeans import kmeans
from mmssl.models.vision import Backbone
from mmssl.objectives.image_ssl import ImageSSL, ImageSSLParams
from mmssl.registry import register_objective
from mmssl.schema import PositiveInt


@dataclass
class DeepClusterParams(ImageSSLParams):
    num_clusters: PositiveInt = 10000  # the paper: 10x the number of ImageNet classes
    pca_dim: PositiveInt = 256
    kmeans_iterations: PositiveInt = 20
    balanced: bool = True  # weight each image by 1 / its cluster's size


class DeepClusterModule(nn.Module):
    def __init__(self, backbone: Backbone, hidden_dim: int, num_clusters: int, size: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(backbone.dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                                  nn.Linear(hidden_dim, num_clusters))
        self.register_buffer("pseudo_labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("labels_epoch", torch.full((), -1, dtype=torch.long))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        return features, self.head(features)


@register_objective("deepcluster")
class DeepCluster(ImageSSL):
    Params = DeepClusterParams
    num_views = 1

    def stream_refusal(self) -> str | None:
        return "it clusters the features of every training image each epoch (a full pass over the data)"

    def build_module(self, backbone: Backbone) -> nn.Module:
        p = self.params
        if p.num_clusters > len(self.train):
            raise RecipeError(f"objective.num_clusters={p.num_clusters} exceeds the {len(self.train)} training "
                              "images; lower objective.num_clusters")
        return DeepClusterModule(backbone, p.hidden_dim, p.num_clusters, len(self.train))

    @torch.no_grad()
    def cluster(self, module: DeepClusterModule, epoch: int) -> None:
        """Pseudo-labels of every training image for `epoch`, and a fresh classifier head (seeded by epoch)."""
        p = self.params
        device = next(module.parameters()).device
        settings = self.settings()
        backbone = precise_bn(module.backbone, self.train.images, settings, device)
        was_training = backbone.training
        backbone.eval()
        features = image_features(backbone, self.train.images, settings, device)
        backbone.train(was_training)
        module.pseudo_labels.copy_(kmeans(reduce_features(features, p.pca_dim), p.num_clusters,
                                          p.kmeans_iterations, seed=self.recipe.seed * 1000 + epoch)[1])
        module.labels_epoch.fill_(epoch)
        with torch.random.fork_rng(devices=[]):  # the training RNG stream is left as it was
            torch.manual_seed(self.recipe.seed * 1000 + epoch)
            for layer in module.head:
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        self.reset_optimizer_state(module.head.parameters())

    def step_loss(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        core = self.core(module)
        if module.training and int(core.labels_epoch) != self.epoch:
            self.cluster(core, self.epoch)
        labels = core.pseudo_labels[batch["index"].to(core.pseudo_labels.device)]
        features, logits = module(batch["view1"])
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
        counts = torch.bincount(core.pseudo_labels, minlength=logits.shape[1])
        if self.params.balanced:
            weights = 1.0 / counts.clamp(min=1)[labels].float()
            loss = (losses * weights).sum() / weights.sum()
        else:
            loss = losses.mean()
        used = int((counts > 0).sum())
        return {"loss": loss, "pseudo_label_accuracy": (logits.detach().argmax(1) == labels).float().mean(),
                "clusters_used": torch.tensor(float(used)), "embedding": features.detach()}


def reduce_features(x: torch.Tensor, dim: int) -> torch.Tensor:
    """PCA to `dim` dimensions with whitening, then L2 normalisation (the paper's pre-processing)."""
    x = x - x.mean(dim=0, keepdim=True)
    dim = min(dim, x.shape[1], x.shape[0])
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    projected = x @ v[:dim].t() / (s[:dim] / (x.shape[0] - 1) ** 0.5).clamp(min=1e-6)
    return F.normalize(projected, dim=1)
