"""The method contract every objective relies on (`mmssl.objectives.base`): `core` finds the module a method built
inside whatever the trainer wrapped it in, the setup context replaces environment variables, and declared
momentum pairs move by the base class's EMA after each optimiser step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mmssl.config import ObjectiveParams, Recipe
from mmssl.objectives.base import Objective, SetupContext


def recipe() -> Recipe:
    return Recipe(output_dir="unused", objective=ObjectiveParams(name="with-target"))


class Wrapper(nn.Module):
    """What DDP, FSDP (1) and Accelerate's wrappers look like from outside: the wrapped module as ``.module``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


class WithTarget(Objective):
    name = "with-target"

    def setup(self) -> None:
        self.module = nn.ModuleDict({"online": nn.Linear(2, 2), "target": nn.Linear(2, 2)})

    def momentum_pairs(self, core):
        return [(core["online"], core["target"])]

    def momentum_rate(self, step: int, total_steps: int) -> float:
        return 0.75


def test_core_sees_through_every_wrapper_and_compile():
    objective = WithTarget(recipe())
    objective.setup()
    built = objective.module
    assert objective.core(built) is built
    assert objective.core(Wrapper(Wrapper(built))) is built
    assert objective.core(torch.compile(Wrapper(built))) is built  # compiles lazily: nothing is compiled here
    other = nn.Linear(1, 1)
    assert objective.core(Wrapper(other)) is other  # not this objective's module: the innermost one


def test_momentum_pairs_move_by_the_base_class_ema():
    objective = WithTarget(recipe())
    objective.setup()
    online, target = objective.module["online"], objective.module["target"]
    before = target.weight.detach().clone()
    objective.after_optimizer_step(Wrapper(objective.module), 1, 10)
    assert objective.tau == 0.75
    assert torch.allclose(target.weight, 0.75 * before + 0.25 * online.weight)


def test_the_setup_context_defaults_to_one_process_and_names_subfolders():
    assert WithTarget(recipe()).context == SetupContext(world_size=1, rank=0, device=torch.device("cpu"))
    context = SetupContext(world_size=4, rank=2, resume_dir=Path("ckpt"))
    assert WithTarget(recipe(), context).context.world_size == 4
    assert context.under("mlm").resume_dir == Path("ckpt/mlm") and context.under("mlm").rank == 2
    assert SetupContext().under("mlm").resume_dir is None
    with pytest.raises(AttributeError):
        context.world_size = 1  # frozen: an objective cannot change what the trainer told it
