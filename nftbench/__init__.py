"""nftbench: a benchmark harness for fine-tuning resistance.

The public surface, for plugin authors and scripts, is one import::

    from nftbench import Adversary, AttackContext, OptimConfig, PluginConfig, register_adversary

Names load on first use, so ``import nftbench`` (the CLI's first step) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nftbench.threads import apply_wait_policy

__version__ = "0.1.0"

# before anything imports torch (nftbench/threads.py says why); the manifest records it
WAIT_POLICY = apply_wait_policy()

#: public name -> the module that defines it
_EXPORTS = {
    "Defense": "nftbench.api", "Adversary": "nftbench.api", "DefenseContext": "nftbench.api",
    "AttackContext": "nftbench.api", "Release": "nftbench.api", "Authorization": "nftbench.api",
    "PluginConfig": "nftbench.registry", "register_defense": "nftbench.registry",
    "register_adversary": "nftbench.registry", "register_task": "nftbench.registry",
    "OptimConfig": "nftbench.optim", "TrainResult": "nftbench.train",
    "register_optimizer": "nftbench.optim", "register_schedule": "nftbench.optim",
    "Task": "nftbench.task", "TemplateTask": "nftbench.task", "TaskConfig": "nftbench.task",
    "load_plugins": "nftbench.plugins",
}
__all__ = [
    "Adversary",
    "AttackContext",
    "Authorization",
    "Defense",
    "DefenseContext",
    "OptimConfig",
    "PluginConfig",
    "Release",
    "Task",
    "TaskConfig",
    "TemplateTask",
    "TrainResult",
    "load_plugins",
    "register_adversary",
    "register_defense",
    "register_optimizer",
    "register_schedule",
    "register_task",
]

if TYPE_CHECKING:
    from nftbench.api import (
        Adversary,
        AttackContext,
        Authorization,
        Defense,
        DefenseContext,
        Release,
    )
    from nftbench.optim import OptimConfig, register_optimizer, register_schedule
    from nftbench.plugins import load_plugins
    from nftbench.registry import (
        PluginConfig,
        register_adversary,
        register_defense,
        register_task,
    )
    from nftbench.task import Task, TaskConfig, TemplateTask
    from nftbench.train import TrainResult


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nftbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
