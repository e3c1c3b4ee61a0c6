"""Losses, one family per file, shared by the objectives (gathering from other processes:
:mod:`mmssl.distributed`). Momentum encoders and feature queues are model state: :mod:`mmssl.models.momentum`."""

from mmssl.losses.negative_cosine import negative_cosine, symmetric_negative_cosine
from mmssl.losses.cached import RandState, cached_contrastive_backward, split_batch
from mmssl.losses.contrastive import (
    LearnableTemperature,
    contrastive_margin_loss,
    duplicate_mask,
    info_nce,
    mutual_information_lower_bound,
    pairwise_distance,
    text_ids,
    triplet_loss,
)
from mmssl.losses.nt_xent import moco_v2_loss, moco_v3_loss, nt_xent

__all__ = [
    "info_nce",
    "LearnableTemperature",
    "duplicate_mask",
    "text_ids",
    "contrastive_margin_loss",
    "triplet_loss",
    "pairwise_distance",
    "mutual_information_lower_bound",
    "nt_xent",
    "moco_v2_loss",
    "moco_v3_loss",
    "negative_cosine",
    "symmetric_negative_cosine",
    "cached_contrastive_backward",
    "split_batch",
    "RandState",
]
