"""Several objectives over one shared encoder, in one run (a recipe's ``objectives:`` list).

Each objective is the same class a single-objective recipe uses, set up with its own data and parameters; the
parts they have in common (tokenizer, text backbone, image backbone, open_clip model) are built once, by the
first objective that asks for them (`Objective.shared_part`), so the encoder's weights are one set trained by
every loss. Each objective keeps its own heads. One optimiser, one trainer, one checkpoint.

Mixing (`mmssl.config.MixingConfig`): ``sum`` runs every objective each step on its own next batch and
minimises the weighted sum of the losses; ``alternate`` and ``sample`` run one objective per step (a fixed
interleaving, or seeded draws) in proportion to shares. Batches come from one stream per objective
(`mmssl.data.streams`), so a resumed run continues every stream exactly where it stopped. All the objectives'
forward passes of a step run inside one call of the (DDP-wrapped) module, so gradients are synchronised once.

Outputs: each objective exports into ``output_dir/<label>/`` in its own native format (with a single-objective
``recipe.yaml`` and ``metrics.json``, so ``mmssl eval`` and ``mmssl push`` take the folder as it is); the shared
encoder's weights are the same in every folder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from mmssl.config import ObjectiveEntry, Recipe
from mmssl.data.streams import MixedStream, Stream, StreamBatchSampler, StreamsDataset, StreamSchedule
from mmssl.errors import RecipeError
from mmssl.objectives.base import ModelOutput, Objective, SetupContext
from mmssl.registry import get_objective

log = logging.getLogger(__name__)


def sub_recipe(recipe: Recipe, entry: ObjectiveEntry) -> Recipe:
    """The single-objective recipe of one entry: its parameters, its data (or the recipe's), the rest shared."""
    return copy.deepcopy(dataclasses.replace(recipe, objective=entry.params, objectives=None,
                                             data=entry.data or recipe.data))


def build_objective(recipe: Recipe, context: SetupContext | None = None) -> Objective:
    """The objective a recipe trains: its one `objective`, or its `objectives` combined."""
    if recipe.objectives:
        return Combined(recipe, context)
    return get_objective(recipe.objective.name)(recipe, context)


class CombinedModule(nn.Module):
    """Every objective's module (``objectives[label]``), sharing their encoder, plus the learned log-variances
    of uncertainty weighting. ``forward(run)`` calls ``run(self)``: the trainer's DDP wrapper sees one forward
    pass per step whatever the objectives compute in it."""

    def __init__(self, modules: dict[str, nn.Module], uncertainty: bool):
        super().__init__()
        self.objectives = nn.ModuleDict(modules)
        self.log_variance = nn.Parameter(torch.zeros(len(modules))) if uncertainty else None
        # the shared encoder is saved once, under its first name; its other names are filled in on load
        first: dict[int, str] = {}
        self.aliases: dict[str, str] = {}
        tensors = [*self.named_parameters(remove_duplicate=False), *self.named_buffers(remove_duplicate=False)]
        for name, tensor in tensors:
            self.aliases.update({name: first[id(tensor)]} if id(tensor) in first else {})
            first.setdefault(id(tensor), name)
        self._register_state_dict_hook(_drop_aliases)
        self._register_load_state_dict_pre_hook(self._fill_aliases)

    def _fill_aliases(self, state_dict, prefix, *args) -> None:  # noqa: ANN001, ANN002 - torch's hook signature
        for alias, name in self.aliases.items():
            if prefix + alias not in state_dict and prefix + name in state_dict:
                state_dict[prefix + alias] = state_dict[prefix + name]

    def forward(self, run: Callable[["CombinedModule"], Any]) -> Any:
        return run(self)


def _drop_aliases(module: "CombinedModule", state_dict, prefix, local_metadata) -> None:  # noqa: ANN001
    for alias in module.aliases:
        state_dict.pop(prefix + alias, None)


class Combined(Objective):
    name = "combined"
    output = ModelOutput("combined", "mmssl", "feature-extraction", "", "")

    def __init__(self, recipe: Recipe, context: SetupContext | None = None):
        super().__init__(recipe, context)
        assert recipe.objectives
        self.entries = {entry.label: entry for entry in recipe.objectives}
        self.subs: dict[str, Objective] = {}
        parts: dict[str, Any] = {}
        for label, entry in self.entries.items():
            sub = get_objective(entry.params.name)(sub_recipe(recipe, entry), self.context.under(label))
            sub.parts = parts  # one dict: what one objective builds, the others reuse
            self.subs[label] = sub
        self.parts = parts
        self.last_eval: dict[str, dict[str, float]] = {}
        self.steps_done = 0
        self._eval_loaders: dict[str, Any] = {}

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        for label, sub in self.subs.items():
            if getattr(sub.params, "cached_chunk_size", None) is not None:
                raise RecipeError(f"objectives ({label}): cached_chunk_size (GradCache) runs its own backward pass, "
                                  "which a combined recipe cannot add to the other objectives' loss; remove it")
            sub.setup()
            if sub.batch_sampler(self.recipe.train.batch_size, 1) is not None:
                raise RecipeError(f"objectives ({label}): {sub.name} orders its own batches, which a combined recipe's "
                                  "streams cannot follow; train it alone")
        self._check_shared()
        mixing = self.recipe.mixing
        self.module = CombinedModule({label: sub.module for label, sub in self.subs.items()},
                                     uncertainty=mixing.balancing == "uncertainty")
        self.eval_dataset = None
        streamed = [label for label, sub in self.subs.items() if sub.train_stream is not None]
        if streamed:
            if len(streamed) < len(self.subs):
                whole = [label for label in self.subs if label not in streamed]
                raise RecipeError(f"objectives {streamed} stream their data and {whole} read theirs whole; a combined "
                                  "recipe does one or the other: set data.streaming the same way for every objective")
            shares = [(self.entries[label].share or sub.train_stream.num_samples or 1) ** (1.0 / mixing.temperature)
                      for label, sub in self.subs.items()]
            self.train_stream = MixedStream({label: sub.train_stream for label, sub in self.subs.items()},
                                            {label: sub.collate for label, sub in self.subs.items()}, shares,
                                            mixing.strategy, self.recipe.train.batch_size, self.recipe.seed)
            return
        self.train_dataset = StreamsDataset([sub.train_dataset for sub in self.subs.values()])  # type: ignore[assignment]
        self.streams = [Stream(label, len(sub.train_dataset),
                               (self.entries[label].share or len(sub.train_dataset)) ** (1.0 / mixing.temperature),
                               group=json.dumps(dataclasses.asdict(sub.recipe.data), sort_keys=True))
                        for label, sub in self.subs.items()]

    def _check_shared(self) -> None:
        """Every objective must train part of the encoder another one trains: else the recipe is two runs."""
        params = {label: {id(p) for p in sub.module.parameters()} for label, sub in self.subs.items()}
        if len(params) < 2:
            return
        for label, ids in params.items():
            others = set().union(*(v for k, v in params.items() if k != label))
            if not ids & others:
                kinds = ", ".join(f"{k} ({self.entries[k].params.name})" for k in params)
                raise RecipeError(f"objectives: {label!r} shares no weights with the other objectives ({kinds}): a "
                                  "combined recipe trains one encoder with several losses, so its objectives must "
                                  "work on the same kind of input and model; train them as separate recipes")

    def has_unused_parameters(self) -> bool:
        """One objective per step leaves the others' heads without gradients; a sum of objectives that each leave
        some unused may still use all of them, which only a probe could tell (DDP's search is then a cheap cost)."""
        subs = list(self.subs.values())
        return self.recipe.mixing.strategy != "sum" or all(sub.has_unused_parameters() for sub in subs)

    def batch_sampler(self, batch_size: int, world_size: int) -> Sampler | None:
        if self.train_stream is not None:  # the mixed stream orders its own steps
            return None
        schedule = StreamSchedule(self.streams, self.recipe.mixing.strategy, batch_size, world_size, self.recipe.seed)
        return StreamBatchSampler(schedule)

    # -- per step --------------------------------------------------------------------------------
    def collate(self, rows: list[tuple[int, int, Any]]) -> dict[str, Any]:
        labels = list(self.subs)
        grouped: dict[int, list[Any]] = {}
        passes: dict[int, int] = {}
        for stream, pass_, row in rows:
            grouped.setdefault(stream, []).append(row)
            passes[stream] = pass_
        parts, epochs = {}, {}
        for stream, items in grouped.items():
            label = labels[stream]
            sub = self.subs[label]
            sub.set_epoch(passes[stream])  # per-example random views depend on the stream's own pass
            parts[label] = sub.collate(items)
            epochs[label] = passes[stream]
        return {"parts": parts, "passes": epochs}

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        parts = {}
        for label, part in batch["parts"].items():
            sub = self.subs[label]
            sub.set_epoch(int(batch["passes"][label]))
            parts[label] = sub.prepare_batch(part)
        return {"parts": parts, "passes": batch["passes"]}

    def batch_size_of(self, batch: dict[str, Any]) -> tuple[int, int]:
        sizes = [self.subs[label].batch_size_of(part) for label, part in batch["parts"].items()]
        return sum(s[0] for s in sizes), sum(s[1] for s in sizes)

    def losses(self, inner: CombinedModule, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The step's total loss (weighted, balanced) and each objective's logged scalars under ``label/``."""
        total: torch.Tensor | None = None
        logs: dict[str, torch.Tensor] = {}
        labels = list(self.subs)
        for label, part in batch["parts"].items():
            captured: list[torch.Tensor] = []
            out = self.subs[label].training_step(inner.objectives[label], part, captured.append)
            if len(captured) != 1:
                raise RuntimeError(f"objective {label!r} called backward {len(captured)} times in one step")
            loss = self.entries[label].weight * captured[0]
            if inner.log_variance is not None:
                s = inner.log_variance[labels.index(label)]
                loss = torch.exp(-s) * loss + s
                logs[f"{label}/log_variance"] = s.detach()
            total = loss if total is None else total + loss
            logs.update({f"{label}/{key}": value for key, value in out.items()})
        assert total is not None, "a step with no objective"
        return total, logs

    def training_step(self, module: nn.Module, batch: dict[str, Any], backward) -> dict[str, torch.Tensor]:
        total, logs = module(lambda inner: self.losses(inner, batch))
        backward(total)
        return {"loss": total.detach(), **logs}

    def forward(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        total, logs = self.losses(self.core(module), batch)
        return {"loss": total, **logs}

    def after_optimizer_step(self, module: nn.Module, step: int, total_steps: int) -> None:
        super().after_optimizer_step(module, step, total_steps)  # (no pairs of its own: each objective moves its own)
        inner = self.core(module)
        for label, sub in self.subs.items():
            sub.after_optimizer_step(inner.objectives[label], step, total_steps)
        self.steps_done = step

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        super().attach_optimizer(optimizer)
        for sub in self.subs.values():
            sub.attach_optimizer(optimizer)

    def param_groups(self, module: nn.Module) -> list[dict[str, Any]]:
        """Each objective's own groups; a shared parameter stays in the group of the first objective that has it."""
        inner, seen, groups = self.core(module), set(), []
        for label, sub in self.subs.items():
            for group in sub.param_groups(inner.objectives[label]):
                params = [p for p in group["params"] if id(p) not in seen]
                seen.update(id(p) for p in params)
                if params:
                    groups.append({**group, "params": params})
        if inner.log_variance is not None:
            groups.append({"params": [inner.log_variance], "weight_decay": 0.0})
        return groups

    # -- evaluation and export -------------------------------------------------------------------
    def has_evaluation(self) -> bool:
        return any(sub.has_evaluation() for sub in self.subs.values())

    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        inner = self.core(module)
        out: dict[str, float] = {}
        for label, sub in self.subs.items():
            if not sub.has_evaluation():
                continue
            if label not in self._eval_loaders:
                self._eval_loaders[label] = accelerator.prepare(DataLoader(
                    sub.eval_dataset, batch_size=self.recipe.train.batch_size, collate_fn=sub.collate))
            result = sub.evaluate(inner.objectives[label], self._eval_loaders[label], accelerator)
            self.last_eval[label] = result
            out.update({f"{label}/{key}": value for key, value in result.items()})
        return out

    def diagnostics(self) -> dict[str, Any]:
        return {label: found for label, sub in self.subs.items() if (found := sub.diagnostics())}

    def save_artifacts(self, directory: Path) -> None:
        for label, sub in self.subs.items():
            (directory / label).mkdir(exist_ok=True)
            sub.save_artifacts(directory / label)

    def export(self, module: nn.Module, directory: Path) -> None:
        from mmssl.recipes import recipe_to_dict, save_recipe

        inner = self.core(module)
        labels = list(self.subs)
        for label, sub in self.subs.items():
            folder = directory / label
            folder.mkdir()
            sub.export(inner.objectives[label], folder)
            save_recipe(sub.recipe, folder / "recipe.yaml")
            metrics = {"objective": sub.name, "steps": self.steps_done, "eval": self.last_eval.get(label, {}),
                       "trained_jointly_with": [f"{other} ({self.entries[other].params.name})"
                                                for other in labels if other != label],
                       "combined_recipe": recipe_to_dict(self.recipe), **sub.describe()}
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")

    def describe(self) -> dict[str, Any]:
        shared = sorted(self.parts)
        return {
            "objectives": {label: {"name": sub.name, "weight": self.entries[label].weight, **sub.describe()}
                           for label, sub in self.subs.items()},
            "mixing": dataclasses.asdict(self.recipe.mixing),
            "shared_parts": shared,
            "num_parameters": sum(p.numel() for p in self.module.parameters()),
        }
