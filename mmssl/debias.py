"""Post-hoc projection debiasing of a sentence encoder, exported as a module of its SentenceTransformer folder.

Both methods find a linear "bias subspace" from embeddings of group terms (the ``word_pairs`` lists of
`mmssl.data.text_views.counterfactual`: each pair's first word in group 1, the counterpart in group 2), each word
alone and in a few neutral contexts (`CONTEXTS`), and remove it with one projection ``W = I - P`` applied to every
embedding:

* ``hard`` (the "neutralize" step of hard-debias, Bolukbasi et al. 2016, "Man is to Computer Programmer as Woman
  is to Homemaker?"; on sentence embeddings as Sent-Debias, Liang et al. 2020): the top-`k` principal directions
  of the pair differences, each pair centred on its mean. The "equalize" step moves individual words and has no
  linear form, so it is not part of an exported projection.
* ``inlp`` (iterative nullspace projection, Ravfogel et al. 2020, "Null It Out"): repeatedly fit a linear classifier
  (logistic regression) telling group 1 from group 2, add its direction to the removed subspace and project the
  data onto the nullspace of every direction so far, until a classifier does no better than `stop_accuracy` on
  held-out words (or `max_iterations`). The held-out words are a seeded draw, so the result depends on the seed.

`debias` copies the files a SentenceTransformer folder needs (configs, weights, tokenizer, module folders; never
code) into a new folder and inserts a ``sentence_transformers.models.Dense`` module (no bias, identity activation,
weight ``I - P``) before the first Normalize module, so ``SentenceTransformer(out)`` loads the debiased model with no
mmssl code. It records WEAT/SEAT (`mmssl.eval.bias`) before and after in ``mmssl_debias.json``.

A projection removes what a linear probe on these words can find, in the space the lists span; it does not remove
bias that the lists do not name, nor nonlinear traces of it (Gonen & Goldberg 2019, "Lipstick on a Pig").
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mmssl.errors import DataError, MmsslError, RecipeError
from mmssl.outputs import folder_swapped_in

REPORT = "mmssl_debias.json"
MODULE_DIR = "debias_projection"  # the Dense module's folder inside the output
# neutral contexts the group terms are embedded in (besides alone); not the SEAT templates of mmssl.eval.bias
CONTEXTS = ("{w}", "It was {w}.", "Then {w} came in.", "A note about {w}:")
# the files of a SentenceTransformer folder's root that loading needs (configs, weights, tokenizer, licences)
ROOT_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "config.json",
              "*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json",
              "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
              "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
              "LICENSE*", "NOTICE*")
MODULE_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")  # files copied from a module's own folder


# --------------------------------------------------------------------------------------------------------
# the math
# --------------------------------------------------------------------------------------------------------


def projection(directions: torch.Tensor) -> torch.Tensor:
    """P, the orthogonal projection onto the span of the rows of `directions` [k, d] (any k, any scale)."""
    if directions.numel() == 0:
        return torch.zeros(directions.shape[1], directions.shape[1], dtype=directions.dtype)
    u, s, vh = torch.linalg.svd(directions, full_matrices=False)
    basis = vh[s > s.max() * 1e-10]
    return basis.T @ basis


def hard_debias_directions(first: torch.Tensor, second: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, list[float]]:
    """The top-`k` principal directions [k, d] of the centred pair differences (row i of `first` and of `second` is
    one pair, in one context), and the fraction of their variance each explains."""
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError("first and second must be [n, d] with one pair per row")
    half = (first - second) / 2  # each member minus the pair's mean: +half and -half
    rows = torch.cat([half, -half])
    _, s, vh = torch.linalg.svd(rows, full_matrices=False)
    variance = s**2 / (s**2).sum()
    return vh[:k], [float(v) for v in variance[:k]]


def fit_linear_classifier(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 100) -> torch.Tensor:
    """Logistic regression (L-BFGS from zero, so deterministic): returns [w; b] of shape [d + 1]."""
    x, y = x.double(), y.double()
    params = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([params], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        logits = x @ params[:-1] + params[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + l2 * params[:-1].pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return params.detach()


def accuracy(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x.double() @ params[:-1] + params[-1] > 0).long() == y.long()).double().mean())


@dataclass
class InlpResult:
    directions: torch.Tensor  # [k, d], the classifiers' weight vectors, in the order found
    train_accuracy: list[float] = field(default_factory=list)  # per iteration, before its direction is removed
    heldout_accuracy: list[float] = field(default_factory=list)
    final_heldout_accuracy: float = 0.0  # a new classifier on the projected data


def inlp(x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, seed: int = 0, max_iterations: int = 20,
         stop_accuracy: float = 0.55, heldout_fraction: float = 0.25, l2: float = 1e-3) -> InlpResult:
    """Iterative nullspace projection. `x` [n, d] embeddings, `y` [n] 0/1 group, `groups` [n] an id per word
    (all contexts of one word are held out together); a seeded `heldout_fraction` of the words is held out."""
    g = torch.Generator().manual_seed(seed)
    words = torch.unique(groups)
    heldout_words = words[torch.randperm(len(words), generator=g)[: max(1, round(heldout_fraction * len(words)))]]
    held = torch.isin(groups, heldout_words)
    x = x.double()
    directions: list[torch.Tensor] = []
    result = InlpResult(torch.zeros(0, x.shape[1], dtype=torch.float64))
    nullspace = torch.eye(x.shape[1], dtype=torch.float64)
    for _ in range(max_iterations):
        projected = x @ nullspace
        params = fit_linear_classifier(projected[~held], y[~held], l2)
        result.train_accuracy.append(accuracy(params, projected[~held], y[~held]))
        result.heldout_accuracy.append(accuracy(params, projected[held], y[held]))
        if result.heldout_accuracy[-1] <= stop_accuracy:
            break
        directions.append(params[:-1] / params[:-1].norm())
        nullspace = torch.eye(x.shape[1], dtype=torch.float64) - projection(torch.stack(directions))
    result.directions = torch.stack(directions) if directions else result.directions
    final = fit_linear_classifier((x @ nullspace)[~held], y[~held], l2)
    result.final_heldout_accuracy = accuracy(final, (x @ nullspace)[held], y[held])
    return result


# --------------------------------------------------------------------------------------------------------
# SentenceTransformer folders
# --------------------------------------------------------------------------------------------------------


def read_modules(directory: Path) -> list[dict[str, Any]]:
    """modules.json of a SentenceTransformer folder, refusing anything else (and modules that are not
    sentence-transformers' own: mmssl runs no code from model folders)."""
    if not directory.is_dir():
        raise MmsslError(f"{str(directory)!r} is not a folder; give a SentenceTransformer folder (with modules.json)")
    path = directory / "modules.json"
    if not path.is_file():
        raise MmsslError(f"{str(directory)!r} is not a SentenceTransformer folder (no modules.json); mmssl debias "
                         "needs one, e.g. the output of a simcse run or all-MiniLM-L6-v2")
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(modules, list) and all(isinstance(m["type"], str) and isinstance(m["path"], str)
                                                 for m in modules)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise MmsslError(f"{str(path)!r} is not a valid modules.json (a list of {{idx, name, path, type}})") from None
    foreign = [m["type"] for m in modules if not m["type"].startswith("sentence_transformers.")]
    if foreign:
        raise MmsslError(f"{str(directory)!r} uses custom module code ({', '.join(foreign)}); mmssl debias only "
                         "handles sentence-transformers' own modules and never runs code from a model folder")
    bad = [m["path"] for m in modules if Path(m["path"]).is_absolute() or ".." in Path(m["path"]).parts]
    if bad:
        raise MmsslError(f"{str(path)!r} points outside its folder ({', '.join(bad)})")
    return modules


def insertion_index(modules: list[dict[str, Any]]) -> int:
    """Where the projection goes: before the first Normalize module, else at the end."""
    for i, module in enumerate(modules):
        if module["type"].rsplit(".", 1)[-1] == "Normalize":
            return i
    return len(modules)


def load_model(directory: Path):
    from sentence_transformers import SentenceTransformer

    from mmssl.remote_code import refuse_prompts

    refuse_prompts()
    return SentenceTransformer(str(directory), device="cpu", trust_remote_code=False, local_files_only=True)


def pooled_encoder(model, upto: int) -> Callable[[list[str]], torch.Tensor]:
    """Embeddings from the first `upto` modules of a loaded SentenceTransformer (the input of the projection)."""
    from sentence_transformers import SentenceTransformer

    head = SentenceTransformer(modules=list(model)[:upto], device="cpu")

    def encode(texts: list[str]) -> torch.Tensor:
        return head.encode(list(texts), batch_size=64, convert_to_tensor=True, show_progress_bar=False).float().cpu()

    return encode


def unseen_words(tokenizer, words: Sequence[str]) -> list[str]:
    """The words a tokenizer turns into nothing but its unknown token (or nothing at all)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    out = []
    for word in dict.fromkeys(words):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids or (unk is not None and all(i == unk for i in ids)):
            out.append(word)
    return out


def check_words(tokenizer, pairs: Sequence[tuple[str, str]], source: str) -> None:
    unseen = unseen_words(tokenizer, [w for pair in pairs for w in pair])
    if unseen:
        shown = ", ".join(repr(w) for w in unseen[:20]) + (f" and {len(unseen) - 20} more" if len(unseen) > 20 else "")
        raise DataError(f"word_pairs {source!r}: the model's tokenizer cannot see {len(unseen)} word(s), each only its "
                        f"unknown token: {shown}; their embeddings would all be the same. Give --word-pairs FILE "
                        "('word,counterpart' lines) without them")


def pair_embeddings(encode, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit embeddings [len(pairs) * len(CONTEXTS), d] of each pair's two words in every context."""
    first = [c.format(w=a) for a, _ in pairs for c in CONTEXTS]
    second = [c.format(w=b) for _, b in pairs for c in CONTEXTS]
    both = torch.nn.functional.normalize(encode(first + second).double(), dim=-1)
    return both[: len(first)], both[len(first):]


def group_embeddings(encode, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          list[str]]:
    """(x, y, word id, words): every distinct group word (group 1: first words, 0; group 2: counterparts, 1) in
    every context, for the INLP classifier. A word listed on both sides is left out."""
    ones = dict.fromkeys(a for a, _ in pairs)
    twos = dict.fromkeys(b for _, b in pairs)
    words = [(w, 0) for w in ones if w not in twos] + [(w, 1) for w in twos if w not in ones]
    texts = [c.format(w=w) for w, _ in words for c in CONTEXTS]
    x = torch.nn.functional.normalize(encode(texts).double(), dim=-1)
    y = torch.tensor([label for _, label in words for _ in CONTEXTS])
    ids = torch.tensor([i for i in range(len(words)) for _ in CONTEXTS])
    return x, y, ids, [w for w, _ in words]


def copy_st_folder(source: Path, target: Path, modules: list[dict[str, Any]]) -> list[str]:
    """Copy what loading `source` needs into `target` (data files only: no code, no hidden files). Returns the
    relative paths copied."""
    copied = []
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and not path.is_symlink() and any(fnmatch.fnmatch(path.name, p) for p in ROOT_FILES):
            shutil.copy2(path, target / path.name)
            copied.append(path.name)
    for module in modules:
        if not module["path"]:
            continue
        folder = source / module["path"]
        if not folder.is_dir():
            continue  # e.g. Normalize keeps no files and some folders omit it
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(source)
            if (path.is_file() and not path.is_symlink() and path.suffix in MODULE_SUFFIXES
                    and not any(part.startswith(".") for part in relative.parts)):
                (target / relative.parent).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / relative)
                copied.append(relative.as_posix())
    return copied


def copy_run_record(source: Path, target: Path, method: str, word_pairs: str) -> list[str]:
    """For an mmssl run's folder: its recipe.yaml, and its metrics.json with the held-out metrics moved to
    ``eval_before_debias`` (they were measured without the projection), so `mmssl push` can publish the debiased
    folder with a card that claims no figure for it that was not measured on it."""
    recipe, metrics = source / "recipe.yaml", source / "metrics.json"
    if not (recipe.is_file() and metrics.is_file()):
        return []
    shutil.copy2(recipe, target / recipe.name)
    data = json.loads(metrics.read_text(encoding="utf-8"))
    data["eval_before_debias"] = data.pop("eval", {})
    data["debias"] = {"method": method, "word_pairs": word_pairs}
    (target / metrics.name).write_text(json.dumps(data, indent=2), encoding="utf-8")
    return [recipe.name, metrics.name]


def dense_module(weight: torch.Tensor):
    """sentence-transformers' Dense: ``x -> weight @ x``, no bias, identity activation."""
    try:
        from sentence_transformers.base.modules.dense import Dense  # sentence-transformers >= 6
    except ImportError:  # 5.x
        from sentence_transformers.models import Dense  # type: ignore[no-redef]

    d_out, d_in = weight.shape
    return Dense(d_in, d_out, bias=False, activation_function=torch.nn.Identity(), init_weight=weight.float().clone())


def insert_projection(target: Path, modules: list[dict[str, Any]], weight: torch.Tensor) -> list[dict[str, Any]]:
    """Save the Dense module into `target`/MODULE_DIR and write modules.json with it before the first Normalize."""
    at = insertion_index(modules)
    (target / MODULE_DIR).mkdir(parents=True, exist_ok=True)
    dense_module(weight).save(str(target / MODULE_DIR))
    numeric = all(str(m.get("name")) == str(m.get("idx")) for m in modules)
    entry = {"idx": at, "name": str(at) if numeric else "debias_projection", "path": MODULE_DIR,
             "type": "sentence_transformers.models.Dense"}
    updated = [dict(m) for m in modules[:at]] + [entry] + [dict(m) for m in modules[at:]]
    for i, module in enumerate(updated):
        module["idx"] = i
        if numeric:
            module["name"] = str(i)
    (target / "modules.json").write_text(json.dumps(updated, indent=2), encoding="utf-8")
    return updated


# --------------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------------


def _owned(out: Path) -> bool:
    try:
        return json.loads((out / REPORT).read_text(encoding="utf-8")).get("mmssl") == "debias"
    except (OSError, ValueError, AttributeError):
        return False


def check_output(model_dir: Path, out: Path, overwrite: bool) -> None:
    """Before any work: `out` is not the input (nor inside it, nor holding it), and is absent or an earlier
    `mmssl debias` output (replaced only with `overwrite`)."""
    from mmssl.outputs import check_location, check_not_input, recover_replaced, replace_owned_output

    check_location(out, "--out", folder=True)
    check_not_input(out, "--out", {"MODEL_DIR": str(model_dir)})
    recover_replaced(out)
    replace_owned_output(out, "--out", overwrite, _owned(out), "--overwrite")


def bias_tests(encode, seed: int) -> dict[str, dict]:
    from mmssl.eval.bias import run_text_tests

    results = run_text_tests(encode, sentence_level=False, seed=seed)
    results.update(run_text_tests(encode, sentence_level=True, seed=seed))
    return {name: {k: r[k] for k in ("effect_size", "p_value", "partitions", "exact")} for name, r in results.items()}


def find_subspace(encode, pairs: Sequence[tuple[str, str]], method: str, seed: int, k: int,
                  max_iterations: int, stop_accuracy: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """The directions [k, d] to remove and what finding them measured."""
    if method == "hard":
        first, second = pair_embeddings(encode, pairs)
        directions, variance = hard_debias_directions(first, second, k)
        return directions, {"k": k, "explained_variance": variance}
    x, y, ids, words = group_embeddings(encode, pairs)
    if min(int((y == 0).sum()), int((y == 1).sum())) < 2 * len(CONTEXTS):
        raise DataError("inlp needs at least 2 distinct words in each group of word_pairs")
    torch.manual_seed(seed)
    result = inlp(x, y, ids, seed=seed, max_iterations=max_iterations, stop_accuracy=stop_accuracy)
    return result.directions, {"iterations": len(result.directions), "words": len(words),
                               "train_accuracy": result.train_accuracy, "heldout_accuracy": result.heldout_accuracy,
                               "final_heldout_accuracy": result.final_heldout_accuracy}


def debias(model_dir: str | Path, out: str | Path, method: str = "hard", word_pairs: str = "gender", seed: int = 0,
           k: int = 1, max_iterations: int = 20, stop_accuracy: float = 0.55, overwrite: bool = False,
           measure: bool = True) -> dict[str, Any]:
    """Write a debiased copy of the SentenceTransformer folder `model_dir` to `out`; returns the report (also
    saved as `out`/mmssl_debias.json)."""
    from mmssl.data.text_views.counterfactual import read_pairs

    started = time.perf_counter()
    if method not in ("hard", "inlp"):
        raise RecipeError(f"method {method!r} is not one of hard, inlp")
    if k < 1:
        raise RecipeError("k must be at least 1")
    model_dir, out = Path(model_dir).expanduser(), Path(out).expanduser()
    modules = read_modules(model_dir)
    check_output(model_dir, out, overwrite)
    pairs = read_pairs(word_pairs)
    model = load_model(model_dir)
    check_words(model.tokenizer, pairs, word_pairs)
    at = insertion_index(modules)
    encode = pooled_encoder(model, at)
    directions, found = find_subspace(encode, pairs, method, seed, k, max_iterations, stop_accuracy)
    weight = torch.eye(directions.shape[1], dtype=torch.float64) - projection(directions.double())
    full_encode = lambda texts: model.encode(list(texts), batch_size=64, convert_to_tensor=True,  # noqa: E731
                                             show_progress_bar=False).float().cpu()
    before = bias_tests(full_encode, seed) if measure else {}

    with folder_swapped_in(out) as tmp:
        copied = copy_st_folder(model_dir, tmp, modules) + copy_run_record(model_dir, tmp, method, word_pairs)
        updated = insert_projection(tmp, modules, weight)
        debiased = load_model(tmp)  # loads natively, as a user will
        after_encode = lambda texts: debiased.encode(list(texts), batch_size=64,  # noqa: E731
                                                     convert_to_tensor=True, show_progress_bar=False).float().cpu()
        after = bias_tests(after_encode, seed) if measure else {}
        report = {
            "mmssl": "debias", "source": str(model_dir.resolve()), "method": method, "word_pairs": word_pairs,
            "pairs": len(pairs), "seed": seed, "contexts": list(CONTEXTS), "removed_dimensions": int(directions.shape[0]),
            **found, "module": {"path": MODULE_DIR, "index": at, "modules": [m["type"] for m in updated]},
            "files": copied,
            "bias": {name: {"before": before[name], "after": after[name]} for name in before},
            "seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report
