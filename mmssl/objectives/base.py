"""The contract between the trainer and an objective.

An objective owns its data preparation, model and loss; the trainer owns the loop (optimisation,
accumulation, precision, checkpoints, logging, processes). One trainer runs every objective.

A method is one module in `mmssl/objectives/` (found by the registry), with its loss in `mmssl/losses/`:
subclass `Objective` (or a family's base: `image_ssl.ImageSSL`, `text.TextObjective`,
`image_text.ImageTextObjective`), set `Params` and `output`, implement `setup`, `collate`, `forward` (or
`training_step`) and `export`; override the hooks it needs (`param_groups`, `momentum_pairs`,
`after_optimizer_step`, `evaluate`, `save_artifacts`; `reset_optimizer_state` forgets the optimiser's state of
some parameters). What the run looks like (processes, device, the checkpoint being resumed) is `self.context`,
never the environment; `self.core(module)` is the module the method built, whatever the trainer wrapped it in.
State that changes during training (momentum encoders, queues, schedules) lives in the module's parameters and
buffers, so checkpoints and resume carry it exactly.

Streamed data (`mmssl.data.streaming`): `setup` sets `train_stream` (a `SampleStream` over
`mmssl.data.stream_sources.data_sources`, with a `Transform` that turns one raw record into samples in the
loader workers) instead of `train_dataset`; `collate` then receives those samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import datasets
import torch
from torch import nn

from mmssl.config import ObjectiveParams, Recipe
from mmssl.data.streaming import SampleStream
from mmssl.data.streams import MixedStream
from mmssl.models.momentum import momentum_update

T = TypeVar("T")


@dataclass(frozen=True)
class ModelOutput:
    """What an objective exports, as the Hub and model cards describe it."""

    kind: str  # short name, e.g. "mlm", "sentence_embedding", "image_encoder"
    library: str  # the Hub's library_name, e.g. "transformers", "timm"
    pipeline_tag: str  # e.g. "fill-mask", "image-feature-extraction"
    card_template: str  # a file in the model_cards templates
    eval_task: str  # the model-index task type of its evaluation results
    results: tuple[str, ...] | None = None  # the eval metrics reported as results on the Hub (None: all)


@dataclass(frozen=True)
class SetupContext:
    """What the trainer tells an objective about the run it sets up for."""

    world_size: int = 1  # processes training together
    rank: int = 0  # this process among them
    device: torch.device = torch.device("cpu")  # where this process trains
    resume_dir: Path | None = None  # the checkpoint being resumed: saved artefacts (a tokenizer) must be reused

    def under(self, label: str) -> SetupContext:
        """The context of one objective of a combined recipe (its artefacts are saved in a subfolder)."""
        return replace(self, resume_dir=self.resume_dir / label if self.resume_dir is not None else None)


class Objective:
    """Subclass, set the class attributes, and register with ``@register_objective("name")``."""

    name: ClassVar[str]
    Params: ClassVar[type[ObjectiveParams]] = ObjectiveParams
    output: ClassVar[ModelOutput]
    throughput_unit: ClassVar[str] = "examples"

    def __init__(self, recipe: Recipe, context: SetupContext | None = None):
        self.recipe = recipe
        self.params = recipe.objective
        self.context = context or SetupContext()
        self.tau: float | None = None  # the EMA rate of the last update of the `momentum_pairs`
        self.module: nn.Module
        self.train_dataset: datasets.Dataset | None = None
        self.eval_dataset: datasets.Dataset | None = None
        # set instead of `train_dataset` when the training data is streamed (`mmssl.data.streaming`); the trainer
        # places it on its process and reads it through a stateful loader with `collate`
        self.train_stream: SampleStream | MixedStream | None = None
        self.epoch = 0
        self.optimizer: torch.optim.Optimizer | None = None  # set by the trainer (`attach_optimizer`)
        # parts shared with the other objectives of a combined recipe (set before `setup`; see `shared_part`)
        self.parts: dict[str, Any] = {}

    def shared_part(self, role: str, build: Callable[[], T]) -> T:
        """The part playing `role` ("tokenizer", "text_backbone", "image_backbone", "open_clip_model"): built by
        the first objective of a recipe that asks for it, reused by the others, so they train one shared encoder."""
        if role not in self.parts:
            self.parts[role] = build()
        return self.parts[role]

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load data, build tokenizer and model; set `module`, `train_dataset` (or `train_stream`), `eval_dataset`.

        ``self.context.resume_dir`` is the checkpoint being resumed, whose saved artefacts (e.g. a trained
        tokenizer) must be reused so that the run continues exactly.
        """
        raise NotImplementedError

    def core(self, module: nn.Module) -> Any:
        """The module this objective built (`self.module`) inside whatever the trainer wrapped it in (DDP, FSDP,
        ``torch.compile``); `module` itself when it is not wrapped."""
        found = module
        while found is not getattr(self, "module", None):
            inner = getattr(found, "module", None)
            if not isinstance(inner, nn.Module):
                inner = getattr(found, "_orig_mod", None)  # torch.compile
            if not isinstance(inner, nn.Module):
                return found
            found = inner
        return found

    # -- per step --------------------------------------------------------------------------------
    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def batch_sampler(self, batch_size: int, world_size: int) -> torch.utils.data.Sampler | None:
        """The objective's own batch order (a sampler of row lists, with ``set_epoch``; one list per process and
        step), or None for the trainer's: a permutation of `train_dataset` per epoch."""
        return None

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each pass over the data (before loader workers start), so that
        per-example random transforms made in `collate` can depend on (seed, epoch, index) only."""
        self.epoch = epoch

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Random per-step transforms (masking, views). Uses torch's global RNG, seeded by the trainer."""
        return batch

    def forward(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Return at least ``{"loss": scalar}``; other scalar entries are logged."""
        return module(**batch)

    def training_step(
        self, module: nn.Module, batch: dict[str, Any], backward: Callable[[torch.Tensor], None]
    ) -> dict[str, torch.Tensor]:
        """Compute the loss and call `backward(loss)` exactly once (the trainer's backward checks the loss
        is finite, scales it for accumulation and handles precision). Objectives that need a custom
        backward (e.g. cached/GradCache losses) override this. Returns detached scalars to log."""
        out = self.forward(module, batch)
        backward(out["loss"])
        return {k: v.detach() for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 0}

    def momentum_pairs(self, core: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) submodules of `core` (the module this objective built): after each optimiser step
        every target moves towards its online module by an exponential moving average at rate `momentum`
        (BYOL's target network, MoCo's key encoder). Targets get no gradient (`models.momentum.make_momentum_copy`)."""
        return []

    def momentum_rate(self, step: int, total_steps: int) -> float:
        """The EMA rate after `step` of `total_steps`: ``objective.momentum``, constant, or on a cosine up to
        ``objective.momentum_final`` when ``objective.momentum_schedule`` is "cosine" (BYOL)."""
        from mmssl.models.momentum import cosine_momentum

        p = self.params
        if getattr(p, "momentum_schedule", "constant") == "constant":
            return p.momentum
        return cosine_momentum(step, total_steps, base=p.momentum, final=p.momentum_final)

    def after_optimizer_step(self, module: nn.Module, step: int, total_steps: int) -> None:
        """Called after each optimiser step (not per micro-batch) with the number of steps done (1-based)
        and the run's total. The base class moves the `momentum_pairs`; an override calls ``super()`` first."""
        pairs = self.momentum_pairs(self.core(module))
        if pairs:
            self.tau = self.momentum_rate(step, total_steps)
            with torch.no_grad():
                for online, target in pairs:
                    momentum_update(online, target, self.tau)

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once by the trainer with the run's optimiser, for methods that reset part of its state."""
        self.optimizer = optimizer

    def reset_optimizer_state(self, params) -> None:  # noqa: ANN001 - any iterable of parameters
        """Forget the optimiser's state (moments, step counts) of `params`: their next update starts as for new
        parameters (e.g. a head re-initialised every epoch)."""
        if self.optimizer is not None:
            for param in params:
                self.optimizer.state.pop(param, None)

    def has_unused_parameters(self) -> bool:
        """Whether some trained parameters get no gradient in a step (e.g. a CoCa model's contrastive
        projections under the caption loss): DDP then has to look for them (``find_unused_parameters``)."""
        return False

    def param_groups(self, module: nn.Module) -> list[dict[str, Any]]:
        """Optimiser parameter groups: dicts with ``params`` and optionally ``weight_decay`` (a multiplier of
        train.weight_decay, default 1) and ``lr_scale`` (of train.learning_rate, default 1). Groups without
        weight decay are also excluded from LARS' trust-ratio adaptation. Default: no decay on biases and
        normalisation weights."""
        decay, no_decay = [], []
        for name, param in module.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def batch_size_of(self, batch: dict[str, Any]) -> tuple[int, int]:
        """(examples, tokens) in a batch, for throughput."""
        ids = batch.get("input_ids")
        if ids is None:
            return 0, 0
        mask = batch.get("attention_mask")
        return ids.shape[0], int(mask.sum()) if mask is not None else ids.numel()

    # -- evaluation and export -------------------------------------------------------------------
    def has_evaluation(self) -> bool:
        """Whether `evaluate` has something to measure (the trainer then calls it at eval_every and at the end)."""
        return self.eval_dataset is not None

    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        return {}

    def diagnostics(self) -> dict[str, Any]:
        """Arrays from the last evaluation that `mmssl report` draws (similarity histograms, spectra, a confusion
        matrix); saved under ``diagnostics`` in metrics.json. Default: those an evaluation left in
        ``self.last_diagnostics``."""
        return dict(getattr(self, "last_diagnostics", None) or {})

    def evaluate_export(self, directory: Path) -> dict[str, float]:
        """Evaluate a model exported by `export` (``mmssl eval DIR``) on this recipe's eval data."""
        raise NotImplementedError(f"objective {self.name!r} has no standalone evaluation")

    def save_artifacts(self, directory: Path) -> None:
        """Save what a resumed run needs besides model/optimiser state (e.g. the tokenizer)."""

    def export(self, module: nn.Module, directory: Path) -> None:
        """Save the trained model in its ecosystem's native format."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Facts about data and model for metrics.json and model cards."""
        return {}
