"""The positive control: pre-training data filtering.

The base is pre-trained from scratch, with the dense base's budget, optimizer and seed, on the
corpus with every fact about the named world attributes removed (the approach of Deep
Ignorance, O'Brien et al., arXiv 2508.06601: knowledge that was never in the pre-training data
cannot be elicited by fine-tuning on a few examples). A restricted task about a filtered
attribute asks for facts of held-out entities that the release never saw, so an attacker gains
no more than from scratch: RG near 0, while tasks on other attributes keep their capability.

It is a reference, not a proposal: it shows that the benchmark can see resistance where it
exists, and calibrates its power (``benchmarks/power.py`` interpolates it with ``none``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nftbench.api import Defense, DefenseContext
from nftbench.data import corpus_batches
from nftbench.registry import PluginConfig, register_defense
from nftbench.train import train
from nftbench.world import ATTRIBUTE_VALUES


class FilteredConfig(PluginConfig):
    attributes: list[str] = Field(
        ["color"], min_length=1,
        description="world attributes whose facts are removed from the pre-training corpus "
        f"({', '.join(ATTRIBUTE_VALUES)})")


@register_defense("filtered", version="1")
class FilteredPretraining(Defense[FilteredConfig]):
    """Positive control: pre-train on the corpus with the named attributes' facts removed."""

    def check(self, matrix: Any) -> list[str]:
        unknown = [a for a in self.config.attributes if a not in ATTRIBUTE_VALUES]
        errors = [f"params.attributes names {unknown}; world attributes are "
                  f"{list(ATTRIBUTE_VALUES)}"] if unknown else []
        if not matrix.config.model.is_tiny:
            errors.append("filtering needs the embedded world's corpus (model: tiny)")
        return errors

    def defend(self, ctx: DefenseContext) -> None:
        if ctx.corpus_without is None:
            raise ValueError("filtered needs the embedded world's corpus")
        pre = ctx.pretrain  # the dense base's budget, optimizer and seed (this base's)
        corpus = ctx.corpus_without(self.config.attributes)
        model = ctx.init_model(pre.seed)
        result = train(model, corpus_batches(corpus, pre.batch_size, pre.seed),
                       pre.steps, pre.optim(), compute=ctx.compute, desc="filtered pretrain",
                       progress=ctx.progress)
        if result.diverged:
            raise FloatingPointError(f"filtered pre-training diverged at step "
                                     f"{result.diverged_at}")
        ctx.save_release(model)
