"""Captioning with open_clip's CoCa (Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation
Models"): the teacher-forced caption loss of its multimodal text decoder, and greedy caption generation.

open_clip 3.3's own ``CoCa.generate`` refuses to run with transformers 5 (it imports ``BeamSearchScorer``,
which transformers 5 removed, and then asserts that transformers is missing); `generate_captions` decodes
with the model's own forward pass instead, so a saved CoCa folder generates captions with open_clip alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SOT, EOT = 49406, 49407  # open_clip's bundled tokenizer: start and end of text


def is_coca(model: nn.Module) -> bool:
    return hasattr(model, "text_decoder") and hasattr(model, "_encode_image")


class CaptionModule(nn.Module):
    """A CoCa model trained by its caption loss: next-token cross-entropy of the decoder, padding ignored."""

    def __init__(self, model: nn.Module, pad_id: int = 0):
        super().__init__()
        self.model = model
        self.pad_id = pad_id

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(image, text)
        logits, labels = out["logits"], out["labels"]
        loss = F.cross_entropy(logits.float().permute(0, 2, 1), labels, ignore_index=self.pad_id)
        valid = labels != self.pad_id
        correct = (logits.detach().argmax(-1) == labels) & valid
        return {"loss": loss, "token_accuracy": correct.sum() / valid.sum().clamp(min=1)}


@torch.no_grad()
def generate_captions(model: nn.Module, images: torch.Tensor, max_length: int = 20, sot: int = SOT,
                      eot: int = EOT) -> torch.Tensor:
    """Greedy decoding: [B, <= max_length] token ids starting with `sot` (at most the text tower's context length);
    rows that end early are padded with 0 after their `eot`. `images` are normalised model inputs."""
    max_length = min(max_length, int(getattr(model.text, "context_length", max_length)))  # the text tower's positions
    was_training = model.training
    model.eval()
    try:
        latent, embs = model._encode_image(images)
        out = torch.full((images.shape[0], 1), sot, dtype=torch.long, device=images.device)
        done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        for _ in range(max_length - 1):
            logits = model(images, out, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1]
            logits[:, sot] = float("-inf")
            step = logits.argmax(-1)
            step = torch.where(done, torch.zeros_like(step), step)
            out = torch.cat([out, step[:, None]], dim=1)
            done |= step == eot
            if bool(done.all()):
                break
        return out
    finally:
        model.train(was_training)


def decode(tokenizer, ids: torch.Tensor) -> list[str]:
    """Texts of generated ids (open_clip's bundled tokenizer), without the start/end markers."""
    texts = []
    for row in ids.tolist():
        row = [t for t in row[1:] if t not in (0, SOT)]
        if EOT in row:
            row = row[: row.index(EOT)]
        texts.append(tokenizer.decode(row).strip())
    return texts
