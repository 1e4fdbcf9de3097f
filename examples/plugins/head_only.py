"""Example adversary: fine-tune only the output head, every other weight frozen."""

from pydantic import Field

from nftbench import (
    Adversary,
    AttackContext,
    OptimConfig,
    PluginConfig,
    Release,
    TrainResult,
    register_adversary,
)


class HeadOnlyConfig(PluginConfig):
    steps: int = Field(100, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=1, description="examples per step")
    lr: float = Field(1e-3, gt=0, description="learning rate")


@register_adversary("head_only", version="1")
class HeadOnly(Adversary[HeadOnlyConfig]):
    """Fine-tune the output head (lm_head) alone with AdamW."""

    def attack(self, release: Release, examples: list, ctx: AttackContext) -> TrainResult:
        model, tokenizer = release.load()
        model.requires_grad_(False)
        model.get_output_embeddings().requires_grad_(True)
        return ctx.finetune(model, tokenizer, examples, steps=self.config.steps,
                            batch_size=self.config.batch_size, optim=OptimConfig(lr=self.config.lr))
