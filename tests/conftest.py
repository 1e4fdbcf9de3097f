"""Shared fixtures: offline hubs, and a tiny matrix that runs in seconds."""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from nftbench.plugins import load_plugins

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGINS = ROOT / "examples" / "plugins"

# configs/tiny.yaml: every stage in a few seconds
TINY_MATRIX: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())


@pytest.fixture(scope="session", autouse=True)
def _plugins() -> None:
    torch.set_num_threads(1)
    load_plugins()


@pytest.fixture
def tiny_raw(tmp_path: Path) -> dict[str, Any]:
    raw = copy.deepcopy(TINY_MATRIX)
    raw["output_dir"] = str(tmp_path / "run")
    return raw
