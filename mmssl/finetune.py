"""`mmssl finetune`: how much a pretrained image encoder buys with few labels (a label-efficiency curve).

For each label fraction (1 %, 10 %, 100 % by default; the rows of `mmssl.data.label_fraction.labelled_rows`, the
same rows as every other label-efficient method for one seed) the encoder is adapted to the labelled rows in one
or two ways, and so is the same architecture from random init (the anchor):

* ``probe``: a linear probe of the frozen backbone, exactly `mmssl eval`'s (`mmssl.eval.linear_probe`: L-BFGS,
  weight decay chosen on a validation split of the labelled rows), trained on the fraction's rows only;
* ``full``: backbone + linear head trained end to end with cross-entropy, a simple augmentation (random resized
  crop of at least half the image, horizontal flip), AdamW, linear warm-up then cosine decay, the same number of
  steps for every fraction (a fixed compute budget; a small fraction is seen many times).

Every number is top-1 on the held-out labelled images (the run's eval split), after batch-norm statistics are
recomputed on the training images (as `mmssl eval` does). The output folder holds ``finetune.json`` (the curve)
and, for the pretrained encoder, each adapted model under ``models/<init>-<mode>-<pct>pct/``: the backbone in
its library's format (as the export: `mmssl.models.vision.load_backbone`, or timm's ``local-dir:``) plus
``classifier.safetensors`` (``weight [C, D]``, ``bias [C]`` on the backbone's raw features) and
``classifier.json`` (class names, image size); `load_classifier` rebuilds backbone + head in one module.

The output folder is written whole into a temporary sibling and moved into place at the end: an interrupted run
leaves an earlier output as it was, and mmssl only replaces a folder that an earlier `mmssl finetune` wrote.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.config import DataConfig
from mmssl.errors import DataError, MmsslError, RecipeError

RESULTS_FILE = "finetune.json"
CLASSIFIER_WEIGHTS, CLASSIFIER_CONFIG = "classifier.safetensors", "classifier.json"
MODES = ("probe", "full")
INITS = ("pretrained", "random_init")


@dataclass
class FinetuneSettings:
    """What `finetune` runs: fractions x modes x inits, and the optimisation of the full fine-tune."""

    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    modes: tuple[str, ...] = MODES
    inits: tuple[str, ...] = INITS  # the pretrained encoder and/or the same architecture from random init (anchor)
    steps: int = 300  # optimiser steps of each full fine-tune, whatever the fraction
    batch_size: int = 128  # capped at the number of labelled rows
    learning_rate: float = 1e-3  # AdamW, for backbone and head
    weight_decay: float = 1e-4  # not on biases and normalisation weights
    warmup_ratio: float = 0.05
    crop_scale: tuple[float, float] = (0.5, 1.0)
    seed: int | None = None  # default: the run's seed (the rows a fraction keeps depend on it)
    save_models: bool = True
    device: str = "auto"  # auto: CUDA when there is one

    def __post_init__(self) -> None:
        bad = [f for f in self.fractions if not 0.0 < f <= 1.0]
        if not self.fractions or bad:
            raise RecipeError(f"--labels {bad or 'is empty'}: give label fractions in (0, 1], e.g. 0.01,0.1,1")
        if not self.modes or any(m not in MODES for m in self.modes):
            raise RecipeError(f"--mode {self.modes}: choose probe, full or both")
        if not self.inits or any(i not in INITS for i in self.inits):
            raise RecipeError(f"--init {self.inits}: choose pretrained, random or both")
        if self.steps < 1 or self.batch_size < 2 or self.learning_rate <= 0:
            raise RecipeError("--steps must be >= 1, --batch-size >= 2 and --lr > 0")


@dataclass
class Source:
    """The encoder to adapt and the labelled data to adapt it on."""

    folder: Path
    kind: str  # "run" (an mmssl output folder) or "export" (a backbone folder alone)
    data: DataConfig
    image_size: int
    seed: int
    reference: dict[str, float] = field(default_factory=dict)  # the run's own eval (linear probe, random init)


# ------------------------------------------------------------------------------------------------------------
# the source folder and its data
# ------------------------------------------------------------------------------------------------------------


def resolve_source(folder: str | Path, data: DataConfig | None = None, image_size: int | None = None) -> Source:
    """Read an image-encoder folder: an mmssl run (recipe.yaml + export) or an export alone (then `data` is needed).
    `data` replaces the run's own data. Clear errors for a missing folder, a non-image model, no data."""
    from mmssl.models.vision import MMSSL_FILE
    from mmssl.objectives.image_ssl import EVAL_FILE

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise MmsslError(f"{str(folder)!r} is not a folder; give the output_dir of an image SSL run (e.g. "
                         "runs/simclr_world) or an exported image encoder folder")
    if not (path / MMSSL_FILE).is_file() and not (path / "config.json").is_file():
        if (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file():
            raise MmsslError(f"{str(folder)!r} is a SentenceTransformer (text) model; mmssl finetune adapts image "
                             "encoders (the output of an image SSL run such as simclr, byol or mae)")
        raise MmsslError(f"{str(folder)!r} holds no image encoder (no {MMSSL_FILE} or timm/transformers config.json); "
                         "give the output_dir of a finished image SSL run or its exported backbone folder")
    meta = json.loads((path / EVAL_FILE).read_text(encoding="utf-8")) if (path / EVAL_FILE).is_file() else {}
    info = json.loads((path / MMSSL_FILE).read_text(encoding="utf-8")) if (path / MMSSL_FILE).is_file() else {}
    reference: dict[str, float] = {}
    seed = 0
    kind = "export"
    if (path / "recipe.yaml").is_file():
        from mmssl.recipes import parse_recipe, read_yaml

        kind = "run"
        recipe = parse_recipe(read_yaml(path / "recipe.yaml"))
        if not meta and data is None:
            raise MmsslError(f"{str(folder)!r} is an mmssl run but not of an image encoder (no {EVAL_FILE} beside "
                             "its export); mmssl finetune adapts image encoders")
        seed = recipe.seed
        data = data or recipe.data
        image_size = image_size or meta.get("image_size") or getattr(recipe.objective, "image_size", None)
        metrics_file = path / "metrics.json"
        if metrics_file.is_file():
            saved = json.loads(metrics_file.read_text(encoding="utf-8")).get("eval") or {}
            reference = {k: float(v) for k, v in saved.items() if isinstance(v, (int, float)) and k in (
                "linear_probe_top1", "knn_top1", "random_init_linear_probe_top1", "random_init_knn_top1")}
    if data is None:
        raise MmsslError(f"{str(folder)!r} is an exported encoder without its run's recipe, so mmssl cannot tell "
                         "which data it belongs to; give labelled images with --data (class subfolders or a table "
                         "with an image and a label column) and, if you have one, --eval-data")
    image_size = image_size or info.get("image_size")
    if not image_size:
        raise MmsslError(f"{str(folder)!r} does not record the image size it was trained at; give --image-size")
    return Source(path, kind, data, int(image_size), seed, reference)


def user_data(path: str, eval_path: str | None = None, label_column: str | None = None) -> DataConfig:
    """Labelled images from files (an image folder with class subfolders, or a csv/jsonl/parquet table)."""
    if not Path(path.split("::")[0]).expanduser().exists() and not any(c in path for c in "*?{"):
        raise DataError(f"--data {path!r} does not exist; give a folder of images in class subfolders or a table "
                        "with an image column and a label column")
    if eval_path and not Path(eval_path).expanduser().exists():
        raise DataError(f"--eval-data {eval_path!r} does not exist")
    return DataConfig(source="files", path=path, eval_path=eval_path,
                      columns={"label": label_column} if label_column else {})


@dataclass
class LabelledImages:
    train_images: torch.Tensor  # uint8 [N, 3, S, S], every training image (labelled or not)
    train_labels: torch.Tensor  # long [N], -1 where unknown
    eval_images: torch.Tensor
    eval_labels: torch.Tensor
    class_names: list[str]
    description: str


def load_labelled(source: Source, class_names: Sequence[str] | None = None) -> LabelledImages:
    """The source's train and held-out images with their labels; clear errors when either has none, when named
    classes are missing from the data, or when the data's labels are not among `class_names`."""
    from mmssl.data.image_sources import data_description, load_images

    try:
        splits = load_images(source.data, source.image_size, source.seed, list(class_names) if class_names else None)
    except DataError as exc:
        raise DataError(str(exc).replace("data.columns.label", "--label-column")) from None
    names = list(splits.class_names or [])
    train = splits.train
    if not bool((train.labels >= 0).any()):
        raise DataError(f"the training images of {data_description(source.data)} carry no class labels; give "
                        "labelled images with --data (class subfolders, or a table with a label column named by "
                        "--label-column)")
    if splits.eval is None or not bool((splits.eval.labels >= 0).any()):
        raise DataError(f"no labelled held-out images in {data_description(source.data)} to measure accuracy on; "
                        "give them with --eval-data (or more labelled rows, 5 % of which are held out)")
    present = set(int(c) for c in train.labels[train.labels >= 0].unique())
    if class_names:
        missing = [n for i, n in enumerate(names) if i not in present]
        if missing:
            raise DataError(f"--classes names {missing}, which have no labelled training image in "
                            f"{data_description(source.data)}; the data's labels are "
                            f"{sorted(names[i] for i in present)}")
    if not names:
        names = [str(i) for i in range(int(train.labels.max()) + 1)]
    return LabelledImages(train.images, train.labels, splits.eval.images, splits.eval.labels, names,
                          data_description(source.data))


# ------------------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------------------


def fresh_like(backbone, seed: int):
    """The same architecture as `backbone` (a `mmssl.models.vision.Backbone`), randomly initialised from `seed`."""
    from mmssl.models.vision import Backbone, _create

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backbone.library == "transformers":
            from transformers import AutoModel

            model = AutoModel.from_config(backbone.model.config)
            return Backbone(model, "transformers", backbone.arch, backbone.kwargs, backbone.dim, backbone.mean,
                            backbone.std, backbone.small_stem)
        return _create(backbone.library, backbone.arch, dict(backbone.kwargs), backbone.small_stem)


@dataclass
class _Eval:
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_size: int = 256


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, plain = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and "norm" not in name.lower() and ".bn" not in name.lower() else plain).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_full(backbone: nn.Module, num_classes: int, images: torch.Tensor, labels: torch.Tensor,
               s: FinetuneSettings, seed: int, device: torch.device, ev: _Eval,
               progress: Callable[[str], None] | None = None) -> tuple[nn.Module, nn.Linear, list[float]]:
    """Backbone + linear head trained end to end with cross-entropy on uint8 `images` (labelled rows only).
    Returns the trained backbone, head and the loss of every step; `progress` hears of every fifth of the run."""
    from mmssl.data.image_views import BatchImageViews, ImageViewsConfig

    views = BatchImageViews(ImageViewsConfig(crop_scale=list(s.crop_scale), horizontal_flip=0.5), ev.image_size,
                            ev.mean, ev.std)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        head = nn.Linear(int(backbone.dim), num_classes)
        model = nn.Sequential(backbone, head).to(device).to(memory_format=torch.channels_last)
        model.train()
        opt = torch.optim.AdamW(_param_groups(model, s.weight_decay), lr=s.learning_rate)
        warmup = max(1, int(s.warmup_ratio * s.steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _schedule(step, s.steps, warmup))
        batch = min(s.batch_size, len(images))
        order, at, losses = torch.randperm(len(images)), 0, []
        for _ in range(s.steps):
            if at + batch > len(order):  # a new epoch: a fresh permutation, no partial batch
                order, at = torch.randperm(len(images)), 0
            rows = order[at:at + batch]
            at += batch
            x = views(images[rows]).to(device, memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), labels[rows].to(device))
            if not torch.isfinite(loss):
                raise MmsslError(f"the fine-tuning loss became {loss.item()} at step {len(losses)}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if progress is not None and len(losses) % max(1, s.steps // 5) == 0 and len(losses) < s.steps:
                progress(f"    step {len(losses)}/{s.steps}: loss {sum(losses[-10:]) / len(losses[-10:]):.4f}")
    return backbone, head, losses


@torch.no_grad()
def _accuracy(backbone: nn.Module, head: nn.Linear, images: torch.Tensor, labels: torch.Tensor, ev: _Eval,
              device: torch.device) -> float:
    from mmssl.models.image_features import image_features

    feats = image_features(backbone, images, ev, device)
    return float((head.to(device)(feats).argmax(1).cpu() == labels).float().mean())


def probe(train_features: torch.Tensor, train_labels: torch.Tensor, eval_features: torch.Tensor,
          eval_labels: torch.Tensor, num_classes: int, seed: int) -> tuple[dict[str, float], nn.Linear]:
    """`mmssl eval`'s linear probe on frozen features; also returned as a head on the raw features."""
    from mmssl.eval.linear_probe import _fit, linear_probe_accuracy

    x, y = train_features, train_labels
    metrics = linear_probe_accuracy(x, y, eval_features, eval_labels, num_classes=num_classes, seed=seed)
    # the same probe refitted from zero for export, with the standardisation folded into the weights
    mean, std = x.mean(0), x.std(0, correction=0).clamp(min=1e-6)
    w, b, _ = _fit((x - mean) / std, y, num_classes, metrics["linear_probe_weight_decay"], 100, None)
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_((w / std[:, None]).T)
        head.bias.copy_(b - (mean / std) @ w)
    return metrics, head


def _spread(images: torch.Tensor, labels: torch.Tensor, most: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `most` rows, evenly spaced (a training accuracy that costs little at 100 % of the labels)."""
    rows = torch.linspace(0, len(labels) - 1, min(most, len(labels))).long()
    return images[rows], labels[rows]


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}pct"


def run_finetune(source: Source, data: LabelledImages, work: Path, s: FinetuneSettings,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every (init, mode, fraction) of `s` on `data`; models and ``finetune.json`` written into `work`."""
    from mmssl.data.label_fraction import labelled_rows
    from mmssl.models.image_features import image_features, precise_bn
    from mmssl.models.vision import load_backbone

    say = progress or (lambda _: None)
    seed = source.seed if s.seed is None else s.seed
    device = torch.device("cuda" if s.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if s.device == "auto" else s.device))
    pretrained = load_backbone(source.folder)
    ev = _Eval(source.image_size, pretrained.mean, pretrained.std)
    num_classes = len(data.class_names)
    masks = {f: labelled_rows(data.train_labels, f, seed, data.class_names) for f in sorted(s.fractions)}
    results = []
    started = time.perf_counter()
    for init in s.inits:
        frozen = None  # (model, train features, eval features) of this init, shared by every fraction's probe
        for mode in MODES:
            if mode not in s.modes:
                continue
            for fraction, keep in masks.items():
                t0 = time.perf_counter()
                backbone = pretrained if init == "pretrained" else fresh_like(pretrained, seed)
                entry: dict[str, Any] = {"init": init, "mode": mode, "fraction": fraction,
                                         "labelled": int(keep.sum())}
                if mode == "probe":
                    if frozen is None:
                        model = precise_bn(backbone, data.train_images, ev, device)
                        frozen = (model, image_features(model, data.train_images, ev, device).cpu(),
                                  image_features(model, data.eval_images, ev, device).cpu())
                    model, x, xt = frozen
                    metrics, head = probe(x[keep], data.train_labels[keep], xt, data.eval_labels, num_classes, seed)
                    entry.update(top1=metrics["linear_probe_top1"], train_top1=metrics["linear_probe_train_top1"],
                                 weight_decay=metrics["linear_probe_weight_decay"])
                else:
                    import copy

                    trained, head, losses = train_full(copy.deepcopy(backbone), num_classes, data.train_images[keep],
                                                       data.train_labels[keep], s, seed, device, ev, progress)
                    model = precise_bn(trained, data.train_images, ev, device)
                    entry.update(top1=_accuracy(model, head, data.eval_images, data.eval_labels, ev, device),
                                 train_top1=_accuracy(model, head, *_spread(data.train_images[keep],
                                                                            data.train_labels[keep]), ev, device),
                                 steps=s.steps, first_loss=losses[0],
                                 last_loss=sum(losses[-max(1, len(losses) // 4):]) / max(1, len(losses) // 4))
                entry["seconds"] = round(time.perf_counter() - t0, 2)
                if s.save_models and init == "pretrained":
                    entry["model"] = f"models/{init}-{mode}-{_percent(fraction)}"
                    save_classifier(model, head, work / entry["model"], data.class_names, source.image_size,
                                    {k: v for k, v in entry.items() if k != "model"}, data.description)
                results.append(entry)
                say(f"{init:>11} {mode:>5} {_percent(fraction):>7} ({entry['labelled']} labels): top-1 "
                    f"{entry['top1']:.4f} ({entry['seconds']:.0f} s)")
    return {
        "mmssl": "finetune", "source": str(source.folder), "source_kind": source.kind,
        "architecture": pretrained.arch, "library": pretrained.library, "data": data.description,
        "class_names": data.class_names, "num_train": len(data.train_labels),
        "num_train_labelled": int((data.train_labels >= 0).sum()), "num_eval": int((data.eval_labels >= 0).sum()),
        "image_size": source.image_size, "seed": seed, "device": device.type,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
        "reference": source.reference, "results": results, "seconds": round(time.perf_counter() - started, 1),
    }


# ------------------------------------------------------------------------------------------------------------
# saved classifiers
# ------------------------------------------------------------------------------------------------------------


def save_classifier(backbone, head: nn.Linear, folder: Path, class_names: list[str], image_size: int,
                    result: dict[str, Any], trained_on: str) -> None:
    """The backbone in its library's format (as an export) + the linear head and its class names."""
    from safetensors.torch import save_file

    from mmssl.objectives.image_ssl import EVAL_FILE

    folder.mkdir(parents=True, exist_ok=True)
    backbone.to(memory_format=torch.contiguous_format).cpu().save(folder, image_size=image_size, trained_on=trained_on)
    save_file({"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()},
              str(folder / CLASSIFIER_WEIGHTS))
    (folder / CLASSIFIER_CONFIG).write_text(json.dumps(
        {"class_names": class_names, "num_features": int(head.in_features), "image_size": image_size,
         "mean": list(backbone.mean), "std": list(backbone.std), "result": result}, indent=2), encoding="utf-8")
    (folder / EVAL_FILE).write_text(json.dumps({"class_names": class_names, "image_size": image_size}, indent=2),
                                    encoding="utf-8")


class Classifier(nn.Module):
    """A saved fine-tuned model: normalised images [B, 3, S, S] -> class logits [B, C]."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, class_names: list[str], image_size: int):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.class_names, self.image_size = class_names, image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def load_classifier(folder: str | Path) -> Classifier:
    """Backbone + head from a ``models/...`` folder written by `mmssl finetune` (in eval mode)."""
    from safetensors.torch import load_file

    from mmssl.models.vision import load_backbone

    folder = Path(folder)
    if not (folder / CLASSIFIER_WEIGHTS).is_file():
        raise MmsslError(f"{str(folder)!r} is not a classifier written by mmssl finetune (no {CLASSIFIER_WEIGHTS})")
    config = json.loads((folder / CLASSIFIER_CONFIG).read_text(encoding="utf-8"))
    state = load_file(str(folder / CLASSIFIER_WEIGHTS))
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return Classifier(load_backbone(folder), head, config["class_names"], config["image_size"]).eval()


# ------------------------------------------------------------------------------------------------------------
# the output folder
# ------------------------------------------------------------------------------------------------------------


def written_by_finetune(folder: Path) -> bool:
    try:
        return json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8")).get("mmssl") == "finetune"
    except (OSError, ValueError, AttributeError):
        return False


def _foreign(folder: Path) -> list[str]:
    """Entries of an earlier finetune output that it did not write (its report, with mmssl report's marker, is
    its own): replacing the folder would lose them."""
    from mmssl.report.page import MARKER

    return sorted(p.name for p in folder.iterdir() if p.name not in (RESULTS_FILE, "models")
                  and not (p.name == "report" and (p / MARKER).is_file()))


def check_output(out: Path, inputs: dict[str, str | None], overwrite: bool) -> None:
    """`out` may be written: not an input (nor inside one, nor holding one), writable, and absent, empty or an
    earlier `mmssl finetune` output (replaced only with `overwrite`, and only if it holds nothing else)."""
    from mmssl.outputs import check_location, check_not_input, recover_replaced, replace_owned_output

    check_location(out, "--out", folder=True)
    check_not_input(out, "--out", inputs)
    recover_replaced(out)
    if out.is_dir() and not any(out.iterdir()):
        return
    owned = out.is_dir() and written_by_finetune(out)
    replace_owned_output(out, "--out", overwrite, owned, "--overwrite")
    if owned and _foreign(out):
        raise MmsslError(f"--out {str(out)!r} is an earlier mmssl finetune output but also holds "
                         f"{', '.join(_foreign(out)[:3])}, which mmssl did not write and would lose in replacing it; "
                         "move them out or choose another --out")


def finetune(folder: str | Path, out: str | Path, settings: FinetuneSettings, data: DataConfig | None = None,
             class_names: Sequence[str] | None = None, image_size: int | None = None, overwrite: bool = False,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Label-efficiency of the encoder in `folder` (see the module docstring); writes `out`, returns the results."""
    out = Path(out).expanduser()
    inputs = {"folder": str(folder), "--data": data.path if data else None,
              "--eval-data": data.eval_path if data else None}
    check_output(out, inputs, overwrite)  # before any work
    source = resolve_source(folder, data, image_size)
    labelled = load_labelled(source, class_names)
    seed = source.seed if settings.seed is None else settings.seed
    from mmssl.data.label_fraction import labelled_rows

    for fraction in settings.fractions:  # a fraction that leaves a class empty stops here, before any training
        labelled_rows(labelled.train_labels, fraction, seed, labelled.class_names)
    from mmssl.outputs import folder_swapped_in

    with folder_swapped_in(out) as work:
        results = run_finetune(source, labelled, work, replace(settings, seed=seed), progress)
        (work / RESULTS_FILE).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results
