"""Full fine-tuning: every parameter, any optimizer and schedule of ``OptimConfig``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nftbench.api import Adversary, AttackContext, Release
from nftbench.registry import PluginConfig, register_adversary
from nftbench.train import OptimConfig, TrainResult


class FullFineTuneConfig(OptimConfig, PluginConfig):
    """Budget and optimizer of a full fine-tuning attack (optimizer fields as in OptimConfig)."""

    steps: int = Field(200, ge=1, description="optimizer steps (the attack budget)")
    batch_size: int = Field(32, ge=1, description="examples per step")

    def optim(self) -> OptimConfig:
        return OptimConfig(**self.model_dump(include=set(OptimConfig.model_fields)))


@register_adversary("full_ft", version="1")
class FullFineTune(Adversary):
    """Full fine-tuning of all weights on the task's train split."""

    Config = FullFineTuneConfig
    config: FullFineTuneConfig
    owner_recipe = True  # the owner's authorized tuning uses the same recipe

    def attack(self, release: Release, examples: list[dict[str, Any]],
               ctx: AttackContext) -> TrainResult:
        model, tokenizer = release.load()
        grad_hook = self.prepare(model, tokenizer, examples, ctx)
        return ctx.finetune(model, tokenizer, examples, steps=self.config.steps,
                            batch_size=self.config.batch_size, optim=self.config.optim(),
                            grad_hook=grad_hook)

    def prepare(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                examples: list[dict[str, Any]], ctx: AttackContext) -> Callable[[], None] | None:
        """Change the loaded release before training (adaptive attacks override this); may
        return a gradient hook that runs after every backward pass."""
        return None
