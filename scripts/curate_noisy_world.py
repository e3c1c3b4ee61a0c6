"""How well `mmssl curate` finds known faults: the built-in world as shards, deduplicated first (so the base
holds no duplicate the filters would find), then faults injected into a fraction of its samples (duplicate
images, blank images, boilerplate captions, Spanish captions, near-duplicate captions), curated with the
filters of configs/curate_world.yaml; prints precision and recall per filter against the injected truth.

    python scripts/curate_noisy_world.py --scenes 3000 --fraction 0.04
    python scripts/curate_noisy_world.py --set filters.language.expected=null   # all 97 languages

Spanish captions come from Apertium (`apertium -u eng-spa`, as mmssl's back-translation views use it) when it
is installed, else from a small word table over the world's vocabulary.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

from mmssl.config import DataConfig, WorldConfig
from mmssl.curate import REPORT, curate, load_curate_config
from mmssl.data.stream_sources import data_sources, record_captions
from mmssl.data.shards import image_bytes
from mmssl.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ("exact_dedup", "image", "caption", "language", "near_dedup")
BOILERPLATE = ["IMG_{n:04d}.jpg", "DSC{n:05d}.JPG", "untitled", "image", "Stock Photo", "https://example.com/img/{n}.png",
               "click here to enlarge", "photo_{n}.png", "no image available", "Screenshot {n}"]
WORDS = {"a": "un", "an": "un", "the": "el", "large": "grande", "small": "pequeño", "red": "rojo", "green": "verde",
         "blue": "azul", "yellow": "amarillo", "orange": "naranja", "purple": "morado", "circle": "círculo",
         "square": "cuadrado", "triangle": "triángulo", "cross": "cruz", "in": "en", "middle": "centro", "on": "en",
         "left": "izquierda", "right": "derecha", "top": "arriba", "bottom": "abajo", "above": "encima de",
         "below": "debajo de", "and": "y", "there": "hay", "is": "está", "placed": "colocado", "of": "de",
         "picture": "imagen", "to": "a", "at": "en"}


def _spanish(captions: list[str]) -> tuple[list[str], str]:
    try:
        from mmssl.data.text_views.backtranslation import ApertiumTranslator

        return ApertiumTranslator("eng-spa").translate(captions), "Apertium eng-spa"
    except Exception:  # no Apertium or no pair: a word table
        return [" ".join(WORDS.get(w.strip(","), w) for w in c.split()) for c in captions], "a word table"


def _blank(rng: random.Random) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3))).save(out, format="PNG")
    return out.getvalue()


def _variant(caption: str, rng: random.Random) -> str:
    """The same caption in other case and punctuation."""
    words = caption.split()
    choice = rng.randrange(3)
    if choice == 0:
        return caption.capitalize() + "."
    if choice == 1:
        return caption.upper() + "!"
    return ", ".join([" ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2:])]).title()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3000)
    parser.add_argument("--fraction", type=float, default=0.04, help="of the base samples, per fault type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=str(ROOT / "configs" / "curate_world.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the config for the measured run, e.g. filters.language.expected=null")
    parser.add_argument("--work", help="a new folder for the shards (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="curate-noisy-"))
    rng = random.Random(args.seed)
    start = time.perf_counter()

    world = DataConfig(source="world", world=WorldConfig(num_scenes=args.scenes, image_size=64, seed=args.seed))
    prepare(world, str(work / "world"), "image_text", shard_size=1000)
    base_cfg = load_curate_config(args.config, [f"input.path={work / 'world'}", f"output_dir={work / 'base'}",
                                                "filters.caption=null", "filters.image=null", "filters.language=null"])
    base_summary = curate(base_cfg)
    (source,) = data_sources(DataConfig(source="files", path=str(work / "base"), streaming=True), "image_text")
    base = [(image_bytes(r), record_captions(r, {})) for shard in source.shards for r in source.reader(shard)]

    count = int(len(base) * args.fraction)
    positions = rng.sample(range(20, len(base)), count * len(FAULTS))
    truth = {i: FAULTS[n // count] for n, i in enumerate(positions)}
    clean = [i for i in range(len(base)) if i not in truth]
    spanish, how = _spanish([base[i][1][0] for i in sorted(i for i, f in truth.items() if f == "language")])
    spanish_of = dict(zip(sorted(i for i, f in truth.items() if f == "language"), spanish))
    noisy = []
    for i, (image, captions) in enumerate(base):
        fault = truth.get(i)
        earlier = [j for j in clean if j < i] or clean[:1]
        if fault == "exact_dedup":
            image = base[rng.choice(earlier)][0]
        elif fault == "image":
            image = _blank(rng)
        elif fault == "caption":
            captions = [rng.choice(BOILERPLATE).format(n=rng.randrange(10000))]
        elif fault == "language":
            captions = [spanish_of[i]]
        elif fault == "near_dedup":
            captions = [_variant(base[rng.choice(earlier)][1][0], rng)]
        noisy.append((image, captions))

    (work / "noisy").mkdir()
    keys = {}
    for part in range(0, len(noisy), 1000):
        name = f"noisy-{part // 1000:04d}.tar"
        with tarfile.open(work / "noisy" / name, "w") as tar:
            for i in range(part, min(part + 1000, len(noisy))):
                image, captions = noisy[i]
                keys[f"{name}/n{i:06d}"] = truth.get(i)
                for member, data in ((f"n{i:06d}.png", image), (f"n{i:06d}.txt", captions[0].encode()),
                                     (f"n{i:06d}.json", json.dumps({"captions": captions}).encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

    cfg = load_curate_config(args.config, [f"input.path={work / 'noisy'}", f"output_dir={work / 'curated'}",
                                           "report_examples=1000000", *args.set])
    summary = curate(cfg)
    report = json.loads((work / "curated" / REPORT).read_text())
    dropped_by = {e["key"]: name for name, items in report["examples"].items() for e in items}

    print(f"world: {args.scenes} scenes -> {base_summary['kept']} after exact + near dedup (the base); "
          f"{count} faults of each kind injected ({len(truth)} of {len(noisy)} samples); Spanish from {how}")
    print(f"curated: kept {summary['kept']} of {summary['read']}, dropped {summary['dropped']} "
          f"({time.perf_counter() - start:.1f} s in all)\n")
    print("| filter | injected | dropped by it | correct | precision | recall |")
    print("|---|---|---|---|---|---|")
    for name in FAULTS:
        injected = sum(1 for f in keys.values() if f == name)
        by_it = [k for k, f in dropped_by.items() if f == name]
        correct = sum(1 for k in by_it if keys.get(k) == name)
        precision = correct / len(by_it) if by_it else float("nan")
        print(f"| {name} | {injected} | {len(by_it)} | {correct} | {precision:.3f} | {correct / injected:.3f} |")
    clean_dropped = sum(1 for k, f in keys.items() if f is None and k in dropped_by)
    faulty_kept = sum(1 for k, f in keys.items() if f is not None and k not in dropped_by)
    print(f"\nclean samples dropped: {clean_dropped} of {len(keys) - len(truth)}; faulty samples kept: "
          f"{faulty_kept} of {len(truth)}; folder {work}")


if __name__ == "__main__":
    main()
