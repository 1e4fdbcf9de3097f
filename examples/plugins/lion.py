"""Example optimizer: Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

Registered, it is one more value of `optimizer` in every config: `full_ft`, `lora`, a `sweep`
grid, pre-training. Its own options go under `options`, e.g. `options: {beta2: 0.98}`.
"""

import torch

from nftbench import OptimConfig, PluginConfig, register_optimizer


class LionOptions(PluginConfig):
    beta2: float = 0.99  # decay of the momentum that is kept (beta1 is OptimConfig's betas[0])


class Lion(torch.optim.Optimizer):
    """The sign of an interpolated momentum, with decoupled weight decay."""

    def __init__(self, params, lr: float, betas: tuple[float, float], weight_decay: float):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * beta1 + p.grad * (1 - beta1)), alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


@register_optimizer("lion", options=LionOptions)
def lion(params, cfg: OptimConfig, options: LionOptions) -> torch.optim.Optimizer:
    return Lion(params, lr=cfg.lr, betas=(cfg.betas[0], options.beta2),
                weight_decay=cfg.weight_decay)
