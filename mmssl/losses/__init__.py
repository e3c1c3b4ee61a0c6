"""Contrastive losses and negative sources shared by SimCSE, retrieval training and CLIP."""

from mmssl.losses.cached import RandState, cached_contrastive_backward, split_batch
from mmssl.losses.contrastive import (
    InfoNCELoss,
    LearnableTemperature,
    contrastive_margin_loss,
    duplicate_mask,
    info_nce,
    mutual_information_lower_bound,
    pairwise_distance,
    text_ids,
    triplet_loss,
)
from mmssl.losses.negatives import (
    EmbeddingQueue,
    cosine_momentum,
    gather_no_grad,
    gather_with_grad,
    local_slice_offset,
    make_momentum_copy,
    momentum_update,
    rank,
    world_size,
)

__all__ = [
    "info_nce",
    "InfoNCELoss",
    "LearnableTemperature",
    "duplicate_mask",
    "text_ids",
    "contrastive_margin_loss",
    "triplet_loss",
    "pairwise_distance",
    "mutual_information_lower_bound",
    "gather_with_grad",
    "gather_no_grad",
    "local_slice_offset",
    "world_size",
    "rank",
    "EmbeddingQueue",
    "momentum_update",
    "make_momentum_copy",
    "cosine_momentum",
    "cached_contrastive_backward",
    "split_batch",
    "RandState",
]
