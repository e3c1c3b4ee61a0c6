"""The typed schema of a recipe: what a training run is made of (data, tokenizer, model, objective, training,
publishing). Plain dataclasses validated by `mmssl.schema`; reading YAML and resolving the objective's own
parameters is `mmssl.recipes`' job, so this module depends on nothing else in mmssl but the schema and the
stream filters' settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from mmssl.curate.filter_config import StreamFilters
from mmssl.schema import (NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Range,
                          Seed)


@dataclass
class WorldConfig:
    """The built-in procedural world of coloured shapes (see `mmssl.data.world`)."""

    num_scenes: PositiveInt = 2000
    image_size: Annotated[int, Range(16, 1024)] = 32
    num_colours: Annotated[int, Range(2, 10)] = 6
    num_shapes: Annotated[int, Range(2, 6)] = 4
    pair_fraction: Probability = 0.5
    seed: Seed = 0


@dataclass
class DataConfig:
    """Where examples come from and how their columns map to the roles an objective needs."""

    source: Literal["world", "files", "hub"] = "world"
    path: str | None = None
    format: Literal["auto", "txt", "jsonl", "csv", "parquet", "imagefolder", "webdataset"] = "auto"
    split: str = "train"
    columns: dict[str, str] = field(default_factory=dict)
    eval_path: str | None = None
    # held out (seeded) when there is no eval_path, from 20 rows up; image-only data without class labels holds
    # nothing out (it could not be evaluated): every image trains
    eval_fraction: Annotated[float, Range(0, 1, open_high=True)] = 0.05
    max_examples: PositiveInt | None = None
    world: WorldConfig = field(default_factory=WorldConfig)
    # streaming (`mmssl.data.streaming`): read shards in loader workers as training goes, instead of reading
    # and decoding everything first; "auto" streams local data larger than 128 MiB
    streaming: bool | Literal["auto"] = "auto"
    shuffle_buffer: NonNegativeInt = 1000  # records per loader worker; 0: shard order only, exact resume
    num_samples: PositiveInt | None = None  # samples in one epoch of a stream (default: from sizes.json)
    weights: list[PositiveFloat] | None = None  # one per source of a `::`-joined data.path
    resampled: bool = False  # each pass draws its shards with replacement (open_clip's --dataset-resampled)
    # per-sample filters (caption, image, text, language) run on the stream as it is read: see
    # `mmssl.curate.filter_config.StreamFilters`; a recipe with them streams its data
    curate: StreamFilters | None = None

    def __post_init__(self) -> None:
        if self.source in ("files", "hub") and not self.path:
            raise ValueError(f"path is required when source is {self.source!r} (a file, folder or glob)")
        if self.weights is not None and len(self.weights) != len((self.path or "").split("::")):
            raise ValueError(f"weights has {len(self.weights)} entries but path names "
                             f"{len((self.path or '').split('::'))} source(s) (joined with '::'); give one per source")


@dataclass
class TokenizerConfig:
    """A pretrained tokenizer (`path`: local folder or Hub id) or one trained on the recipe's corpus."""

    path: str | None = None
    vocab_size: Annotated[int, Range(100)] = 4096  # the trained tokenizer's size, special tokens included
    min_frequency: PositiveInt = 2
    lowercase: bool = True
    train_samples: PositiveInt = 200_000  # texts a tokenizer is trained on when the corpus is streamed
    trust_remote_code: bool = False  # run custom code that comes with tokenizer.path (named in the model card)


@dataclass
class ModelConfig:
    """Pretrained weights (`pretrained`: local folder or Hub id) or a fresh model (`arch` + `config`)."""

    pretrained: str | None = None
    arch: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False  # run custom code that comes with model.pretrained (named in the model card)


@dataclass
class TrainConfig:
    """Optimisation, schedule, evaluation, checkpointing and logging: shared by every objective."""

    batch_size: PositiveInt = 32
    gradient_accumulation_steps: PositiveInt = 1
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    learning_rate: PositiveFloat = 5e-4
    weight_decay: NonNegativeFloat = 0.01
    momentum: Annotated[float, Range(0, 1, open_high=True)] = 0.9  # sgd and lars
    nesterov: bool = False  # sgd and lars
    lars_trust_coefficient: PositiveFloat = 0.001
    adam_betas: list[Annotated[float, Range(0, 1, open_high=True)]] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: PositiveFloat = 1e-8
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: NonNegativeInt = 0
    warmup_ratio: Annotated[float, Range(0, 1, open_high=True)] = 0.0
    max_steps: PositiveInt | None = None
    epochs: PositiveFloat = 1.0
    max_grad_norm: PositiveFloat | None = 1.0
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    eval_every: NonNegativeInt = 0  # 0: evaluate at the end only
    eval_batches: PositiveInt | None = None
    save_every: NonNegativeInt = 0  # 0: no checkpoints
    keep_checkpoints: PositiveInt = 2
    log_every: PositiveInt = 10
    resume_from: str | None = None
    overwrite: bool = False
    trackers: list[str] = field(default_factory=list)
    cpu: bool = False
    num_workers: NonNegativeInt | None = None  # loader worker processes; default 0, or 1 (CPU) / up to 8 (GPU) when streaming
    progress: bool = True

    def __post_init__(self) -> None:
        if self.resume_from and self.resume_from != "latest":
            self.resume_from = os.path.expanduser(self.resume_from)
        if len(self.adam_betas) != 2:
            raise ValueError("train.adam_betas must be a list of two numbers, e.g. [0.9, 0.999]")

    @property
    def on_cuda(self) -> bool:
        """Whether the run trains on a CUDA device (one is visible and ``cpu`` is off): device-aware defaults."""
        import torch

        return not self.cpu and torch.cuda.is_available()


@dataclass
class PushConfig:
    """Publish the run to the Hugging Face Hub when training ends (and optionally at each checkpoint)."""

    repo_id: str
    private: bool = False
    revision: str | None = None
    license: str | None = None
    endpoint: str | None = None  # default: HF_ENDPOINT or huggingface.co
    every_checkpoint: bool = False


@dataclass
class ObjectiveParams:
    """Base of every objective's parameters; `name` selects the objective from the registry."""

    name: str = ""


@dataclass
class MixingConfig:
    """How a recipe with several objectives (`Recipe.objectives`) combines them each step.

    * ``sum``: every step runs every objective on its own next batch and minimises the weighted sum of losses;
      objectives that read the same data into the same rows (e.g. SimCLR + RotNet) get the same examples.
    * ``alternate``: every step runs one objective, in a fixed interleaving that visits each in proportion to
      its share.
    * ``sample``: every step runs one objective drawn at random (seeded) with probability proportional to its share.

    An objective's share is its ``share`` key, or the number of its training rows; shares are raised to
    ``1/temperature`` (1: proportional to size; larger: closer to uniform, as in multilingual sampling).
    ``balancing: uncertainty`` learns one log-variance per objective and minimises
    ``sum(exp(-s_i) * w_i * L_i + s_i)`` (Kendall et al. 2018)."""

    strategy: Literal["sum", "alternate", "sample"] = "sum"
    temperature: PositiveFloat = 1.0
    balancing: Literal["none", "uncertainty"] = "none"


@dataclass
class ObjectiveEntry:
    """One objective of a combined recipe: its parameters, a distinct label, its loss weight, its share of the
    steps (``alternate``/``sample``) and optionally its own data (default: the recipe's ``data``)."""

    params: ObjectiveParams
    label: str
    weight: PositiveFloat = 1.0
    share: PositiveFloat | None = None
    data: DataConfig | None = None


@dataclass
class Recipe:
    """A whole training run: data, tokenizer, model, objective and training settings."""

    output_dir: str
    objective: ObjectiveParams
    name: str = ""
    seed: Seed = 0
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    push_to_hub: PushConfig | None = None
    # several objectives over one shared encoder (`mmssl.objectives.combined`); `objective` is then their summary
    objectives: list[ObjectiveEntry] | None = None
    mixing: MixingConfig = field(default_factory=MixingConfig)

    def __post_init__(self) -> None:
        self.output_dir = os.path.expanduser(self.output_dir)  # every check and write sees the same folder
