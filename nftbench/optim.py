"""Optimizers and learning-rate schedules: two registries, and the config that picks from them.

A new optimizer is the most common new attack, so optimizers are plugins like defenses are::

    from nftbench import OptimConfig, PluginConfig, register_optimizer

    class LionOptions(PluginConfig):
        beta2: float = 0.99

    @register_optimizer("lion", options=LionOptions)
    def lion(params, cfg: OptimConfig, options: LionOptions) -> torch.optim.Optimizer:
        return Lion(params, lr=cfg.lr, betas=(cfg.betas[0], options.beta2), ...)

and every config that takes an optimizer (``full_ft``, ``lora``, a ``sweep`` grid, pre-training)
accepts ``optimizer: lion`` and ``options: {beta2: 0.98}``. A schedule is a function of the step
after warm-up: ``@register_schedule("name")`` on ``f(step, steps, cfg) -> factor of lr``.

Names and options enter stage keys as strings and values, as the built-ins always did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from nftbench.registry import PluginConfig, Table, UnknownPluginError

Params = Sequence[torch.nn.Parameter] | Sequence[dict[str, Any]]
#: fields added after stage keys were published: at their defaults they are left out of a dump
#: (and so of every key), so adding one never changes an existing key
LATER_FIELDS: dict[str, Any] = {"restart_steps": 100, "cosine_span": 1.0, "options": {}}


@dataclass(frozen=True)
class OptimizerEntry:
    """A registered optimizer: how to build it, and the class of its own options."""

    name: str
    build: Callable[..., torch.optim.Optimizer]  # (params, cfg[, options]) -> optimizer
    options: type[PluginConfig] | None = None


OPTIMIZERS: Table[OptimizerEntry] = Table("optimizer")
SCHEDULES: Table[Callable[[int, int, Any], float]] = Table("schedule")


def _origin(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def register_optimizer(name: str, *, options: type[PluginConfig] | None = None
                       ) -> Callable[[Callable[..., torch.optim.Optimizer]],
                                     Callable[..., torch.optim.Optimizer]]:
    """Register ``build(params, cfg)`` (or ``build(params, cfg, options)`` with an options
    class) as the optimizer ``name``."""
    def decorator(build: Callable[..., torch.optim.Optimizer]
                  ) -> Callable[..., torch.optim.Optimizer]:
        OPTIMIZERS.add(name, OptimizerEntry(name, build, options), _origin(build))
        return build
    return decorator


def register_schedule(name: str) -> Callable[[Callable[[int, int, Any], float]],
                                             Callable[[int, int, Any], float]]:
    """Register ``factor(step, steps, cfg)``: the multiplier of the peak rate at ``step`` of the
    ``steps`` after warm-up (0-based; warm-up itself is linear for every schedule)."""
    def decorator(fn: Callable[[int, int, Any], float]) -> Callable[[int, int, Any], float]:
        SCHEDULES.add(name, fn, _origin(fn))
        return fn
    return decorator


class OptimConfig(BaseModel):
    """Optimizer, schedule and clipping of one training run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: str = Field("adamw", description="a registered optimizer (`nftbench list` names "
                           "them): sgd, sgd_momentum, sgd_nesterov, adam, adamw, rmsprop, "
                           "adagrad, adadelta built in")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="(decoupled for adamw) weight decay")
    betas: tuple[float, float] = Field((0.9, 0.95), description="Adam-family betas")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum of sgd_momentum/nesterov")
    schedule: str = Field(
        "constant",
        description="a registered schedule: constant; cosine (warm-up then cosine to "
        "min_lr_ratio); linear_warmup (linear warm-up then constant); sgdr (warm-up then cosine "
        "cycles of restart_steps, each restarting at lr: SGDR, Loshchilov & Hutter 2017)",
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor, as a fraction of lr")
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; null = off")
    restart_steps: int = Field(100, ge=1, description="(sgdr) steps per cosine cycle (TAR's "
                               "red team: 100)")
    cosine_span: float = Field(1.0, gt=0, description="(cosine) the half-period as a multiple "
                               "of the steps after warm-up: 1 ends at the floor; TAR's red team "
                               "anneals over 4x its run, so its rate ends near the top")
    options: dict[str, Any] = Field(default_factory=dict, description="the optimizer's own "
                                    "options (its registered options class validates them)")

    @field_validator("optimizer", "schedule")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        try:
            (OPTIMIZERS if info.field_name == "optimizer" else SCHEDULES).get(name)
        except UnknownPluginError as err:  # a KeyError; pydantic reports ValueErrors
            raise ValueError(str(err)) from None
        return name

    @model_validator(mode="after")
    def _options_fit(self) -> OptimConfig:
        self.optimizer_options()
        return self

    def optimizer_options(self) -> PluginConfig | None:
        """``options`` validated by the optimizer's options class (None if it has none)."""
        entry = OPTIMIZERS.get(self.optimizer)
        if entry.options is None:
            if self.options:
                raise ValueError(f"optimizer {self.optimizer!r} takes no options "
                                 f"(got {sorted(self.options)})")
            return None
        try:
            return entry.options(**self.options)
        except ValidationError as err:
            raise ValueError(f"options of optimizer {self.optimizer!r}: {err}") from None

    @model_serializer(mode="wrap")
    def _stable_keys(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        for name, default in LATER_FIELDS.items():
            if out.get(name) == default:
                del out[name]
        return out

    def optim(self) -> OptimConfig:
        """Only the optimizer fields (a subclass, e.g. an adversary's config, drops its own)."""
        return OptimConfig(**{k: getattr(self, k) for k in OptimConfig.model_fields})


def build_optimizer(params: Params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """An optimizer over ``params`` (tensors or param groups) as ``cfg`` says."""
    entry = OPTIMIZERS.get(cfg.optimizer)
    if entry.options is None:
        return entry.build(params, cfg)
    return entry.build(params, cfg, cfg.optimizer_options())


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return SCHEDULES.get(cfg.schedule)(step - cfg.warmup_steps,
                                       max(1, total - cfg.warmup_steps), cfg)


# -- the built-ins -----------------------------------------------------------------------------

@register_optimizer("sgd")
def _sgd(params: Params, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@register_optimizer("sgd_momentum")
def _sgd_momentum(params: Params, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           momentum=cfg.momentum)


@register_optimizer("sgd_nesterov")
def _sgd_nesterov(params: Params, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           momentum=cfg.momentum, nesterov=True)


class AdamOptions(PluginConfig):
    """How torch runs Adam and AdamW (the same update; the implementations order float
    operations differently, so a set option enters the key, as every option does)."""

    fused: bool = Field(False, description="torch's fused kernel, one pass over all parameters "
                        "per step (CPU and CUDA): at 0.5B parameters on 2 CPU cores the "
                        "optimizer step takes about a third of the training step unfused "
                        "(benchmarks/mfu.py)")

    def kwargs(self) -> dict[str, Any]:
        return {"fused": True} if self.fused else {}  # unset: torch's default, as before


@register_optimizer("adam", options=AdamOptions)
def _adam(params: Params, cfg: OptimConfig, options: AdamOptions) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                            **options.kwargs())


@register_optimizer("adamw", options=AdamOptions)
def _adamw(params: Params, cfg: OptimConfig, options: AdamOptions) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                             **options.kwargs())


@register_optimizer("rmsprop")
def _rmsprop(params: Params, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@register_optimizer("adagrad")
def _adagrad(params: Params, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@register_optimizer("adadelta")
def _adadelta(params: Params, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _cosine_from(progress: float, cfg: OptimConfig) -> float:
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@register_schedule("constant")
def _constant(step: int, steps: int, cfg: OptimConfig) -> float:
    return 1.0


@register_schedule("linear_warmup")
def _linear_warmup(step: int, steps: int, cfg: OptimConfig) -> float:
    return 1.0  # the warm-up is every schedule's; after it, constant


@register_schedule("cosine")
def _cosine(step: int, steps: int, cfg: OptimConfig) -> float:
    return _cosine_from(min(1.0, step / (steps * cfg.cosine_span)), cfg)


@register_schedule("sgdr")
def _sgdr(step: int, steps: int, cfg: OptimConfig) -> float:
    return _cosine_from((step % cfg.restart_steps) / cfg.restart_steps, cfg)

