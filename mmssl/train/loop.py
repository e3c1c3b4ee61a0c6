"""One Accelerate training loop for every objective: accumulation, precision, clipping, schedules,
evaluation, atomic checkpoints, exact mid-epoch resume, logging. Runs unchanged on one CPU, one GPU,
or many processes under ``accelerate launch`` / ``torchrun``."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, gather_object, send_to_device, set_seed
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import get_scheduler

from mmssl.data.streaming import SampleStream, default_workers, make_loader, skipped_counts
from mmssl.data.streams import MixedStream
from mmssl.errors import DataError, MmsslError, RecipeError, TrainingDiverged
from mmssl.outputs import RunManifest, check_not_input, is_disk_full, storage_failure
from mmssl.config import Recipe
from mmssl.recipes import recipe_to_dict, save_recipe
from mmssl.objectives.base import SetupContext
from mmssl.objectives.combined import build_objective
from mmssl.train import checkpoints as ckpt
from mmssl.train.metrics_log import MetricsLog, flatten
from mmssl.train.optim import build_optimizer
from mmssl.train.run_folder import Claim, claim_output_dir, open_manifest, release_run_folder

log = logging.getLogger(__name__)


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch): the data order survives a resume exactly."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def _whole(batch: Any) -> Any:
    """The collate of a stream that yields whole batches: nothing left to do."""
    return batch


def stream_batches_per_epoch(recipe: Recipe, stream: SampleStream | MixedStream, world_size: int) -> int:
    """Batches per process in one epoch of a stream: ``data.num_samples`` (or the shards' sizes.json) over the
    global batch; a stream of unknown size needs ``train.max_steps``, and its epoch is then the whole run."""
    cfg = recipe.train
    samples = recipe.data.num_samples or stream.num_samples
    if samples is None:
        if cfg.max_steps is None:
            raise RecipeError("the training data is streamed and its size is unknown: set train.max_steps (or "
                              "data.num_samples, or write the shards with `mmssl prepare`, whose sizes.json tells it)")
        return cfg.max_steps * cfg.gradient_accumulation_steps
    return max(1, samples // (cfg.batch_size * world_size))


def stream_skips(loader, accelerator: Accelerator) -> tuple[dict[str, int], list[str]]:
    """Records the stream skipped (by reason), summed over every process and loader worker, and a few examples."""
    counts, examples = skipped_counts(loader.state_dict())
    if accelerator.num_processes > 1:
        total: dict[str, int] = {}
        gathered = gather_object([(counts, examples)])
        for part, _ in gathered:
            for reason, n in part.items():
                total[reason] = total.get(reason, 0) + n
        counts, examples = total, [e for _, found in gathered for e in found][:5]
    return counts, examples


def step_seed(seed: int, epoch: int, micro_batch: int, rank: int) -> int:
    """Seed for the global RNG before each micro-batch (masking, dropout): a pure function of position."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + micro_batch) * 257 + rank


def make_accelerator(recipe: Recipe) -> Accelerator:
    cfg = recipe.train
    cpu = not cfg.on_cuda
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if not cpu and torch.cuda.is_bf16_supported() else "no"
    if precision == "fp16" and cpu:
        raise RecipeError("train.mixed_precision=fp16 needs a GPU; use 'bf16' or 'no' on CPU")
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    for name in cfg.trackers:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise RecipeError(f"train.trackers: unknown tracker {name!r}; choose from {sorted(LOGGER_TYPE_TO_CLASS)}")
    try:
        return Accelerator(
            cpu=cpu,
            mixed_precision=precision,
            log_with=cfg.trackers or None,
            project_config=ProjectConfiguration(
                project_dir=recipe.output_dir, logging_dir=str(Path(recipe.output_dir) / "tracking")
            ),
            # set again after the objective's setup, which knows (`Objective.has_unused_parameters`)
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
    except (ImportError, ValueError) as exc:
        raise RecipeError(f"train: could not set up training ({exc})") from None


def _resume_schedule(optimizer: torch.optim.Optimizer, scheduler, saved: dict[str, Any],
                     recipe_groups: list[dict[str, Any]]) -> None:
    """Continue the schedule at the checkpoint's step with this recipe's optimiser settings (`recipe_groups`:
    the groups' hyperparameters before the checkpoint was loaded): loading restores the learning rate, betas
    and weight decay it was trained with, but a resumed run may change them (e.g. a lower
    train.learning_rate after divergence). Moments and momentum buffers are kept."""
    old = saved.get("base_lrs", [])
    scheduler.load_state_dict({**saved, "base_lrs": list(scheduler.base_lrs)})
    lrs = [base * rule(scheduler.last_epoch) for base, rule in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, settings, lr, base in zip(optimizer.param_groups, recipe_groups, lrs, scheduler.base_lrs):
        group.update({**settings, "lr": lr, "initial_lr": base})
    scheduler.load_state_dict({**scheduler.state_dict(), "_last_lr": lrs})
    if old and old[0] != scheduler.base_lrs[0]:
        log.info("resuming with train.learning_rate=%g (the checkpoint was trained with %g)", scheduler.base_lrs[0], old[0])


def _hardware(accelerator: Accelerator) -> str:
    if accelerator.device.type == "cuda":
        name = torch.cuda.get_device_name(accelerator.device)
    else:
        name = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return f"{accelerator.num_processes} x {name}"


def _parameter_checksum(module: torch.nn.Module) -> torch.Tensor:
    """(sum, sum of squares) of all parameters, to confirm every process ends with the same weights."""
    params = [p.detach().double() for p in module.parameters()]
    return torch.stack([sum(p.sum() for p in params), sum((p * p).sum() for p in params)])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _partial_write_failed(exc: Exception, partial: Path, output_dir: Path) -> str:
    """The storage's reason for a failed write (a full disk, a read-only folder), after removing the partial
    output; any other error is raised again unchanged."""
    reason = storage_failure(exc, output_dir)
    if reason is None:
        raise exc
    shutil.rmtree(partial, ignore_errors=True)
    return reason


def export(objective, module: torch.nn.Module, output_dir: Path, manifest: RunManifest) -> None:
    """Write the final model files to a temporary folder, record them as the run's, then move each into
    place atomically."""
    tmp = output_dir / ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        objective.export(module, tmp)
    except Exception as exc:
        reason = _partial_write_failed(exc, tmp, output_dir)
        latest = ckpt.last_safe(output_dir)
        resume = (f"the checkpoint {str(latest)!r} is intact: resume from it with train.resume_from=latest"
                  if latest else "no checkpoint was saved (set train.save_every to keep one)")
        raise MmsslError(f"writing the trained model into {str(output_dir)!r} failed ({reason}); {resume} once there "
                         "is room") from None
    written = [path.relative_to(tmp).as_posix() for path in sorted(tmp.rglob("*")) if not path.is_dir()]
    clashes = [name for name in written if (output_dir / name).exists() and not manifest.owns(name)]
    if clashes:  # kept under a name the run does not own, so no later run removes it
        kept = output_dir / f"model-not-moved-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(tmp, kept)
        raise MmsslError(f"the trained model is in {str(kept)!r}, not moved into {str(output_dir)!r}: "
                         f"{', '.join(clashes)} there {'was' if len(clashes) == 1 else 'were'} not written by mmssl "
                         "and would be replaced; move them away and copy the files over, or train into a new output_dir")
    manifest.add(written)
    for path in sorted(tmp.rglob("*")):
        target = output_dir / path.relative_to(tmp)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            os.replace(path, target)
    shutil.rmtree(tmp, ignore_errors=True)


def publish(recipe: Recipe, directory: Path, message: str) -> None:
    """Push an output folder as the recipe's `push_to_hub` says; a failure says how to retry by hand."""
    from mmssl.hub import push_model

    cfg = recipe.push_to_hub
    try:
        push_model(directory, cfg.repo_id, endpoint=cfg.endpoint, private=cfg.private, revision=cfg.revision,
                   license=cfg.license, commit_message=message, overwrite=True)
    except MmsslError as exc:
        raise MmsslError(f"{exc} (the trained model is saved in {str(directory)!r}; publish it later with "
                         f"`mmssl push {directory} --repo-id {cfg.repo_id}`)") from None


def train(recipe: Recipe) -> dict[str, Any]:
    """Run `recipe` to completion and return its final metrics (also written to metrics.json)."""
    try:
        return Run(recipe).run()
    finally:
        release_run_folder(Path(recipe.output_dir))


class Run:
    """One training run of a recipe, step by step: claim the output folder, build the objective, its loaders and
    optimiser, resume, train (accumulation, clipping, logging, evaluation, checkpoints), then export."""

    def __init__(self, recipe: Recipe):
        self.recipe, self.cfg = recipe, recipe.train
        self.output_dir = Path(recipe.output_dir)
        self.accelerator = make_accelerator(recipe)
        self.main = self.accelerator.is_main_process
        self.world_size = self.accelerator.num_processes
        set_seed(recipe.seed)
        self.recipe_dict = recipe_to_dict(recipe)
        self.last_eval: dict[str, float] = {}
        self.window_size = 1  # micro-batches in the current accumulation window

    def run(self) -> dict[str, Any]:
        self.find_resume_point()
        self.claim_folder()
        self.build_objective()
        self.build_loaders()
        self.build_optimization()
        self.resume()
        self.start_logging()
        started = time.perf_counter()
        self.train_steps()
        return self.finish(time.perf_counter() - started)

    # -- before the first step ---------------------------------------------------------------------
    def find_resume_point(self) -> None:
        """The checkpoint to resume (``train.resume_from``), checked against this recipe, and the trainer state
        it holds; a fresh state when starting."""
        cfg = self.cfg
        signature = {key: self.recipe_dict.get(key) for key in ckpt.RESUME_KEYS}
        if cfg.overwrite and cfg.resume_from == "latest":
            raise RecipeError("train.overwrite=true deletes the run that train.resume_from=latest would continue; "
                              "drop one of the two")
        self.resume_dir = resume_dir = ckpt.resolve_resume(cfg.resume_from, self.output_dir)
        self.state = ckpt.TrainerState(signature=signature)
        if resume_dir is not None:
            self.state = ckpt.read_state(resume_dir)
            ckpt.check_signature(self.state.signature, signature, resume_dir)
            ckpt.check_files(resume_dir, self.state)
            ckpt.check_random_states(resume_dir)
            self.state.unsafe = None
        self.resumed_step = self.state.step if resume_dir is not None else -1

    def claim_folder(self) -> None:
        """Check the output folder is this run's to write, then (main process) claim it and write recipe.yaml."""
        recipe, output_dir, accelerator, resume_dir = self.recipe, self.output_dir, self.accelerator, self.resume_dir
        claim, self.manifest = claim_output_dir(recipe, resume_dir)
        if resume_dir is not None and claim is not Claim.RESUME:
            check_not_input(output_dir, "output_dir", {"train.resume_from": str(resume_dir)})
        accelerator.wait_for_everyone()  # every process has checked the folder before the main one writes to it
        if self.main:
            self.manifest = open_manifest(recipe, claim, self.manifest)
            ckpt.remove_stale_temporaries(output_dir)
            if claim is Claim.RESUME:  # later checkpoints of this run belong to the continuation being replaced
                ckpt.remove_after(output_dir, self.state.step)
            save_recipe(recipe, output_dir / "recipe.yaml")
        accelerator.wait_for_everyone()

    def build_objective(self) -> None:
        accelerator = self.accelerator
        context = SetupContext(world_size=self.world_size, rank=accelerator.process_index, device=accelerator.device,
                               resume_dir=self.resume_dir)
        self.objective = build_objective(self.recipe, context)
        with accelerator.main_process_first():
            self.objective.setup()
        if self.objective.has_unused_parameters():  # read by accelerate when it wraps the module in DDP (prepare)
            accelerator.ddp_handler.find_unused_parameters = True

    def build_loaders(self) -> None:
        """The training loader: a stream read in loader workers, the objective's own batch order, or a permutation
        of `train_dataset` per epoch; and the eval loader."""
        cfg, objective, world_size = self.cfg, self.objective, self.world_size
        self.dataset, self.stream = objective.train_dataset, objective.train_stream
        self.sampler = None
        self.workers = cfg.num_workers if cfg.num_workers is not None else 0
        if self.stream is not None:  # read shard by shard in loader workers; the loader's state is the stream's position
            stream = self.stream
            self.workers = cfg.num_workers if cfg.num_workers is not None else default_workers(cfg.on_cuda)
            stream.place(self.accelerator.process_index, world_size)
            batched = getattr(stream, "batched", False)  # a stream of whole steps (a combined recipe's)
            self.train_loader = make_loader(stream, None if batched else cfg.batch_size,
                                            _whole if batched else objective.collate, self.workers,
                                            pin_memory=self.accelerator.device.type == "cuda")
        elif (batch_sampler := objective.batch_sampler(cfg.batch_size, world_size)) is not None:
            # the objective's own order (several data streams): one list per process and step
            self.sampler = batch_sampler
            self.train_loader = DataLoader(self.dataset, batch_sampler=batch_sampler, collate_fn=objective.collate,
                                           num_workers=self.workers)
        else:
            self.sampler = EpochShuffleSampler(len(self.dataset), self.recipe.seed)
            self.train_loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                                           collate_fn=objective.collate, num_workers=self.workers,
                                           drop_last=len(self.dataset) >= cfg.batch_size * world_size)
        self.eval_loader = None
        if objective.eval_dataset is not None:
            self.eval_loader = DataLoader(objective.eval_dataset, batch_size=cfg.batch_size, collate_fn=objective.collate)

    def build_optimization(self) -> None:
        """Optimiser and schedule over the run's steps; the module and loaders prepared by Accelerate."""
        cfg, objective, accelerator = self.cfg, self.objective, self.accelerator
        module = objective.module
        optimizer = build_optimizer(module, objective.param_groups(module), cfg)
        self.recipe_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        if self.stream is not None:  # accelerate's loader wrapper would make every process read every sample
            self.module, self.optimizer = accelerator.prepare(module, optimizer)
        else:
            self.module, self.optimizer, self.train_loader = accelerator.prepare(module, optimizer, self.train_loader)
        objective.attach_optimizer(self.optimizer)
        if self.eval_loader is not None:
            self.eval_loader = accelerator.prepare(self.eval_loader)
        self.batches_per_epoch = (len(self.train_loader) if self.stream is None
                                  else stream_batches_per_epoch(self.recipe, self.stream, self.world_size))
        if self.batches_per_epoch == 0:
            raise DataError(f"no training batches: {len(self.dataset)} examples for batch size {cfg.batch_size} x "
                            f"{self.world_size}")
        steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.gradient_accumulation_steps)
        self.total_steps = total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total)
        if warmup >= total:
            raise RecipeError(f"train.warmup_steps={warmup} is not below the run's {total} steps, so the learning "
                              "rate would never reach train.learning_rate; lower train.warmup_steps or "
                              "train.warmup_ratio")
        self.scheduler = get_scheduler(cfg.scheduler, self.optimizer, num_warmup_steps=warmup, num_training_steps=total)

    def resume(self) -> None:
        """Model, optimiser, schedule, random and stream states of the checkpoint being resumed, if any."""
        resume_dir = self.resume_dir
        if resume_dir is None:
            return
        try:  # accelerate reads model (safetensors), optimiser and RNG states with torch.load(weights_only=True)
            self.accelerator.load_state(str(resume_dir))
            _resume_schedule(self.optimizer, self.scheduler, self.state.scheduler, self.recipe_groups)
        except pickle.UnpicklingError as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ckpt.CheckpointError(
                f"checkpoint {str(resume_dir)!r} holds a file that is not plain tensors and numbers ({detail}); "
                "mmssl never unpickles code from a checkpoint: resume from a checkpoint this run wrote"
            ) from None
        except (RuntimeError, KeyError, ValueError, FileNotFoundError, EOFError, TypeError) as exc:
            raise ckpt.CheckpointError(
                f"checkpoint {str(resume_dir)!r} does not match this recipe's model or optimiser ({exc})"
            ) from None
        if self.stream is not None:
            self.train_loader.load_state_dict(ckpt.read_stream_state(resume_dir, self.accelerator.process_index,
                                                                     self.world_size, self.workers))

    def start_logging(self) -> None:
        recipe, accelerator = self.recipe, self.accelerator
        self.metrics_log = MetricsLog(self.output_dir / "log.jsonl", accelerator, enabled=self.main)
        if self.cfg.trackers:
            accelerator.init_trackers(recipe.name or "mmssl", config=flatten(self.recipe_dict))
        self.description = self.objective.describe()
        self.metrics_log.write(self.state.step, {"total_steps": self.total_steps, "processes": self.world_size,
                                                 **self.description}, event="start")
        if self.main:
            log.info("training %s for %d steps on %d process(es), %s", recipe.objective.name, self.total_steps,
                     self.world_size, accelerator.device)

    # -- training ----------------------------------------------------------------------------------
    def train_steps(self) -> None:
        """Micro-batches until `total_steps` optimiser steps are done, epoch after epoch (a stream: one endless pass)."""
        state, stream, accelerator, objective = self.state, self.stream, self.accelerator, self.objective
        self.progress = tqdm(total=self.total_steps, initial=state.step, disable=not (self.main and self.cfg.progress),
                             desc="train")
        self.reset_window()
        self.module.train()
        while state.step < self.total_steps:
            objective.set_epoch(state.epoch)
            if stream is not None:  # endless: one pass of this loop; the loader resumes from its own state
                loader = self.train_loader
            else:
                self.sampler.set_epoch(state.epoch)
                self.train_loader.set_epoch(state.epoch)
                loader = (accelerator.skip_first_batches(self.train_loader, state.batch_in_epoch)
                          if state.batch_in_epoch else self.train_loader)
            for batch in loader:
                if stream is not None:
                    batch = send_to_device(batch, accelerator.device, non_blocking=True)
                if self.micro_batch(batch):
                    self.optimizer_step()
                    if state.step >= self.total_steps:
                        break
            if stream is not None and state.step < self.total_steps:
                skipped, examples = stream_skips(self.train_loader, accelerator)
                raise DataError(f"the training stream ran out of usable samples at step {state.step} of "
                                f"{self.total_steps} (skipped: {skipped or 'none'}"
                                f"{'; e.g. ' + '; '.join(examples) if examples else ''}); "
                                "check data.path and data.columns")
        self.progress.close()

    def micro_batch(self, batch: Any) -> bool:
        """Forward and backward of one micro-batch; whether it completes an accumulation window (then step)."""
        state, objective, ga = self.state, self.objective, self.cfg.gradient_accumulation_steps
        micro = state.batch_in_epoch
        window_start = micro - micro % ga
        self.window_size = min(ga, self.batches_per_epoch - window_start)
        sync = micro + 1 == window_start + self.window_size
        torch.manual_seed(step_seed(self.recipe.seed, state.epoch, micro, self.accelerator.process_index))
        batch = objective.prepare_batch(batch)
        examples, tokens = objective.batch_size_of(batch)
        with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.module):
            logged = objective.training_step(self.module, batch, self.backward)
        for key, value in logged.items():  # a scalar is averaged over the micro-batches that logged it
            self.sums[key] = self.sums.get(key, 0.0) + value.double()
            self.counts[key] = self.counts.get(key, 0) + 1
        self.counted += torch.tensor([examples, tokens], dtype=torch.float64)
        state.examples += examples
        state.tokens += tokens
        state.batch_in_epoch += 1
        if micro + 1 == self.batches_per_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
            if self.stream is not None:
                objective.set_epoch(state.epoch)
        return sync

    def backward(self, loss: torch.Tensor) -> None:
        """Check the loss is finite on every process, then backpropagate it scaled for accumulation."""
        finite = torch.isfinite(loss.detach())
        if self.world_size > 1:
            finite = self.accelerator.reduce(finite.float(), reduction="sum") == self.world_size
        if not bool(finite):
            # the weights of a checkpoint saved at this very step gave this loss: resuming there diverges again
            # (not the one this run resumed from: it gave finite losses before, so the new settings are to blame)
            step, output_dir = self.state.step, self.output_dir
            current = ckpt.final_dir(output_dir, step)
            unsafe = ""
            if self.main and current.is_dir() and step != self.resumed_step:
                ckpt.mark_unsafe(current, f"the loss became {loss.item()} on these weights at step {step + 1}")
                unsafe = f" ({current.name} gave this loss and is marked unsafe)"
            safe = ckpt.last_safe(output_dir) if self.main else None
            where = (f"the last safe checkpoint is {str(safe)!r}{unsafe}; resume from it with "
                     "train.resume_from=latest" if safe else f"no safe checkpoint was saved{unsafe}")
            raise self.diverged(f"the loss became {loss.item()} at step {step + 1}; {where}. Lower "
                                "train.learning_rate, add warmup (train.warmup_steps) or keep train.max_grad_norm set")
        self.accelerator.backward(loss / self.window_size)

    def optimizer_step(self) -> None:
        """Clip, step, schedule; the objective's after-step hook; then log, evaluate and save as the recipe says."""
        cfg, state = self.cfg, self.state
        if cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.objective.after_optimizer_step(self.module, state.step + 1, self.total_steps)
        state.step += 1
        self.progress.update(1)
        if state.step % cfg.log_every == 0 or state.step == self.total_steps:
            self.log_window()
        if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < self.total_steps:
            self.last_eval = self.evaluate()
        if cfg.save_every and state.step % cfg.save_every == 0:
            self.save_checkpoint()

    def reset_window(self) -> None:
        """Start a logging window: scalars summed since the last log and how often, examples and tokens seen."""
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.counted = torch.zeros(2, dtype=torch.float64)  # examples, tokens (this process)
        self.window_started = time.perf_counter()

    def log_window(self) -> None:
        """Log the window's mean scalars (over micro-batches and processes), learning rate, epoch and throughput."""
        accelerator, state = self.accelerator, self.state
        keys = sorted(self.sums)
        means = accelerator.reduce(torch.stack([self.sums[k] / self.counts[k] for k in keys]).to(accelerator.device),
                                   reduction="mean").tolist()
        scalars = dict(zip(keys, means))
        totals = accelerator.reduce(self.counted.to(accelerator.device), reduction="sum").tolist()
        elapsed = time.perf_counter() - self.window_started
        values = {
            **scalars,
            "lr": self.scheduler.get_last_lr()[0],
            "epoch": state.epoch + state.batch_in_epoch / self.batches_per_epoch,
            "examples_per_s": totals[0] / elapsed,
            "tokens_per_s": totals[1] / elapsed,
        }
        if self.stream is not None:
            values["skipped"] = sum(stream_skips(self.train_loader, accelerator)[0].values())
        self.metrics_log.write(state.step, values)
        unit = "tokens_per_s" if self.objective.throughput_unit == "tokens" else "examples_per_s"
        self.progress.set_postfix(loss=f"{scalars['loss']:.4f}", **{unit.split("_")[0] + "/s": f"{values[unit]:.0f}"})
        self.reset_window()

    def evaluate(self) -> dict[str, float]:
        if not self.objective.has_evaluation():
            return {}
        result = self.objective.evaluate(self.module, self.eval_loader, self.accelerator)
        self.metrics_log.write(self.state.step, result, event="eval")
        return result

    def diverged(self, message: str) -> TrainingDiverged:
        if self.main:
            self.manifest.set_status("diverged", message)
        self.accelerator.end_training()
        return TrainingDiverged(message)

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write the checkpoint of this step atomically (a temporary folder renamed when complete), prune old ones,
        and push a snapshot if the recipe asks for one at every checkpoint."""
        accelerator, state, output_dir, main = self.accelerator, self.state, self.output_dir, self.main
        if not all(bool(torch.isfinite(p).all()) for p in self.module.parameters()):
            safe = ckpt.last_safe(output_dir)
            where = f"the last safe checkpoint is {str(safe)!r}" if safe else "no safe checkpoint was saved"
            raise self.diverged(f"the weights became non-finite at step {state.step} (not saved); {where}. Lower "
                                "train.learning_rate, add warmup (train.warmup_steps) or keep train.max_grad_norm set")
        tmp = ckpt.temporary_dir(output_dir, state.step)
        state.scheduler = self.scheduler.state_dict()
        try:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(tmp))
            if self.stream is not None:
                ckpt.write_stream_state(tmp, self.train_loader.state_dict(), accelerator.process_index, self.world_size,
                                        self.workers)
            accelerator.wait_for_everyone()
            if main:
                self.objective.save_artifacts(tmp)
                ckpt.write_state(tmp, state)
                ckpt.commit(tmp, ckpt.final_dir(output_dir, state.step))
                ckpt.prune(output_dir, self.cfg.keep_checkpoints)
        except Exception as exc:
            reason = _partial_write_failed(exc, tmp, output_dir)
            safe = ckpt.last_safe(output_dir)
            kept = f"the previous checkpoint {str(safe)!r} is intact" if safe else "no earlier checkpoint exists"
            fix = "free some space" if is_disk_full(reason) else "check the folder's permissions"
            raise MmsslError(f"writing the checkpoint of step {state.step} in {str(output_dir)!r} failed ({reason}); "
                             f"the partial checkpoint was removed and {kept}. {fix.capitalize()}, then resume with "
                             "train.resume_from=latest") from None
        if main and self.recipe.push_to_hub and self.recipe.push_to_hub.every_checkpoint:
            self.push_snapshot()
        accelerator.wait_for_everyone()

    def push_snapshot(self) -> None:
        """Export the current model to a temporary folder and push it as the recipe's `push_to_hub` says."""
        snapshot = self.output_dir / ".tmp-push"
        shutil.rmtree(snapshot, ignore_errors=True)
        snapshot.mkdir()
        self.objective.export(self.accelerator.unwrap_model(self.module), snapshot)
        shutil.copy(self.output_dir / "recipe.yaml", snapshot / "recipe.yaml")
        (snapshot / "metrics.json").write_text(json.dumps({"steps": self.state.step, "eval": self.last_eval,
                                                           "processes": self.world_size, **self.description}))
        publish(self.recipe, snapshot, f"Checkpoint at step {self.state.step} (mmssl)")
        shutil.rmtree(snapshot, ignore_errors=True)

    # -- after the last step -----------------------------------------------------------------------
    def finish(self, train_seconds: float) -> dict[str, Any]:
        """Final evaluation and checkpoint, metrics.json and the export (main process), then the push."""
        recipe, accelerator, state, world_size, main = self.recipe, self.accelerator, self.state, self.world_size, self.main
        self.last_eval = self.evaluate()
        if self.cfg.save_every and not ckpt.final_dir(self.output_dir, state.step).exists():
            self.save_checkpoint()
        accelerator.wait_for_everyone()
        checksums = accelerator.gather(_parameter_checksum(self.module).to(accelerator.device)).view(world_size, 2).tolist()
        metrics = {
            "objective": recipe.objective.name,
            "steps": state.step,
            "processes": world_size,
            "train_seconds": round(train_seconds, 3),
            "hardware": _hardware(accelerator),
            "parameter_checksums": checksums,
            "parameters_in_sync": all(c == checksums[0] for c in checksums),
            "examples_seen_per_process": state.examples,
            "tokens_seen_per_process": state.tokens,
            "eval": self.last_eval,
            **self.description,
        }
        if self.stream is not None:
            shards = [self.stream.local_shards()]
            metrics["stream_shards_per_process"] = gather_object(shards) if world_size > 1 else shards
            metrics["skipped_samples"], metrics["skipped_examples"] = stream_skips(self.train_loader, accelerator)
            if metrics["skipped_samples"] and main:
                log.warning("the stream skipped %d record(s): %s; e.g. %s", sum(metrics["skipped_samples"].values()),
                            metrics["skipped_samples"], "; ".join(metrics["skipped_examples"][:3]))
        diagnostics = self.objective.diagnostics()
        if diagnostics:  # arrays for `mmssl report`
            metrics["diagnostics"] = diagnostics
        if main:
            export(self.objective, accelerator.unwrap_model(self.module), self.output_dir, self.manifest)
            self.manifest.add(["metrics.json"])
            _atomic_write(self.output_dir / "metrics.json", json.dumps(metrics, indent=2))
            self.manifest.set_status("finished")
        accelerator.wait_for_everyone()
        accelerator.end_training()
        if main and recipe.push_to_hub:
            publish(recipe, self.output_dir,
                    f"Upload model trained with mmssl ({recipe.objective.name}, {state.step} steps)")
        return metrics
