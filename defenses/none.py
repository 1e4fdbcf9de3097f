"""The undefended reference: the dense base model, pre-trained with the shared budget."""

from __future__ import annotations

from nftbench.api import Defense, DefenseContext
from nftbench.registry import PluginConfig, register_defense


@register_defense("none", version="1")
class NoDefense(Defense[PluginConfig]):
    """Release the dense pre-trained base as is (the reference every defense is compared with)."""

    def defend(self, ctx: DefenseContext) -> None:
        if ctx.base is None:
            raise ValueError("defense 'none' needs the pre-trained base")
        model, _ = ctx.base.load()
        ctx.save_release(model)
