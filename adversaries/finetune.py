"""Full fine-tuning: every parameter, any optimizer and schedule of ``OptimConfig``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import Field, model_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nftbench.api import Adversary, AttackContext, Release
from nftbench.registry import PluginConfig, register_adversary
from nftbench.train import OptimConfig, TrainResult


class FullFineTuneConfig(OptimConfig, PluginConfig):
    """Budget and optimizer of a full fine-tuning attack (optimizer fields as in OptimConfig)."""

    steps: int = Field(200, ge=1, description="optimizer steps (the attack budget)")
    batch_size: int = Field(32, ge=1, description="examples per step")
    epochs: float | None = Field(
        None, gt=0, description="the budget as passes over the train split instead of steps: "
        "ceil(epochs * examples / batch_size) steps (a batch larger than the split repeats "
        "examples, so every step still sees batch_size of them)")

    @model_validator(mode="after")
    def _one_budget(self) -> FullFineTuneConfig:
        if self.epochs is not None and "steps" in self.model_fields_set:
            raise ValueError("give the budget as steps or as epochs, not both (epochs: null "
                             "budgets in steps)")
        return self

    def budget_steps(self, n_examples: int) -> int:
        """Optimizer steps of the attack on a train split of ``n_examples``."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_examples / self.batch_size))


FTConfigT = TypeVar("FTConfigT", bound=FullFineTuneConfig)


@register_adversary("full_ft", version="1")
class FullFineTune(Adversary[FTConfigT]):
    """Full fine-tuning of all weights on the task's train split."""

    owner_recipe = True  # the owner's authorized tuning uses the same recipe

    def attack(self, release: Release, examples: list[dict[str, Any]],
               ctx: AttackContext) -> TrainResult:
        model, tokenizer = release.load()
        grad_hook = self.prepare(model, tokenizer, examples, ctx)
        return ctx.finetune(model, tokenizer, examples,
                            steps=self.config.budget_steps(len(examples)),
                            batch_size=self.config.batch_size, optim=self.config.optim(),
                            grad_hook=grad_hook)

    def prepare(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                examples: list[dict[str, Any]], ctx: AttackContext) -> Callable[[], None] | None:
        """Change the loaded release before training (adaptive attacks override this); may
        return a gradient hook that runs after every backward pass."""
        return None
