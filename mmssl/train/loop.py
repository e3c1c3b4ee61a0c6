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


def stream_batches_per_epoch(recipe: Recipe, stream: SampleStream | MixedStream, world: int) -> int:
    """Batches per process in one epoch of a stream: ``data.num_samples`` (or the shards' sizes.json) over the
    global batch; a stream of unknown size needs ``train.max_steps``, and its epoch is then the whole run."""
    cfg = recipe.train
    samples = recipe.data.num_samples or stream.num_samples
    if samples is None:
        if cfg.max_steps is None:
            raise RecipeError("the training data is streamed and its size is unknown: set train.max_steps (or "
                              "data.num_samples, or write the shards with `mmssl prepare`, whose sizes.json tells it)")
        return cfg.max_steps * cfg.gradient_accumulation_steps
    return max(1, samples // (cfg.batch_size * world))


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
        return _train(recipe)
    finally:
        release_run_folder(Path(recipe.output_dir))


def _train(recipe: Recipe) -> dict[str, Any]:
    cfg = recipe.train
    output_dir = Path(recipe.output_dir)
    accelerator = make_accelerator(recipe)
    main = accelerator.is_main_process
    set_seed(recipe.seed)
    recipe_dict = recipe_to_dict(recipe)
    signature = {key: recipe_dict.get(key) for key in ckpt.RESUME_KEYS}

    if cfg.overwrite and cfg.resume_from == "latest":
        raise RecipeError("train.overwrite=true deletes the run that train.resume_from=latest would continue; "
                          "drop one of the two")
    resume_dir = ckpt.resolve_resume(cfg.resume_from, output_dir)
    state = ckpt.TrainerState(signature=signature)
    if resume_dir is not None:
        state = ckpt.read_state(resume_dir)
        ckpt.check_signature(state.signature, signature, resume_dir)
        ckpt.check_files(resume_dir, state)
        ckpt.check_random_states(resume_dir)
        state.unsafe = None
    resumed_step = state.step if resume_dir is not None else -1
    claim, manifest = claim_output_dir(recipe, resume_dir)
    if resume_dir is not None and claim is not Claim.RESUME:
        check_not_input(output_dir, "output_dir", {"train.resume_from": str(resume_dir)})
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one writes to it
    if main:
        manifest = open_manifest(recipe, claim, manifest)
        ckpt.remove_stale_temporaries(output_dir)
        if claim is Claim.RESUME:  # later checkpoints of this run belong to the continuation being replaced
            ckpt.remove_after(output_dir, state.step)
        save_recipe(recipe, output_dir / "recipe.yaml")
    accelerator.wait_for_everyone()

    context = SetupContext(world_size=accelerator.num_processes, rank=accelerator.process_index,
                           device=accelerator.device, resume_dir=resume_dir)
    objective = build_objective(recipe, context)
    with accelerator.main_process_first():
        objective.setup()
    module = objective.module
    if objective.has_unused_parameters():  # read by accelerate when it wraps the module in DDP (prepare)
        accelerator.ddp_handler.find_unused_parameters = True

    dataset = objective.train_dataset
    world = accelerator.num_processes
    stream = objective.train_stream
    workers = cfg.num_workers if cfg.num_workers is not None else 0
    if stream is not None:  # read shard by shard in loader workers; the loader's state is the stream's position
        workers = cfg.num_workers if cfg.num_workers is not None else default_workers(cfg.on_cuda)
        stream.place(accelerator.process_index, world)
        sampler = None
        batched = getattr(stream, "batched", False)  # a stream of whole steps (a combined recipe's)
        train_loader = make_loader(stream, None if batched else cfg.batch_size, _whole if batched else objective.collate,
                                   workers, pin_memory=accelerator.device.type == "cuda")
    elif (batch_sampler := objective.batch_sampler(cfg.batch_size, world)) is not None:
        # the objective's own order (several data streams): one list per process and step
        sampler = batch_sampler
        train_loader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=objective.collate,
                                  num_workers=workers)
    else:
        sampler = EpochShuffleSampler(len(dataset), recipe.seed)
        drop_last = len(dataset) >= cfg.batch_size * world
        train_loader = DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=objective.collate,
            num_workers=workers, drop_last=drop_last,
        )
    eval_loader = None
    if objective.eval_dataset is not None:
        eval_loader = DataLoader(objective.eval_dataset, batch_size=cfg.batch_size, collate_fn=objective.collate)

    optimizer = build_optimizer(module, objective.param_groups(module), cfg)
    recipe_groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    if stream is not None:  # accelerate's loader wrapper would make every process read every sample
        module, optimizer = accelerator.prepare(module, optimizer)
    else:
        module, optimizer, train_loader = accelerator.prepare(module, optimizer, train_loader)
    objective.attach_optimizer(optimizer)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    batches_per_epoch = len(train_loader) if stream is None else stream_batches_per_epoch(recipe, stream, world)
    if batches_per_epoch == 0:
        raise DataError(f"no training batches: {len(dataset)} examples for batch size {cfg.batch_size} x {world}")
    ga = cfg.gradient_accumulation_steps
    steps_per_epoch = math.ceil(batches_per_epoch / ga)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    if warmup >= total_steps:
        raise RecipeError(f"train.warmup_steps={warmup} is not below the run's {total_steps} steps, so the learning "
                          "rate would never reach train.learning_rate; lower train.warmup_steps or train.warmup_ratio")
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    if resume_dir is not None:
        try:  # accelerate reads model (safetensors), optimiser and RNG states with torch.load(weights_only=True)
            accelerator.load_state(str(resume_dir))
            _resume_schedule(optimizer, scheduler, state.scheduler, recipe_groups)
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
        if stream is not None:
            train_loader.load_state_dict(ckpt.read_stream_state(resume_dir, accelerator.process_index, world, workers))

    metrics_log = MetricsLog(output_dir / "log.jsonl", accelerator, enabled=main)
    if cfg.trackers:
        accelerator.init_trackers(recipe.name or "mmssl", config=flatten(recipe_dict))
    description = objective.describe()
    metrics_log.write(state.step, {"total_steps": total_steps, "processes": world, **description}, event="start")
    if main:
        log.info("training %s for %d steps on %d process(es), %s", recipe.objective.name, total_steps, world,
                 accelerator.device)

    def diverged(message: str) -> TrainingDiverged:
        if main:
            manifest.set_status("diverged", message)
        accelerator.end_training()
        return TrainingDiverged(message)

    def save_checkpoint() -> None:
        if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
            safe = ckpt.last_safe(output_dir)
            where = f"the last safe checkpoint is {str(safe)!r}" if safe else "no safe checkpoint was saved"
            raise diverged(f"the weights became non-finite at step {state.step} (not saved); {where}. Lower "
                           "train.learning_rate, add warmup (train.warmup_steps) or keep train.max_grad_norm set")
        tmp = ckpt.temporary_dir(output_dir, state.step)
        state.scheduler = scheduler.state_dict()
        try:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(tmp))
            if stream is not None:
                ckpt.write_stream_state(tmp, train_loader.state_dict(), accelerator.process_index, world, workers)
            accelerator.wait_for_everyone()
            if main:
                objective.save_artifacts(tmp)
                ckpt.write_state(tmp, state)
                ckpt.commit(tmp, ckpt.final_dir(output_dir, state.step))
                ckpt.prune(output_dir, cfg.keep_checkpoints)
        except Exception as exc:
            reason = _partial_write_failed(exc, tmp, output_dir)
            safe = ckpt.last_safe(output_dir)
            kept = f"the previous checkpoint {str(safe)!r} is intact" if safe else "no earlier checkpoint exists"
            fix = "free some space" if is_disk_full(reason) else "check the folder's permissions"
            raise MmsslError(f"writing the checkpoint of step {state.step} in {str(output_dir)!r} failed ({reason}); "
                             f"the partial checkpoint was removed and {kept}. {fix.capitalize()}, then resume with "
                             "train.resume_from=latest") from None
        if main:
            if recipe.push_to_hub and recipe.push_to_hub.every_checkpoint:
                snapshot = output_dir / ".tmp-push"
                shutil.rmtree(snapshot, ignore_errors=True)
                snapshot.mkdir()
                objective.export(accelerator.unwrap_model(module), snapshot)
                shutil.copy(output_dir / "recipe.yaml", snapshot / "recipe.yaml")
                (snapshot / "metrics.json").write_text(json.dumps({"steps": state.step, "eval": last_eval,
                                                                   "processes": world, **description}))
                publish(recipe, snapshot, f"Checkpoint at step {state.step} (mmssl)")
                shutil.rmtree(snapshot, ignore_errors=True)
        accelerator.wait_for_everyone()

    def run_eval() -> dict[str, float]:
        if not objective.has_evaluation():
            return {}
        result = objective.evaluate(module, eval_loader, accelerator)
        metrics_log.write(state.step, result, event="eval")
        return result

    progress = tqdm(total=total_steps, initial=state.step, disable=not (main and cfg.progress), desc="train")
    window: dict[str, Any] = {"sums": {}, "counts": {}}  # logged scalars summed since the last log, and how often
    counted = torch.zeros(2, dtype=torch.float64)  # examples, tokens since last log (this process)
    last_log_time = time.perf_counter()
    started = time.perf_counter()
    last_eval: dict[str, float] = {}
    window_size = 1  # micro-batches in the current accumulation window

    def backward(loss: torch.Tensor) -> None:
        """Check the loss is finite on every process, then backpropagate it scaled for accumulation."""
        finite = torch.isfinite(loss.detach())
        if world > 1:
            finite = accelerator.reduce(finite.float(), reduction="sum") == world
        if not bool(finite):
            # the weights of a checkpoint saved at this very step gave this loss: resuming there diverges again
            # (not the one this run resumed from: it gave finite losses before, so the new settings are to blame)
            current = ckpt.final_dir(output_dir, state.step)
            unsafe = ""
            if main and current.is_dir() and state.step != resumed_step:
                ckpt.mark_unsafe(current, f"the loss became {loss.item()} on these weights at step {state.step + 1}")
                unsafe = f" ({current.name} gave this loss and is marked unsafe)"
            safe = ckpt.last_safe(output_dir) if main else None
            where = (f"the last safe checkpoint is {str(safe)!r}{unsafe}; resume from it with "
                     "train.resume_from=latest" if safe else f"no safe checkpoint was saved{unsafe}")
            raise diverged(f"the loss became {loss.item()} at step {state.step + 1}; {where}. "
                           "Lower train.learning_rate, add warmup (train.warmup_steps) or keep train.max_grad_norm set")
        accelerator.backward(loss / window_size)

    module.train()
    while state.step < total_steps:
        objective.set_epoch(state.epoch)
        if stream is not None:  # endless: one pass of this loop; the loader resumes from its own state
            loader = train_loader
        else:
            sampler.set_epoch(state.epoch)
            train_loader.set_epoch(state.epoch)
            loader = accelerator.skip_first_batches(train_loader, state.batch_in_epoch) if state.batch_in_epoch else train_loader
        for batch in loader:
            if stream is not None:
                batch = send_to_device(batch, accelerator.device, non_blocking=True)
            micro = state.batch_in_epoch
            window_start = micro - micro % ga
            window_size = min(ga, batches_per_epoch - window_start)
            sync = micro + 1 == window_start + window_size
            torch.manual_seed(step_seed(recipe.seed, state.epoch, micro, accelerator.process_index))
            batch = objective.prepare_batch(batch)
            examples, tokens = objective.batch_size_of(batch)
            with contextlib.nullcontext() if sync else accelerator.no_sync(module):
                logged = objective.training_step(module, batch, backward)
            for key, value in logged.items():  # a scalar is averaged over the micro-batches that logged it
                window["sums"][key] = window["sums"].get(key, 0.0) + value.double()
                window["counts"][key] = window["counts"].get(key, 0) + 1
            counted += torch.tensor([examples, tokens], dtype=torch.float64)
            state.examples += examples
            state.tokens += tokens
            state.batch_in_epoch += 1
            if micro + 1 == batches_per_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
                if stream is not None:
                    objective.set_epoch(state.epoch)
            if not sync:
                continue
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            objective.after_optimizer_step(module, state.step + 1, total_steps)
            state.step += 1
            progress.update(1)
            if state.step % cfg.log_every == 0 or state.step == total_steps:
                keys = sorted(window["sums"])
                means = accelerator.reduce(
                    torch.stack([window["sums"][k] / window["counts"][k] for k in keys]).to(accelerator.device),
                    reduction="mean",
                ).tolist()
                scalars = dict(zip(keys, means))
                mean_loss = scalars["loss"]
                totals = accelerator.reduce(counted.to(accelerator.device), reduction="sum").tolist()
                elapsed = time.perf_counter() - last_log_time
                values = {
                    **scalars,
                    "lr": scheduler.get_last_lr()[0],
                    "epoch": state.epoch + state.batch_in_epoch / batches_per_epoch,
                    "examples_per_s": totals[0] / elapsed,
                    "tokens_per_s": totals[1] / elapsed,
                }
                if stream is not None:
                    values["skipped"] = sum(stream_skips(train_loader, accelerator)[0].values())
                metrics_log.write(state.step, values)
                unit = "tokens_per_s" if objective.throughput_unit == "tokens" else "examples_per_s"
                progress.set_postfix(loss=f"{mean_loss:.4f}", **{unit.split("_")[0] + "/s": f"{values[unit]:.0f}"})
                window = {"sums": {}, "counts": {}}
                counted.zero_()
                last_log_time = time.perf_counter()
            if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < total_steps:
                last_eval = run_eval()
            if cfg.save_every and state.step % cfg.save_every == 0:
                save_checkpoint()
            if state.step >= total_steps:
                break
        if stream is not None and state.step < total_steps:
            skipped, examples = stream_skips(train_loader, accelerator)
            raise DataError(f"the training stream ran out of usable samples at step {state.step} of {total_steps} "
                            f"(skipped: {skipped or 'none'}{'; e.g. ' + '; '.join(examples) if examples else ''}); "
                            "check data.path and data.columns")
    progress.close()
    train_seconds = time.perf_counter() - started
    last_eval = run_eval()
    if cfg.save_every and not ckpt.final_dir(output_dir, state.step).exists():
        save_checkpoint()
    accelerator.wait_for_everyone()
    checksums = accelerator.gather(_parameter_checksum(module).to(accelerator.device)).view(world, 2).tolist()
    metrics = {
        "objective": recipe.objective.name,
        "steps": state.step,
        "processes": world,
        "train_seconds": round(train_seconds, 3),
        "hardware": _hardware(accelerator),
        "parameter_checksums": checksums,
        "parameters_in_sync": all(c == checksums[0] for c in checksums),
        "examples_seen_per_process": state.examples,
        "tokens_seen_per_process": state.tokens,
        "eval": last_eval,
        **description,
    }
    if stream is not None:
        metrics["stream_shards_per_process"] = gather_object([stream.local_shards()]) if world > 1 else [stream.local_shards()]
        metrics["skipped_samples"], metrics["skipped_examples"] = stream_skips(train_loader, accelerator)
        if metrics["skipped_samples"] and main:
            log.warning("the stream skipped %d record(s): %s; e.g. %s", sum(metrics["skipped_samples"].values()),
                        metrics["skipped_samples"], "; ".join(metrics["skipped_examples"][:3]))
    diagnostics = objective.diagnostics()
    if diagnostics:  # arrays for `mmssl report`
        metrics["diagnostics"] = diagnostics
    if main:
        export(objective, accelerator.unwrap_model(module), output_dir, manifest)
        manifest.add(["metrics.json"])
        _atomic_write(output_dir / "metrics.json", json.dumps(metrics, indent=2))
        manifest.set_status("finished")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if main and recipe.push_to_hub:
        publish(recipe, output_dir, f"Upload model trained with mmssl ({recipe.objective.name}, {state.step} steps)")
    return metrics
