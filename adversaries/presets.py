"""Attacks as the papers ran them, so that "attacked as the paper did" is one line of config.

* ``sophon_paper``: SOPHON's own evaluation attack (the authors' ``finetune_test.py``): full
  fine-tuning with SGD, momentum 0.9, lr 1e-4, weight decay 1e-4, batch 200, 20 epochs. On the
  embedded world's 50 train examples that is 5 steps of 200 (examples repeat within a batch);
  the paper's own finding is that this attack is the weak end (Adam or larger rates recover
  the task after 40-50 epochs), which is what ``long_hot`` and the default attacks cover.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from adversaries.finetune import FullFineTune, FullFineTuneConfig
from nftbench.registry import register_adversary


class SophonPaperConfig(FullFineTuneConfig):
    """SOPHON's evaluation attack (finetune_test.py); every field can still be overridden."""

    optimizer: Literal["sgd", "sgd_momentum", "sgd_nesterov", "adam", "adamw", "rmsprop",
                       "adagrad", "adadelta"] = Field("sgd_momentum",
                                                      description="SGD with momentum")
    momentum: float = Field(0.9, ge=0, lt=1, description="the paper's momentum")
    lr: float = Field(1e-4, gt=0, description="the paper's learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="the paper's (L2) weight decay")
    batch_size: int = Field(200, ge=1, description="the paper's batch")
    epochs: float | None = Field(20, gt=0, description="the paper's budget: 20 epochs")


@register_adversary("sophon_paper", version="1")
class SophonPaper(FullFineTune):
    """SOPHON's own attack: SGD (momentum 0.9) at lr 1e-4, batch 200, 20 epochs."""

    Config = SophonPaperConfig
    config: SophonPaperConfig
    owner_recipe = False  # an attack only
