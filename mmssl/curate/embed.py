"""Encoders for the embedding filters (CLIP score, semantic dedup): an open_clip model (an mmssl CLIP output
folder, any folder in open_clip's ``local-dir`` format, or an open_clip architecture name with its pretrained
weights) or, for text only, a sentence-transformers folder. Embeddings come back L2-normalised, float32, on
the CPU; batches run on the chosen device without gradients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmssl.errors import RecipeError


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" if str(exc) else type(exc).__name__


class Encoder:
    """``images(list of PIL images)`` and ``texts(list of str)`` -> ``[n, D]`` normalised embeddings."""

    def __init__(self, model: str, pretrained: str | None, device: str, where: str):
        from mmssl.data.text_views.backtranslation import resolve_device
        from mmssl.remote_code import refuse_prompts

        refuse_prompts()
        self.where = where
        self.device = torch.device(resolve_device(device))
        folder = Path(model).expanduser()
        self.clip: Any = None
        self.sentence: Any = None
        if folder.is_dir() and (folder / "open_clip_config.json").is_file():
            self._load_clip(f"local-dir:{folder.resolve()}", None)
        elif folder.is_dir() and (folder / "modules.json").is_file():
            self._load_sentence(str(folder))
        elif folder.exists():
            raise RecipeError(f"{where}.model {model!r}: not an open_clip folder (open_clip_config.json, as an "
                              "mmssl CLIP output folder holds) nor a sentence-transformers folder (modules.json)")
        elif not pretrained and not model.startswith("hf-hub:"):
            raise RecipeError(f"{where}.model {model!r}: an open_clip architecture name needs {where}.pretrained "
                              "(its pretrained tag, or a local weights file); random weights score nothing")
        else:
            self._load_clip(model, pretrained)

    def _load_clip(self, name: str, pretrained: str | None) -> None:
        try:
            import open_clip
        except ImportError:
            raise RecipeError(f"{self.where} needs open_clip: pip install 'mmssl[clip]'") from None
        from mmssl.models.clip import register_model_configs

        register_model_configs()
        try:
            model, _, self.preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained,
                                                                              device=self.device)
        except Exception as exc:
            raise RecipeError(f"{self.where}.model {name!r}: open_clip could not load it ({_describe(exc)})") from None
        self.clip = model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)

    def _load_sentence(self, folder: str) -> None:
        from sentence_transformers import SentenceTransformer

        try:
            self.sentence = SentenceTransformer(folder, device=str(self.device), trust_remote_code=False)
        except Exception as exc:
            raise RecipeError(f"{self.where}.model {folder!r}: could not load it as a SentenceTransformer "
                              f"({_describe(exc)})") from None

    @property
    def has_images(self) -> bool:
        return self.clip is not None

    @torch.no_grad()
    def images(self, images: list[Any]) -> np.ndarray:
        if self.clip is None:
            raise RecipeError(f"{self.where}.model is a text encoder: image embeddings need an open_clip model")
        batch = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        return self._normalised(self.clip.encode_image(batch))

    @torch.no_grad()
    def texts(self, texts: list[str]) -> np.ndarray:
        if self.sentence is not None:
            return self.sentence.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                        normalize_embeddings=True, show_progress_bar=False).astype(np.float32)
        return self._normalised(self.clip.encode_text(self.tokenizer(texts).to(self.device)))

    @staticmethod
    def _normalised(features: torch.Tensor) -> np.ndarray:
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
