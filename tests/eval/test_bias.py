"""The association statistic (WEAT/SEAT effect size and permutation p-value) against a naive reference on
hand-made embeddings: a planted association is detected, none is not; SEAT templates; the twemoji skin-tone set."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch

from mmssl.eval.bias import WEAT_TESTS, association, sentences
from mmssl.eval.bias_suite import TONES, twemoji_skin_tones


def naive(x, y, a, b):
    """Caliskan et al.'s definitions, written out with Python loops; exact p over all partitions."""
    def cos(u, v):
        return float(u @ v) / (float(u.norm()) * float(v.norm()))

    def s(w):
        return statistics.mean(cos(w, p) for p in a) - statistics.mean(cos(w, q) for q in b)

    scores = [s(w) for w in list(x) + list(y)]
    n = len(x)
    observed = sum(scores[:n]) - sum(scores[n:])
    d = (statistics.mean(scores[:n]) - statistics.mean(scores[n:])) / statistics.stdev(scores)
    hits = total = 0
    for chosen in itertools.combinations(range(2 * n), n):
        inside = sum(scores[i] for i in chosen)
        total += 1
        hits += inside - (sum(scores) - inside) >= observed - 1e-12
    return d, hits / total, observed


def planted(n: int, strength: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    a_dir, b_dir = (torch.randn(16, generator=g, dtype=torch.float64) for _ in range(2))
    noise = lambda k: torch.randn(k, 16, generator=g, dtype=torch.float64)  # noqa: E731
    x = noise(n) + strength * a_dir
    y = noise(n) + strength * b_dir
    a = noise(n) + 3 * a_dir
    b = noise(n) + 3 * b_dir
    return x, y, a, b


@pytest.mark.parametrize("strength, seed", [(1.5, 0), (0.0, 1), (0.0, 2), (0.7, 3)])
def test_effect_size_and_exact_p_value_match_the_naive_reference(strength, seed):
    x, y, a, b = planted(6, strength, seed)
    got = association(x, y, a, b)
    d, p, observed = naive(x, y, a, b)
    assert got.exact and got.partitions == math.comb(12, 6)
    assert got.effect_size == pytest.approx(d, abs=1e-9) and got.p_value == pytest.approx(p, abs=1e-12)
    assert got.statistic == pytest.approx(observed, abs=1e-9)


def test_a_planted_association_is_detected_and_none_is_not():
    strong = association(*planted(8, 1.5, 0))
    assert strong.effect_size > 1.5 and strong.p_value < 0.01
    nulls = [association(*planted(8, 0.0, seed)) for seed in range(10)]
    assert sum(r.p_value < 0.05 for r in nulls) <= 2 and all(abs(r.effect_size) < 1.5 for r in nulls)
    flipped = association(*planted(8, 1.5, 0)[1::-1], *planted(8, 1.5, 0)[2:])  # X and Y exchanged
    assert flipped.effect_size == pytest.approx(-strong.effect_size) and flipped.p_value > 0.99


def test_sampled_p_value_is_seeded_and_close_to_the_exact_one():
    x, y, a, b = planted(7, 0.4, 5)
    exact = association(x, y, a, b)
    sampled = association(x, y, a, b, exact_limit=0, samples=20_000, seed=3)
    assert not sampled.exact and sampled.partitions == 20_001
    assert abs(sampled.p_value - exact.p_value) < 0.02
    assert association(x, y, a, b, exact_limit=0, samples=20_000, seed=3).p_value == sampled.p_value
    with pytest.raises(ValueError, match="same size"):
        association(x, y[:-1], a, b)


def test_word_sets_and_templates():
    assert [t.name for t in WEAT_TESTS] == ["weat1_flowers_insects", "weat6_career_family", "weat7_math_arts",
                                            "weat8_science_arts"]
    for test in WEAT_TESTS:
        assert len(test.x) == len(test.y) and len(set(test.x) | set(test.y)) == 2 * len(test.x)
    assert sentences(["rose"])[0] == "This is rose." and "The name of this person is Amy." in sentences(["Amy"], True)
    assert len(sentences(["a", "b"])) == 2 * len(sentences(["a"]))


def test_twemoji_has_the_same_emoji_in_five_skin_tones():
    tones = twemoji_skin_tones()
    assert list(tones) == list(TONES) and len(tones[TONES[0]]) >= 300
    for i in (0, 100, -1):
        names = [tones[t][i].name for t in TONES]
        assert len({n.replace(t, "") for n, t in zip(names, TONES)}) == 1 and all(tones[t][i].is_file() for t in TONES)


def test_the_paired_test_only_exchanges_the_two_versions_of_an_item():
    x, y, a, b = planted(6, 0.6, 7)
    got = association(x, y, a, b, paired=True)
    s_x = [float((torch.nn.functional.normalize(w, dim=0) @ torch.nn.functional.normalize(a, dim=1).T).mean()
                 - (torch.nn.functional.normalize(w, dim=0) @ torch.nn.functional.normalize(b, dim=1).T).mean())
           for w in torch.cat([x, y])]
    diff = [s_x[i] - s_x[i + 6] for i in range(6)]
    flips = [sum(d if (code >> i) & 1 == 0 else -d for i, d in enumerate(diff)) for code in range(64)]
    assert got.exact and got.partitions == 64
    assert got.p_value == pytest.approx(sum(f >= sum(diff) - 1e-12 for f in flips) / 64)
    sampled = association(x, y, a, b, paired=True, exact_limit=0, samples=5000, seed=1)
    assert abs(sampled.p_value - got.p_value) < 0.03
    same = torch.ones(4, 16, dtype=torch.float64)
    assert association(same, same, a[:4], b[:4]).effect_size == 0.0  # no spread: no effect, not NaN


def test_a_model_folder_that_mmssl_did_not_write_is_recognised_by_its_files(tmp_path):
    import json as json_

    from mmssl.errors import MmsslError
    from mmssl.eval.bias_suite import folder_kind

    kinds = {"st": ("modules.json", "[]", "sentence_embedding"), "oc": ("open_clip_config.json", "{}", "clip"),
             "lm": ("config.json", json_.dumps({"architectures": ["GPT2LMHeadModel"]}), "clm"),
             "mlm": ("config.json", json_.dumps({"architectures": ["BertForMaskedLM"]}), "mlm")}
    for name, (file, text, kind) in kinds.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / file).write_text(text)
        assert folder_kind(tmp_path / name) == kind
    with pytest.raises(MmsslError, match="holds no model"):
        folder_kind(tmp_path)
