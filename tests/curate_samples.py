"""Tiny image-text shards with known faults, shared by the `mmssl curate` tests: SAMPLES (caption, image,
the filter that must drop it), written by `write_shards` as two WebDataset tars."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def png(seed: int | None, size: tuple[int, int] = (48, 48)) -> bytes:
    if seed is None:  # blank: one colour
        image = Image.new("RGB", size, (200, 30, 90))
    else:
        image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# (caption, image, the filter that must drop it or None)
SAMPLES = [
    ("a red circle next to a blue square", png(1), None),
    ("two green triangles on a white table", png(2), None),
    ("a yellow star above an orange cross", png(1), "exact_dedup"),  # the image of sample 0
    ("the purple ball rolls under the wooden chair", png(3), None),
    ("un perro marrón duerme junto a la puerta roja de la casa", png(4), "language"),
    ("a grey cat sleeping on a soft blanket", png(None), "image"),  # blank
    ("IMG_0001.jpg", png(5), "caption"),
    ("Two Green Triangles, on a white table!", png(6), "near_dedup"),  # sample 1's caption, case/punctuation
    ("a small boat sails across the calm blue lake", png(1), "exact_dedup"),  # the image of sample 0 again
    ("a tall lighthouse stands on the rocky coast", png(7), None),
    ("stock photo", png(8), "caption"),
    ("a brown horse runs through the green field", png(9, (10, 10)), "image"),  # too small
    ("a broken picture of a garden", b"not an image", "unusable"),
]
EXPECTED = {"unusable": 1, "caption": 2, "image": 2, "language": 1, "exact_dedup": 2, "near_dedup": 1}


def write_shards(folder: Path) -> None:
    folder.mkdir(parents=True)
    for part, rows in enumerate((SAMPLES[:7], SAMPLES[7:])):
        with tarfile.open(folder / f"raw-{part}.tar", "w") as tar:
            for i, (caption, image, _) in enumerate(rows):
                for name, data in ((f"s{part}{i:02d}.png", image), (f"s{part}{i:02d}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def curate_config(inp: Path, out: Path, **filters) -> dict:
    return {"input": {"source": "files", "path": str(inp)}, "output_dir": str(out), "kind": "image_text",
            "shard_size": 3, "filters": {"language": {"keep": ["en"], "expected": ["en", "es", "fr", "de"]},
                                         **filters}}
