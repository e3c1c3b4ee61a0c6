"""Padding-free packed batches: the layout is right, and encoders give the same embeddings, loss and gradients
packed as padded (to 1e-5), so packing only changes the speed."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoConfig, AutoModel

from mmssl.models.packing import pack_rows, packing_error, pool_packed, position_offset
from mmssl.models.padding import pad_sequences, pool
from mmssl.models.text_encoder import TextEncoder


def random_seqs(n: int, seed: int = 0, longest: int = 20) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, 90) for _ in range(rng.randint(1, longest))] for _ in range(n)]


def test_rows_hold_every_sequence_whole_with_positions_restarting_and_a_block_diagonal_mask():
    seqs = random_seqs(40)
    packed = pack_rows(seqs, pad_id=0, row_length=32, first_position=2)
    ids, pos, mask = packed["input_ids"], packed["position_ids"], packed["attention_mask"][:, 0]
    rows, width = ids.shape
    assert width <= 32 and rows <= -(-sum(map(len, seqs)) // 32) + 2  # first-fit decreasing: nearly full rows
    owner = torch.full((rows, width), -1)
    for i, seq in enumerate(seqs):
        r, s, n = int(packed["row"][i]), int(packed["start"][i]), int(packed["length"][i])
        assert n == len(seq) and ids[r, s : s + n].tolist() == seq
        assert pos[r, s : s + n].tolist() == list(range(2, 2 + n))
        assert (owner[r, s : s + n] == -1).all()  # no two sequences overlap
        owner[r, s : s + n] = i
    assert torch.equal(mask, owner.unsqueeze(2) == owner.unsqueeze(1))  # own sequence only; padding: padding
    assert (ids[owner < 0] == 0).all()


def test_a_sequence_longer_than_the_row_gets_a_row_of_its_own_and_bad_input_is_refused():
    packed = pack_rows([[1] * 50, [2] * 3], pad_id=0, row_length=8)
    assert packed["input_ids"].shape[1] == 50
    with pytest.raises(ValueError, match="empty"):
        pack_rows([], 0)
    with pytest.raises(ValueError, match="empty sequence"):
        pack_rows([[1], []], 0)
    float_mask = pack_rows([[1, 2], [3]], 0, 4, mask_dtype=torch.float32)["attention_mask"]
    assert float_mask.dtype == torch.float32 and float_mask.max() == 0 and float_mask.min() < -1e30


TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 100, "max_position_embeddings": 64}


def tiny_model(arch: str, attn: str = "sdpa"):
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, **TINY)
    return AutoModel.from_config(config, attn_implementation=attn)


@pytest.mark.parametrize("arch, attn", [("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa"),
                                        ("electra", "sdpa")])
@pytest.mark.parametrize("pooling", ["mean", "cls", "last_token"])
def test_packed_embeddings_equal_padded_ones(arch, attn, pooling):
    model = tiny_model(arch, attn).eval()
    pad = model.config.pad_token_id or 0
    seqs = random_seqs(24, seed=1)
    with torch.no_grad():
        padded = pad_sequences(seqs, pad)
        reference = pool(model(**padded).last_hidden_state, padded["attention_mask"], pooling)
        dtype = torch.bool if attn == "sdpa" else torch.float32
        packed = pack_rows(seqs, pad, row_length=40, first_position=position_offset(model), mask_dtype=dtype)
        assert packed["input_ids"].shape[0] < len(seqs) // 2  # several sequences per row
        hidden = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                       attention_mask=packed["attention_mask"]).last_hidden_state
        got = pool_packed(hidden, packed, pooling)
    assert (got - reference).abs().max() < 1e-5
    assert packing_error(model, pad, seqs[:5], pooling) < 1e-5


def test_roberta_positions_start_after_the_padding_index_or_packing_is_wrong():
    model = tiny_model("roberta").eval()
    assert position_offset(model) == model.config.pad_token_id + 1
    seqs = random_seqs(6, seed=2)
    with torch.no_grad():
        padded = pad_sequences(seqs, 1)
        reference = pool(model(**padded).last_hidden_state, padded["attention_mask"], "mean")
        wrong = pack_rows(seqs, 1, 64, first_position=0)
        hidden = model(**{k: wrong[k] for k in ("input_ids", "position_ids", "attention_mask")}).last_hidden_state
    assert (pool_packed(hidden, wrong, "mean") - reference).abs().max() > 1e-3  # the probe would catch this


def test_a_model_that_cannot_take_the_packed_layout_is_reported_not_packed():
    torch.manual_seed(0)
    config = AutoConfig.for_model("deberta-v2", **TINY)
    model = AutoModel.from_config(config, attn_implementation="eager")
    assert packing_error(model, 0, random_seqs(4), "mean") is None


@pytest.mark.slow
def test_text_encoder_trains_the_same_packed_as_padded():
    """Loss and every gradient of a TextEncoder step (dropout off) agree to 1e-5 between the two layouts."""
    model = tiny_model("bert")
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    encoder = TextEncoder(model, pooling="mean", normalize=True, head="mlp", head_dim=16).train()
    seqs = random_seqs(16, seed=3)

    def step(packed):
        encoder.zero_grad(set_to_none=True)
        emb = encoder(packed=packed)
        loss = (emb[:8] @ emb[8:].T / 0.05).log_softmax(-1).diagonal().neg().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    padded_loss, padded_grads = step({"groups": [pad_sequences(seqs, 0)], "restore": None})
    packed_loss, packed_grads = step({"groups": [pack_rows(seqs, 0, 48)], "restore": None})
    assert abs(packed_loss - padded_loss) < 1e-5
    assert padded_grads.keys() == packed_grads.keys() and len(padded_grads) > 10
    for name, grad in padded_grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-5, rtol=1e-4), name
