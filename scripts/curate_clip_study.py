"""Does `mmssl curate` pay for CLIP? (issue #24.) The built-in world (4 colours x 4 shapes, 48 px, as
configs/clip_world.yaml) as image-text shards, made noisy in known ways: 30% of the samples get another image's
captions (swapped), 20% are near-duplicate images (another sample's image shifted, resized or re-encoded as
JPEG, with its captions in another order), 10% have Spanish captions (Apertium if installed, else a word
table), 5% have blank or tiny images. The noisy copy is curated with configs/curate_world.yaml's filters plus
CLIP-score filtering and SemDeDup; the CLIP model that scores is trained on the noisy shards themselves (the
seed-0 uncurated run: there is no clean or pretrained scorer, as data filtering networks start). Measured:
precision and recall of each filter against the injected truth, and CLIP (mmssl-vit-tiny) trained on clean,
uncurated and curated shards and on the noisy copy less every injected fault (oracle: perfect filters), for the
same steps and batch size, evaluated on the same clean held-out data (the world's eval split: zero-shot top-1
over the 16 classes of single-object images, image<->text R@1).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/curate_clip_study.py --scenes 3000 --steps 500 --batch-size 64 \
        --seeds 0 1 2 --threads 1 --work build/curate_clip_study --out build/curate_clip_study.json \
        --train curated-top0.7-nosem curated-top0.5-nosem

Each curated copy is one (clip_score.top_fraction, semantic_dedup.threshold) setting, measured against the truth;
CLIP trains on the first that keeps at least 10% of the samples (a rule that needs no truth) unless --train names
others. `near_dedup` (MinHash over captions) is off: the world's captions are templates, so it would drop over
half of the clean samples (docs/data/curate.md); `--set filters.near_dedup.threshold=0.8` turns it back on.
A re-run with the same --work reuses the shards, the curated copies and every finished run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

from mmssl.config import WorldConfig
from mmssl.curate import REPORT, curate, load_curate_config
from mmssl.errors import DataError
from mmssl.data.world import class_names, world_columns
from mmssl.eval.image_text import WORLD_TEMPLATES

ROOT = Path(__file__).resolve().parents[1]
FAULTS = {"swapped": 0.30, "near_duplicate": 0.20, "spanish": 0.10, "blank_tiny": 0.05}  # of the noisy set
TARGET = {"clip_score": "swapped", "semantic_dedup": "near_duplicate", "exact_dedup": "near_duplicate",
          "language": "spanish", "image": "blank_tiny"}  # the fault each filter is meant to find
WORDS = {"a": "un", "an": "un", "the": "el", "large": "grande", "small": "pequeño", "red": "rojo", "green": "verde",
         "blue": "azul", "yellow": "amarillo", "circle": "círculo", "square": "cuadrado", "triangle": "triángulo",
         "cross": "cruz", "in": "en", "middle": "centro", "on": "en", "left": "izquierda", "right": "derecha",
         "top": "arriba", "bottom": "abajo", "above": "encima de", "below": "debajo de", "and": "y", "there": "hay",
         "is": "está", "placed": "colocado", "of": "de", "picture": "imagen", "to": "a", "at": "en"}
Sample = dict  # {"image": bytes, "ext": "png"|"jpg", "captions": [str], "label": str | None}


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def world_samples(scenes: int, split: str, seed: int) -> list[Sample]:
    """The world's scenes as samples, exact image duplicates dropped; single-object scenes carry their class."""
    cfg = WorldConfig(num_scenes=scenes, image_size=48, num_colours=4, num_shapes=4, pair_fraction=0.1, seed=seed)
    cols, names, seen, out = world_columns(cfg, "image_text", split), class_names(cfg), set(), []
    for image, captions, label, single in zip(cols["image"], cols["captions"], cols["label"], cols["single"]):
        data = png(image)
        if (digest := hashlib.sha1(data).digest()) not in seen:
            seen.add(digest)
            out.append({"image": data, "ext": "png", "captions": captions, "label": names[label] if single else None})
    return out


def key_of(prefix: str, i: int, size: int = 1000) -> str:
    """A sample's key as curate reports it: the tar's name and the member key."""
    return f"{prefix}-{i // size:04d}.tar/s{i:06d}"


def write_shards(folder: Path, samples: list[Sample], prefix: str, size: int = 1000) -> None:
    """WebDataset tars (KEY.png|jpg, KEY.txt, KEY.json) of `size` samples."""
    folder.mkdir(parents=True)
    for part in range(0, len(samples), size):
        name = f"{prefix}-{part // size:04d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for i in range(part, min(part + size, len(samples))):
                s, key = samples[i], f"s{i:06d}"
                meta = {"captions": s["captions"], **({"label": s["label"]} if s.get("label") else {})}
                for member, data in ((f"{key}.{s['ext']}", s["image"]), (f"{key}.txt", s["captions"][0].encode()),
                                     (f"{key}.json", json.dumps(meta, ensure_ascii=False).encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def near_copy(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A slightly altered copy: shifted by 1-2 pixels, resized by 3-6%, or re-encoded as JPEG (quality 85-95)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    how = rng.choice(["shift", "resize", "jpeg"])
    if how == "shift":
        dx, dy = rng.choice([-2, -1, 1, 2]), rng.choice([-2, -1, 0, 1, 2])
        image = image.transform(image.size, Image.AFFINE, (1, 0, dx, 0, 1, dy), fillcolor=(255, 255, 255))
    elif how == "resize":
        side = round(image.width * rng.choice([0.94, 0.96, 1.04, 1.06]))
        image = image.resize((side, side), Image.BICUBIC)
    else:
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=rng.randint(85, 95))
        return out.getvalue(), "jpg"
    return png(image), "png"


def blank_or_tiny(data: bytes, rng: random.Random) -> bytes:
    """Half blank (one colour), half tiny (the scene at 12-20 px)."""
    if rng.random() < 0.5:
        return png(Image.new("RGB", (48, 48), tuple(rng.randrange(256) for _ in range(3))))
    side = rng.randint(12, 20)
    return png(Image.open(io.BytesIO(data)).convert("RGB").resize((side, side), Image.BICUBIC))


def spanish(texts: list[str]) -> tuple[list[str], str]:
    try:
        from mmssl.data.text_views.backtranslation import ApertiumTranslator

        return ApertiumTranslator("eng-spa").translate(texts), "Apertium eng-spa"
    except Exception:  # no Apertium or no pair: a word table
        return [" ".join(WORDS.get(w.strip(","), w) for w in t.split()) for t in texts], "a word table"


def inject(clean: list[Sample], seed: int) -> tuple[list[Sample], dict[int, str], dict[int, int], str]:
    """The noisy copy: faults on disjoint samples (a near-duplicate copies an earlier clean sample); returns
    the samples, the fault of each faulty index, the original of each near-duplicate, and the Spanish source."""
    rng, n = random.Random(seed), len(clean)
    order = rng.sample(range(20, n), sum(int(f * n) for f in FAULTS.values()))
    fault, start = {}, 0
    for kind, fraction in FAULTS.items():
        fault.update({i: kind for i in order[start:start + int(fraction * n)]})
        start += int(fraction * n)
    noisy = [dict(s) for s in clean]
    swapped = sorted(i for i, k in fault.items() if k == "swapped")
    for i, j in zip(swapped, swapped[1:] + swapped[:1]):  # a cycle: each takes the next one's captions
        noisy[i]["captions"] = clean[j]["captions"]
    clean_idx, original = [i for i in range(n) if i not in fault], {}
    for i in sorted(i for i, k in fault.items() if k == "near_duplicate"):
        j = rng.choice([c for c in clean_idx if c < i])
        original[i] = j
        shift = rng.randrange(1, 5)
        noisy[i] = {"image": None, "ext": None, "captions": clean[j]["captions"][shift:] + clean[j]["captions"][:shift]}
        noisy[i]["image"], noisy[i]["ext"] = near_copy(clean[j]["image"], rng)
    es = sorted(i for i, k in fault.items() if k == "spanish")
    texts, how = spanish([c for i in es for c in clean[i]["captions"]])
    for i in es:
        k = len(clean[i]["captions"])
        noisy[i]["captions"], texts = texts[:k], texts[k:]
    for i in (i for i, k in fault.items() if k == "blank_tiny"):
        noisy[i]["image"] = blank_or_tiny(clean[i]["image"], rng)
    for s in noisy:
        s["label"] = None
    return noisy, fault, original, how


def train(work: Path, name: str, data: Path, eval_path: Path, seed: int, steps: int, batch: int,
          threads: int | None = None) -> dict:
    """One CLIP run (configs/clip_world.yaml's model, objective and optimiser) through the CLI; its eval."""
    recipe = yaml.safe_load((ROOT / "configs" / "clip_world.yaml").read_text())
    recipe.update(name=name, output_dir=str(work / "runs" / name), seed=seed,
                  data={"source": "files", "path": str(data), "eval_path": str(eval_path), "streaming": False})
    recipe["objective"].update(class_names=class_names(WorldConfig(num_colours=4, num_shapes=4)),
                               templates=WORLD_TEMPLATES)
    recipe["train"].update(max_steps=steps, batch_size=batch, eval_every=0, save_every=0, progress=False)
    path = work / "recipes" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    (work / "runs").mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    metrics = work / "runs" / name / "metrics.json"
    if not metrics.is_file():
        start = time.perf_counter()
        with open(work / "runs" / f"{name}.log", "w") as log:  # the run's folder is the CLI's to create
            env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
            done = subprocess.run([sys.executable, "-m", "mmssl", "train", str(path)], stdout=log, stderr=log, env=env)
        if done.returncode:
            sys.exit(f"{name} failed:\n" + (work / "runs" / f"{name}.log").read_text()[-3000:])
        print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)
    result = json.loads(metrics.read_text())
    if result["steps"] != steps:
        sys.exit(f"{metrics} holds a run of {result['steps']} steps, not {steps}: use another --work")
    return result


def run_curate(work: Path, tag: str, noisy: Path, overrides: list[str]) -> tuple[dict, dict[str, str], float]:
    """Curate the noisy shards; the summary, the filter that dropped each dropped key, and samples/s."""
    cfg = load_curate_config(ROOT / "configs" / "curate_world.yaml", [
        f"input.path={noisy}", f"output_dir={work / tag}", "report_examples=1000000", *overrides])
    start = time.perf_counter()
    try:
        summary = curate(cfg)
    except DataError:  # curated before with other settings or filter code: start this copy and its runs over
        for stale in [work / tag, *(work / "runs").glob(f"{tag}-s*")]:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        start, summary = time.perf_counter(), curate(cfg)
    missing = [f for f in ("clip_score", "semantic_dedup") if getattr(cfg.filters, f) and f not in summary["filters"]]
    if missing:
        sys.exit(f"mmssl curate did not run {missing}: have the filters landed in mmssl/curate/run.py?")
    rate_file = work / f"{tag}-rate.json"  # a re-run finds the folder done in no time: keep the first rate
    if not summary.get("unchanged") or not rate_file.is_file():
        rate_file.write_text(json.dumps(summary["read"] / (time.perf_counter() - start)))
    report = json.loads((work / tag / REPORT).read_text())
    dropped = {e["key"]: name for name, items in report["examples"].items() for e in items}
    return summary, dropped, json.loads(rate_file.read_text())


def filter_scores(keys: list[str], fault: dict[int, str], original: dict[int, int], dropped: dict[str, str],
                  active: list[str]) -> dict:
    """Per filter: dropped, correct, precision, recall against the fault it targets. A dedup filter is also right
    to drop the original of a near-duplicate (then the copy stays); a copy counts as found if either went."""
    truth = {keys[i]: k for i, k in fault.items()}
    pairs = {keys[c]: keys[o] for c, o in original.items()}
    out = {}
    for name in sorted(set(dropped.values()) | set(active)):
        mine = {k for k, f in dropped.items() if f == name}
        target = TARGET.get(name)
        if target == "near_duplicate":
            right = {k for k in mine if truth.get(k) == target or k in pairs.values()}
            found = sum(1 for c, o in pairs.items() if c in mine or o in mine)
        else:
            right = {k for k in mine if target and truth.get(k) == target}
            found = len(right)
        total = sum(1 for k in truth.values() if k == target)
        out[name] = {"target": target, "dropped": len(mine), "correct": len(right),
                     "clean_dropped": len(mine - right - set(truth)),
                     "precision": len(right) / len(mine) if mine else None,
                     "recall": found / total if total else None}
    return out


def curate_settings(args, work: Path, keys: list[str], fault: dict[int, str], original: dict[int, int],
                    timings: dict) -> dict:
    """Curate the noisy shards once per (clip_score.top_fraction, semantic_dedup.threshold); the seed-0 uncurated
    run scores. Per setting: the overrides, curate's summary and samples/s, and each filter's precision/recall."""
    scorer, settings = work / "runs" / f"uncurated-s{args.seeds[0]}", {}
    for top in args.top_fractions:
        for sem in args.semantic_thresholds:
            tag = f"curated-top{top:g}" + ("" if sem == "0.95" else "-nosem" if sem == "off" else f"-sem{sem}")
            semantic = "filters.semantic_dedup=null" if sem == "off" else f"filters.semantic_dedup.threshold={sem}"
            overrides = ["filters.near_dedup=null", f"filters.clip_score.model={scorer}",
                         f"filters.clip_score.top_fraction={top}", semantic, *args.set]
            t = time.perf_counter()
            summary, dropped, rate = run_curate(work, tag, work / "noisy", overrides)
            timings[f"curate_{tag}_s"] = time.perf_counter() - t
            caught = {k: sum(keys[i] in dropped for i, f in fault.items() if f == k) / sum(f == k for f in fault.values())
                      for k in FAULTS}
            caught["clean"] = sum(k in dropped for i, k in enumerate(keys) if i not in fault) / (len(keys) - len(fault))
            settings[tag] = {"overrides": overrides, "summary": summary, "samples_per_s": rate,
                             "caught_by_any": caught,
                             "filters": filter_scores(keys, fault, original, dropped, summary["filters"])}
    return settings


def mean_std(runs: list[dict], key: str) -> tuple[float, float]:
    values = [100 * r["eval"][key] for r in runs]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3000, help="world scenes before exact image dedup")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each run (1 helps on a crowded machine)")
    parser.add_argument("--top-fractions", type=float, nargs="+", default=[0.7, 0.5],
                        help="clip_score.top_fraction values, each curated and measured")
    parser.add_argument("--semantic-thresholds", nargs="+", default=["0.95", "off"],
                        help="semantic_dedup.threshold values ('off': no semantic_dedup), each curated and measured")
    parser.add_argument("--train", nargs="+", metavar="TAG", help="curated copies to train CLIP on (default: the first "
                        "setting that keeps at least 10%% of the samples)")
    parser.add_argument("--work", help="a folder for shards and runs (default: a temporary one); reruns reuse it")
    parser.add_argument("--out", help="write every number to this JSON file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="curate config override")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="curate-clip-"))
    work.mkdir(parents=True, exist_ok=True)
    timings, t0 = {}, time.perf_counter()

    clean = world_samples(args.scenes, "train", 0)
    noisy, fault, original, how = inject(clean, 0)
    if not (work / "clean").is_dir():
        write_shards(work / "clean", clean, "clean")
        write_shards(work / "eval", world_samples(args.scenes, "eval", 0), "eval")
        write_shards(work / "noisy", noisy, "noisy")
    if not (work / "oracle").is_dir():  # perfect filters: the noisy copy without any injected fault
        write_shards(work / "oracle", [s for i, s in enumerate(noisy) if i not in fault], "oracle")
    keys = [key_of("noisy", i) for i in range(len(noisy))]
    timings["data_s"] = time.perf_counter() - t0
    print(f"clean world: {len(clean)} samples ({args.scenes} scenes, exact image duplicates dropped); noisy copy: "
          f"{ {k: sum(1 for f in fault.values() if f == k) for k in FAULTS} }; Spanish from {how}; folder {work}")

    def fit(name: str, data: Path, seed: int) -> dict:
        return train(work, f"{name}-s{seed}", data, work / "eval", seed, args.steps, args.batch_size, args.threads)

    t = time.perf_counter()
    runs: dict[str, list[dict]] = {"uncurated": [fit("uncurated", work / "noisy", args.seeds[0])]}  # the scorer
    timings["train_scorer_s"] = time.perf_counter() - t
    settings = curate_settings(args, work, keys, fault, original, timings)
    kept = {tag: s["summary"]["kept"] for tag, s in settings.items()}
    trained = args.train or [next(tag for tag, n in kept.items() if n >= 0.1 * len(keys))]
    print(f"curated copies kept {kept} of {len(keys)}; CLIP trains on {trained}", flush=True)
    t = time.perf_counter()
    for seed in args.seeds:  # seed by seed: a study cut short still has every condition at the seeds it ran
        conditions = [("uncurated", work / "noisy"), ("clean", work / "clean"), ("oracle", work / "oracle")]
        for name, data in conditions + [(t, work / t) for t in trained]:
            if name != "uncurated" or seed != args.seeds[0]:
                runs.setdefault(name, []).append(fit(name, data, seed))
    timings["train_s"] = time.perf_counter() - t + timings["train_scorer_s"]
    report(args, runs, settings, timings, work)


def report(args, runs: dict[str, list[dict]], settings: dict, timings: dict, work: Path) -> None:
    metrics = ("zero_shot_top1", "image_to_text_recall@1", "text_to_image_recall@1")
    table = {name: {k: mean_std(rs, k) for k in metrics} for name, rs in runs.items()}
    print(f"\nCLIP mmssl-vit-tiny, {args.steps} steps x batch {args.batch_size} each, seeds {args.seeds}; scorer: "
          f"the seed-{args.seeds[0]} uncurated run ({work / 'runs' / f'uncurated-s{args.seeds[0]}'})\n")
    print("| condition | train samples | zero-shot top-1 | image->text R@1 | text->image R@1 |\n|---|---|---|---|---|")
    for name, row in table.items():
        size = runs[name][0].get("train_images", "?")
        print(f"| {name} | {size} | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in row.values()) + " |")
    zs = {name: row["zero_shot_top1"][0] for name, row in table.items()}
    for tag in (t for t in settings if t in zs):
        oracle = f"; oracle - curated {zs['oracle'] - zs[tag]:+.1f}" if "oracle" in zs else ""
        print(f"\n{tag}: curated - uncurated {zs[tag] - zs['uncurated']:+.1f} points zero-shot (target >= +5); "
              f"clean - curated {zs['clean'] - zs[tag]:+.1f} (target <= 2){oracle}")
    for tag, s in settings.items():
        print(f"\n{tag}: kept {s['summary']['kept']} of {s['summary']['read']}, {s['samples_per_s']:.0f} samples/s "
              f"(`{' '.join(s['overrides'])}`)\n")
        caught = ", ".join(f"{k} {v:.3f}" for k, v in s["caught_by_any"].items())
        print(f"dropped by any filter (fraction of each fault kind, and of the clean samples): {caught}\n")
        print("| filter | finds | dropped | correct | clean dropped | precision | recall |\n" + "|---" * 7 + "|")
        for name, f in s["filters"].items():
            p, r = (f"{v:.3f}" if v is not None else "-" for v in (f["precision"], f["recall"]))
            print(f"| {name} | {f['target'] or '-'} | {f['dropped']} | {f['correct']} | {f['clean_dropped']} | {p} | "
                  f"{r} |")
    print(f"\ntimes: {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}\ncommand: {' '.join(sys.argv)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "table": table, "settings": settings,
                                              "runs": {n: [r["eval"] for r in rs] for n, rs in runs.items()},
                                              "timings": timings, "work": str(work)}, indent=1))


if __name__ == "__main__":
    main()
