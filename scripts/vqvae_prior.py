"""The second stage of a VQ-VAE: an autoregressive prior over its code grids, trained with mmssl's causal LM
objective (``clm``) unchanged, then sampled and decoded into images.

    python scripts/vqvae_prior.py VQVAE_DIR [--out DIR] [--steps 600] [--samples 64] [KEY=VALUE ...]

1. Every training and eval image of the VQ-VAE's recipe (``VQVAE_DIR/recipe.yaml``) is encoded by the exported
   VQ-VAE (``mmssl.objectives.vqvae.load_vqvae``) into its h x w code grid, read in raster order, and written as one
   line of words ``<|image|> c17 c3 ...`` (``DIR/codes/train.txt``, ``eval.txt``), with a word-level tokenizer
   whose vocabulary is exactly the K codes, ``<|image|>`` and ``<|endoftext|>`` (``DIR/codes/tokenizer``), so each
   code is one token.
2. A small GPT-2 learns the sequences with the ``clm`` recipe written to ``DIR/prior_recipe.yaml`` (packing: every
   block is 4 whole images, each ``<|image|>`` codes ``<|endoftext|>``, so every image starts at a position and
   after a token the model has seen images start at); rerun it alone with ``mmssl train``. KEY=VALUE overrides
   apply to that recipe.
3. The held-out negative log-likelihood of the eval images' codes, each image conditioned on ``<|image|>`` alone
   (as the first image of a training block), in bits per code, against a unigram model of the training codes
   (add-one smoothed) and the uniform log2 K.
4. ``--samples`` code grids sampled from the prior after ``<|image|>`` (temperature 1, codes only) are decoded by the
   VQ-VAE's decoder into ``DIR/prior/samples.png``; ``DIR/prior/reconstructions.png`` shows eval images (top half)
   above their reconstructions from their codes, for comparison (``mmssl report DIR/prior`` shows both beside the
   prior's curves). The figures go to ``DIR/prior_results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EOS = "<|endoftext|>"
BOS = "<|image|>"  # starts every image's line
OFFSET = 2  # token id of code k: k + OFFSET (0: <|endoftext|>, 1: <|image|>)


def encode_images(vq, images: torch.Tensor, image_size: int, batch_size: int = 256) -> torch.Tensor:
    """uint8 images ``[N, 3, S, S]`` -> code sequences ``[N, h * w]`` (raster order)."""
    from mmssl.data.image_views import eval_view

    out = [vq.codes_of(eval_view(images[i:i + batch_size], image_size, vq.mean, vq.std)).flatten(1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def code_line(codes: torch.Tensor) -> str:
    return " ".join([BOS, *(f"c{int(c)}" for c in codes)])


def code_tokenizer(num_codes: int, directory: Path):
    """A word-level tokenizer with one token per code (``c0`` .. ``c{K-1}``: ids 2 ..), ``<|endoftext|>`` (0) and
    ``<|image|>`` (1), saved to `directory` (``AutoTokenizer.from_pretrained`` loads it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0, BOS: 1, **{f"c{k}": k + OFFSET for k in range(num_codes)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def unigram_bits(train: torch.Tensor, held_out: torch.Tensor, num_codes: int) -> float:
    """Cross-entropy (bits per code) of `held_out` codes under the add-one smoothed code frequencies of `train`."""
    counts = torch.bincount(train.flatten(), minlength=num_codes).double() + 1
    logp = torch.log2(counts / counts.sum())
    return float(-logp[held_out.flatten()].mean())


@torch.no_grad()
def prior_bits(model, sequences: torch.Tensor, bos_id: int, batch_size: int = 256) -> float:
    """Mean negative log2-likelihood per code of `sequences` (token ids ``[N, L]``), each after `bos_id` alone."""
    total, count = 0.0, 0
    for i in range(0, len(sequences), batch_size):
        ids = sequences[i:i + batch_size]
        inputs = torch.cat([torch.full((len(ids), 1), bos_id), ids], dim=1)
        logits = model(input_ids=inputs[:, :-1]).logits.float()
        logp = torch.log_softmax(logits, dim=-1).gather(2, ids.unsqueeze(2)).squeeze(2)
        total += float(-logp.sum())
        count += ids.numel()
    return total / count / math.log(2)


@torch.no_grad()
def sample(model, n: int, length: int, bos_id: int, generator: torch.Generator) -> torch.Tensor:
    """`n` token sequences of `length` codes, each after `bos_id`, sampled at temperature 1 among the code tokens
    (ids from ``OFFSET``) only."""
    ids = torch.full((n, 1), bos_id)
    for _ in range(length):
        logits = model(input_ids=ids).logits[:, -1].float()
        logits[:, :OFFSET] = -math.inf
        ids = torch.cat([ids, torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)], dim=1)
    return ids[:, 1:]


def save_grid(images: torch.Tensor, path: Path, columns: int = 8, upscale: int = 2) -> None:
    """Images ``[N, 3, S, S]`` in [0, 1] as one PNG, `columns` per row, 1-pixel grey gaps, nearest upscaled."""
    from PIL import Image

    n, _, s, _ = images.shape
    rows = math.ceil(n / columns)
    canvas = torch.full((3, rows * (s + 1) + 1, columns * (s + 1) + 1), 0.5)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[:, 1 + r * (s + 1):1 + r * (s + 1) + s, 1 + c * (s + 1):1 + c * (s + 1) + s] = image
    array = (canvas.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(array).resize((array.shape[1] * upscale, array.shape[0] * upscale), Image.NEAREST).save(path)


def prior_recipe(out: Path, codes_dir: Path, length: int, steps: int, seed: int) -> dict:
    block = 4 * (length + 2)  # 4 whole images per block: <|image|> codes <|endoftext|>
    return {
        "name": "vqvae-prior", "output_dir": str(out / "prior"), "seed": seed,
        "data": {"source": "files", "path": str(codes_dir / "train.txt"), "eval_path": str(codes_dir / "eval.txt"),
                 "format": "txt"},
        "tokenizer": {"path": str(codes_dir / "tokenizer")},
        "model": {"arch": "gpt2", "config": {"n_embd": 128, "n_layer": 4, "n_head": 4, "n_positions": block}},
        "objective": {"name": "clm", "max_length": block, "packing": True},
        "train": {"batch_size": 32, "learning_rate": 1e-3, "warmup_ratio": 0.05, "scheduler": "cosine",
                  "max_steps": steps, "eval_every": max(steps // 2, 1), "log_every": 50, "progress": False,
                  "overwrite": True},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vqvae", type=Path, help="a folder exported by objective 'vqvae'")
    parser.add_argument("--out", type=Path, default=None, help="default: VQVAE/prior_stage")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the prior's clm recipe")
    args = parser.parse_args()
    run(args.vqvae, args.out or args.vqvae / "prior_stage", args.steps, args.samples, args.overrides)


def run(vqvae_dir: Path, out: Path, steps: int, samples: int, overrides: list[str] | None = None) -> dict:
    import yaml
    from transformers import AutoModelForCausalLM

    from mmssl.data.image_sources import load_images
    from mmssl.objectives.vqvae import load_vqvae
    from mmssl.recipes import load_recipe
    from mmssl.train.loop import train

    vq = load_vqvae(vqvae_dir)
    cfg = vq.config
    if cfg.get("codebook_collapsed"):
        print(f"warning: {vqvae_dir} records a collapsed codebook (perplexity {cfg['codebook_perplexity']:.2f}); "
              "the prior models what few codes there are", file=sys.stderr)
    recipe = load_recipe(vqvae_dir / "recipe.yaml")
    splits = load_images(recipe.data, cfg["image_size"], recipe.seed)
    if splits.eval is None or not len(splits.eval):
        raise SystemExit("the VQ-VAE's data has no eval split: the held-out likelihood needs one")
    train_codes = encode_images(vq, splits.train.images, cfg["image_size"])
    eval_codes = encode_images(vq, splits.eval.images, cfg["image_size"])
    codes_dir = out / "codes"
    codes_dir.mkdir(parents=True, exist_ok=True)
    for name, codes in (("train", train_codes), ("eval", eval_codes)):
        (codes_dir / f"{name}.txt").write_text("".join(code_line(c) + "\n" for c in codes), encoding="utf-8")
    tokenizer = code_tokenizer(cfg["codebook_size"], codes_dir / "tokenizer")
    length = train_codes.shape[1]
    raw = prior_recipe(out, codes_dir, length, steps, recipe.seed)
    (out / "prior_recipe.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    metrics = train(load_recipe(out / "prior_recipe.yaml", overrides or []))
    model = AutoModelForCausalLM.from_pretrained(str(out / "prior")).eval()
    bos = tokenizer.convert_tokens_to_ids(BOS)
    bits = prior_bits(model, eval_codes + OFFSET, bos)
    sampled = sample(model, samples, length, bos, torch.Generator().manual_seed(recipe.seed)) - OFFSET
    side = cfg["grid"][0]
    pictures = out / "prior"  # the prior's run folder, where `mmssl report` finds them
    save_grid(vq.decode(sampled.view(-1, side, side)), pictures / "samples.png")
    shown = splits.eval.images[:samples // 2].float() / 255
    recon = vq.decode(eval_codes[:samples // 2].view(-1, side, side))
    save_grid(torch.cat([shown, recon]), pictures / "reconstructions.png")
    result = {"prior_bits_per_code": bits, "unigram_bits_per_code": unigram_bits(train_codes, eval_codes,
                                                                                 cfg["codebook_size"]),
              "uniform_bits_per_code": math.log2(cfg["codebook_size"]), "codes_per_image": length,
              "train_images": len(train_codes), "eval_images": len(eval_codes), "prior_steps": metrics["steps"],
              "prior_train_s": metrics["train_seconds"], "distinct_sampled_codes": int(sampled.unique().numel()),
              "samples_png": str(pictures / "samples.png"),
              "reconstructions_png": str(pictures / "reconstructions.png"),
              "vqvae_codebook_perplexity": cfg["codebook_perplexity"], "vqvae_codes_used": cfg["codes_used"],
              "vqvae_reconstruction_mse": cfg["reconstruction_mse"]}
    (out / "prior_results.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
