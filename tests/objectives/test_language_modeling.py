import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from mmssl.data.tokenizers import train_wordpiece
from mmssl.data.world import world_columns
from mmssl.models.lm import CausalLMModule, MaskedLMModule, fused_linear_cross_entropy
from mmssl.objectives.language_modeling import MaskedLM
from mmssl.recipes import WorldConfig, parse_recipe

TEXTS = world_columns(WorldConfig(num_scenes=200), "text")["text"]


def masked_lm(**params) -> MaskedLM:
    recipe = parse_recipe({"output_dir": "unused", "objective": {"name": "mlm", **params}, "model": {"arch": "bert"}})
    objective = MaskedLM(recipe)
    objective.tokenizer = train_wordpiece([TEXTS], 300, 1, True)
    objective._check_tokenizer()
    return objective


def batch_of(objective: MaskedLM, n: int = 64, length: int = 24) -> torch.Tensor:
    enc = objective.tokenizer(TEXTS[:n], padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_masking_rates_and_specials():
    objective = masked_lm()
    ids, mask = batch_of(objective, 256)
    torch.manual_seed(0)
    out = objective.prepare_batch({"input_ids": ids, "attention_mask": mask})
    chosen = out["labels"] != -100
    special = objective.special[ids] | (mask == 0)
    assert not (chosen & special).any()
    rate = chosen.sum() / (~special).sum()
    assert 0.13 < rate < 0.17
    assert torch.equal(out["labels"][chosen], ids[chosen])
    replaced = out["input_ids"][chosen]
    frac_mask = (replaced == objective.tokenizer.mask_token_id).float().mean()
    frac_kept = (replaced == ids[chosen]).float().mean()
    assert 0.75 < frac_mask < 0.85 and 0.06 < frac_kept < 0.16
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])


def test_masking_is_a_function_of_the_seed():
    objective = masked_lm()
    ids, mask = batch_of(objective)
    torch.manual_seed(5)
    a = objective.prepare_batch({"input_ids": ids, "attention_mask": mask})
    torch.manual_seed(5)
    b = objective.prepare_batch({"input_ids": ids, "attention_mask": mask})
    torch.manual_seed(6)
    c = objective.prepare_batch({"input_ids": ids, "attention_mask": mask})
    assert torch.equal(a["labels"], b["labels"]) and not torch.equal(a["labels"], c["labels"])


def test_whole_word_masking_masks_all_pieces_of_a_word():
    objective = masked_lm(whole_word_masking=True, mask_probability=0.3)
    text = ["the zxqv circle is purplish and the zxqv square is bluish"] * 32
    enc = objective.tokenizer(text, return_tensors="pt")
    ids = enc["input_ids"]
    starts = objective.word_start[ids]
    assert (~starts).any(), "the test text must contain multi-piece words"
    torch.manual_seed(0)
    chosen = objective.prepare_batch({"input_ids": ids, "attention_mask": enc["attention_mask"]})["labels"] != -100
    for row in range(ids.shape[0]):
        for pos in range(1, ids.shape[1]):
            if not starts[row, pos]:  # a continuation piece shares its word's decision
                assert chosen[row, pos] == chosen[row, pos - 1]


def test_sparse_mlm_head_equals_the_models_dense_loss():
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64)).eval()
    ids = torch.randint(5, 100, (4, 16))
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]
    dense = model(input_ids=ids, labels=labels).loss
    sparse = MaskedLMModule(model)(input_ids=ids, attention_mask=None, labels=labels)["loss"]
    assert torch.allclose(dense, sparse, atol=1e-6)
    sparse.backward()
    grad_sparse = model.bert.embeddings.word_embeddings.weight.grad.clone()
    model.zero_grad()
    model(input_ids=ids, labels=labels).loss.backward()
    assert torch.allclose(grad_sparse, model.bert.embeddings.word_embeddings.weight.grad, atol=1e-6)


def test_fused_causal_loss_and_gradients_equal_the_models_own():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=2, n_positions=32)).eval()
    ids = torch.randint(0, 120, (3, 20))
    ours = CausalLMModule(model, chunk_size=7)(input_ids=ids, attention_mask=None, labels=ids)["loss"]
    ours.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    theirs = model(input_ids=ids, labels=ids).loss
    theirs.backward()
    assert torch.allclose(ours, theirs, atol=1e-6)
    for name, param in model.named_parameters():
        assert torch.allclose(grads[name], param.grad, atol=1e-6), name


def test_fused_cross_entropy_ignores_labels_and_matches_reference():
    torch.manual_seed(1)
    h = torch.randn(30, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    y = torch.randint(0, 50, (30,))
    y[::4] = -100
    b = torch.randn(50, requires_grad=True)
    loss = fused_linear_cross_entropy(h, w, y, bias=b, chunk_size=4)
    ref = F.cross_entropy(h @ w.T + b, y)
    assert torch.allclose(loss, ref, atol=1e-6)
    gh, gw, gb = torch.autograd.grad(loss, (h, w, b))
    rh, rw, rb = torch.autograd.grad(ref, (h, w, b))
    assert torch.allclose(gh, rh, atol=1e-6) and torch.allclose(gw, rw, atol=1e-6)
    assert torch.allclose(gb, rb, atol=1e-6)
    # repeated labels within a chunk: the one-hot correction must accumulate
    y2 = torch.tensor([3, 3, 3, 7] * 5)
    loss = fused_linear_cross_entropy(h[:20], w, y2, chunk_size=8)
    ref = F.cross_entropy(h[:20] @ w.T, y2)
    assert torch.allclose(torch.autograd.grad(loss, w)[0], torch.autograd.grad(ref, w)[0], atol=1e-6)
