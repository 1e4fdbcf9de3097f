"""Shared fixtures: offline hubs, and a tiny matrix that runs in seconds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from nftbench.registry import load_plugins

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGINS = ROOT / "examples" / "plugins"

TINY_MATRIX: dict[str, Any] = {
    "name": "t",
    "world": {"n_entities": 24, "n_documents": 400},
    "model": {"tiny": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 64, "vocab_size": 300}},
    "pretrain": {"steps": 6, "batch_size": 4, "seq_len": 32},
    "defenses": ["none"],
    "adversaries": [{"name": "full_ft", "params": {"steps": 4, "batch_size": 4}}],
    "tasks": ["recall_city", "qa_city"],
    "seeds": [0],
    "eval": {"budget_points": 2, "batch_size": 16},
    "threads": 1,
}


@pytest.fixture(scope="session", autouse=True)
def _plugins() -> None:
    torch.set_num_threads(1)
    load_plugins()


@pytest.fixture
def tiny_raw(tmp_path: Path) -> dict[str, Any]:
    raw = copy.deepcopy(TINY_MATRIX)
    raw["output_dir"] = str(tmp_path / "run")
    return raw
