"""Example defense: release the pre-trained base with Gaussian noise added to every weight."""

import torch
from pydantic import Field

from nftbench import Defense, DefenseContext, PluginConfig, register_defense


class NoisyReleaseConfig(PluginConfig):
    sigma: float = Field(0.5, ge=0, description="noise std relative to each tensor's std")
    seed: int = Field(0, description="seed of the noise")


@register_defense("noisy_release", version="1")
class NoisyRelease(Defense[NoisyReleaseConfig]):
    """Add Gaussian noise (std = sigma x the tensor's own std) to every weight of the base."""

    def defend(self, ctx: DefenseContext) -> None:
        model, _ = ctx.base.load()
        gen = torch.Generator().manual_seed(self.config.seed)
        with torch.no_grad():
            for p in model.parameters():
                noise = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
                p.add_(noise * p.std() * self.config.sigma)
        ctx.save_release(model)
