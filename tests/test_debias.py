"""Projection debiasing: the math against planted directions (hard-debias removes the pair direction, INLP leaves a
linear classifier at chance on held-out words), the export (a Dense module before Normalize that
SentenceTransformer loads natively, offline, with the projection applied) and one clear refusal per bad input,
with nothing lost."""

from __future__ import annotations

import json

import pytest
import torch
from clirun import assert_clear_error, mmssl_here, tree_hashes

from mmssl.debias import (
    MODULE_DIR,
    REPORT,
    accuracy,
    fit_linear_classifier,
    hard_debias_directions,
    inlp,
    projection,
)

PAIRS = [("he", "she"), ("man", "woman"), ("king", "queen"), ("boy", "girl"), ("father", "mother"),
         ("son", "daughter"), ("brother", "sister"), ("uncle", "aunt")]
CORPUS = ["he is a man and she is a woman", "the king and the queen", "a boy and a girl", "father and mother",
          "son and daughter", "brother and sister", "uncle and aunt", "it was then that a note came in about it",
          "this is here there the name of person", "flowers insects math arts science career family"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted_pairs(n: int, d: int, seed: int, noise: float = 0.3):
    """Pairs that differ by ±g (a planted direction) plus noise in a few other directions."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    jitter = noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return base + direction + jitter / 2, base - direction - jitter / 2, direction


def test_projection_is_the_orthogonal_projector_onto_the_span():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 10, generator=g, dtype=torch.float64)
    p = projection(torch.cat([rows, rows[:1] * 2]))  # a repeated (scaled) direction changes nothing
    q, _ = torch.linalg.qr(rows.T)  # naive reference: an orthonormal basis of the span
    assert torch.allclose(p, q @ q.T, atol=1e-10) and torch.allclose(p @ p, p, atol=1e-10)
    assert torch.allclose((torch.eye(10, dtype=torch.float64) - p) @ rows.T, torch.zeros(10, 3, dtype=torch.float64), atol=1e-10)


def test_hard_debias_finds_the_planted_direction_and_removes_it():
    first, second, direction = planted_pairs(40, 16, seed=1)
    found, variance = hard_debias_directions(first, second, k=1)
    assert abs(float(found[0] @ direction)) > 0.98 and variance[0] > 0.7
    w = torch.eye(16, dtype=torch.float64) - projection(found)
    before = ((first - second) @ direction).abs().mean()
    after = ((first - second) @ w @ direction).abs().mean()
    assert before > 1.5 and after < 0.02 * before
    assert ((first - second) @ w @ found.T).abs().max() < 1e-10  # nothing left along the removed direction
    assert torch.allclose(first @ w @ w, first @ w, atol=1e-10)  # a projection: applying it twice changes nothing


def test_inlp_leaves_a_linear_classifier_at_chance_on_held_out_words():
    g = torch.Generator().manual_seed(2)
    d, n = 16, 120
    directions = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=torch.float64))[0].T  # 3 planted directions
    y = torch.arange(n) % 2
    signs = (2 * y - 1).double()[:, None]
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + signs * (torch.tensor([1.5, 1.0, 0.7])[:, None]
                                                                        * directions).sum(0)
    words = torch.arange(n) // 2 * 2 + y  # every point its own word (the held-out split is by word)
    plain = fit_linear_classifier(x[: n // 2], y[: n // 2])
    assert accuracy(plain, x[n // 2:], y[n // 2:]) > 0.9
    result = inlp(x, y, words, seed=0, max_iterations=6, stop_accuracy=0.6)
    assert 1 <= len(result.directions) <= 6 and result.heldout_accuracy[0] > 0.9
    assert result.final_heldout_accuracy < 0.65
    w = torch.eye(d, dtype=torch.float64) - projection(result.directions)
    projected = x @ w
    fresh = fit_linear_classifier(projected[: n // 2], y[: n // 2])  # another split than INLP's
    assert accuracy(fresh, projected[n // 2:], y[n // 2:]) < 0.7
    again = inlp(x, y, words, seed=0, max_iterations=6, stop_accuracy=0.6)
    assert torch.equal(again.directions, result.directions)  # seeded


def make_st(folder, normalize: bool = True):
    """A tiny SentenceTransformer folder (BERT from config, WordPiece trained here) written by mmssl's exporter."""
    from transformers import AutoModel, BertConfig

    from mmssl.data.tokenizers import train_wordpiece
    from mmssl.models.text_encoder import TextEncoder, save_sentence_transformer

    tok = train_wordpiece(CORPUS * 5, vocab_size=120, min_frequency=1, lowercase=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    model = AutoModel.from_config(config, attn_implementation="sdpa")
    save_sentence_transformer(TextEncoder(model, pooling="mean", normalize=normalize), folder, tok, max_seq_length=32)
    return folder


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory):
    root = tmp_path_factory.mktemp("st")
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(f"{a},{b}" for a, b in PAIRS) + "\n")
    return make_st(root / "model"), pairs


@pytest.mark.slow
def test_export_loads_natively_with_the_projection_applied(tiny_st, tmp_path):
    from sentence_transformers import SentenceTransformer

    model_dir, pairs = tiny_st
    out = tmp_path / "debiased"
    done = mmssl_here("debias", str(model_dir), "--out", str(out), "--word-pairs", str(pairs), "--method", "hard")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / REPORT).read_text())
    assert report["mmssl"] == "debias" and report["removed_dimensions"] == 1
    assert set(report["bias"]) >= {"weat7_math_arts", "seat8_science_arts"}
    assert set(report["bias"]["seat6_career_family"]) == {"before", "after"}
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert [m["idx"] for m in modules] == [0, 1, 2, 3] and modules[2]["path"] == MODULE_DIR
    assert not list(out.rglob("*.py"))

    texts = ["he is a man", "she is a woman", "the king and the queen", "flowers and insects"]
    original = SentenceTransformer(str(model_dir), device="cpu")
    loaded = SentenceTransformer(str(out), device="cpu", local_files_only=True)  # plain sentence-transformers
    weight = loaded[2].linear.weight.detach().double()
    assert torch.allclose(weight, weight.T, atol=1e-6) and torch.allclose(weight @ weight, weight, atol=1e-5)
    assert abs(float(torch.trace(weight)) - 31) < 1e-4  # I - P with P of rank 1, in 32 dimensions
    pooled = SentenceTransformer(modules=list(original)[:2], device="cpu").encode(texts, convert_to_tensor=True)
    want = torch.nn.functional.normalize(pooled.double() @ weight.T, dim=-1)
    got = loaded.encode(texts, convert_to_tensor=True).double()
    assert (got - want).abs().max() < 1e-5
    assert (got - original.encode(texts, convert_to_tensor=True).double()).abs().max() > 1e-3  # it did change
    removed = torch.linalg.eigh(torch.eye(32, dtype=torch.float64) - weight).eigenvectors[:, -1]
    assert (got @ removed).abs().max() < 1e-5  # no embedding has a component along the removed direction

    # INLP on the same folder (another output), seeded; an earlier own output is replaced only with --overwrite
    refused = mmssl_here("debias", str(model_dir), "--out", str(out), "--word-pairs", str(pairs))
    assert_clear_error(refused, "--overwrite")
    done = mmssl_here("debias", str(model_dir), "--out", str(out), "--word-pairs", str(pairs), "--method", "inlp",
                      "--seed", "1", "--max-iterations", "3", "--overwrite")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / REPORT).read_text())
    assert report["method"] == "inlp" and report["seed"] == 1 and report["iterations"] <= 3
    held = report["heldout_accuracy"]
    assert len(held) == 3 if report["iterations"] == 3 else (len(held) == report["iterations"] + 1 and held[-1] <= 0.55)
    assert json.loads((out / "modules.json").read_text())[2]["path"] == MODULE_DIR


def test_refusals_name_the_problem_and_lose_nothing(tiny_st, tmp_path):
    model_dir, pairs = tiny_st
    kept = tree_hashes(model_dir)
    inside = model_dir / "debiased"
    assert_clear_error(mmssl_here("debias", str(model_dir), "--out", str(model_dir)), "--out", "is also the input")
    assert_clear_error(mmssl_here("debias", str(model_dir), "--out", str(inside)), "lies inside the input")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_clear_error(mmssl_here("debias", str(model_dir), "--out", str(foreign)), "not written by this mmssl")
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    assert_clear_error(mmssl_here("debias", str(foreign), "--out", str(tmp_path / "x")),
                       "not a SentenceTransformer folder")
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("he,she\nжар,qzxv\n")  # letters the tiny tokenizer never saw: only [UNK]
    error = assert_clear_error(mmssl_here("debias", str(model_dir), "--out", str(tmp_path / "y"), "--word-pairs",
                                          str(unseen)), "cannot see 2 word(s)", "'жар'", "'qzxv'")
    assert "'he'" not in error
    assert tree_hashes(model_dir) == kept and not inside.exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_the_projection_goes_before_normalize_or_at_the_end_and_custom_code_is_refused(tmp_path):
    from mmssl.debias import insert_projection, read_modules
    from mmssl.errors import MmsslError

    plain = [{"idx": 0, "name": "enc", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "pool", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    written = insert_projection(tmp_path, plain, torch.eye(4))
    assert [(m["idx"], m["name"], m["path"]) for m in written] == [
        (0, "enc", ""), (1, "pool", "1_Pooling"), (2, "debias_projection", MODULE_DIR)]
    assert json.loads((tmp_path / "modules.json").read_text()) == written
    assert json.loads((tmp_path / MODULE_DIR / "config.json").read_text())["activation_function"].startswith("torch.")
    for modules, needle in (([{"idx": 0, "name": "0", "path": "", "type": "my_package.Encoder"}], "custom module code"),
                            ([{"idx": 0, "name": "0", "path": "../x", "type": "sentence_transformers.models.Dense"}],
                             "outside its folder"), ({"not": "a list"}, "not a valid modules.json")):
        (tmp_path / "modules.json").write_text(json.dumps(modules))
        with pytest.raises(MmsslError, match=needle):
            read_modules(tmp_path)


@pytest.mark.slow
def test_a_debiased_run_publishes_with_its_before_after_table_and_no_unmeasured_claims(tmp_path):
    from helpers import TINY_BERT

    from mmssl.debias import debias
    from mmssl.hub import render_card
    from mmssl.recipes import parse_recipe
    from mmssl.train.loop import train

    run = tmp_path / "run"
    train(parse_recipe({
        "output_dir": str(run), "seed": 0, "data": {"source": "world", "world": {"num_scenes": 200}},
        "tokenizer": {"vocab_size": 300}, "model": {"arch": "bert", "config": dict(TINY_BERT)},
        "objective": {"name": "simcse", "max_length": 32, "eval_before": False},
        "train": {"batch_size": 8, "max_steps": 2, "progress": False, "save_every": 0, "cpu": True}}))
    assert json.loads((run / "metrics.json").read_text())["eval"]  # the run measured itself
    pairs = tmp_path / "world_pairs.txt"
    pairs.write_text("red,blue\ncircle,square\nsmall,large\n")  # words the world's tokenizer knows
    debias(run, tmp_path / "debiased", word_pairs=str(pairs))
    metrics = json.loads((tmp_path / "debiased" / "metrics.json").read_text())
    assert "eval" not in metrics and metrics["eval_before_debias"] and metrics["debias"]["method"] == "hard"
    card = render_card(tmp_path / "debiased", "org/debiased")
    assert "debiased copy made by `mmssl debias`" in card and "| weat6_career_family |" in card
    assert "model-index" not in card  # no held-out figure claimed for the projected model
