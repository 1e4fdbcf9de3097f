"""Shared fixtures: offline hubs, and a tiny matrix that runs in seconds."""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from nftbench.optim import OPTIMIZERS, SCHEDULES
from nftbench.plugins import load_plugins
from nftbench.registry import REGISTRIES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGINS = ROOT / "examples" / "plugins"

# configs/tiny.yaml: every stage in a few seconds
TINY_MATRIX: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())


@pytest.fixture(scope="session", autouse=True)
def _plugins() -> None:
    torch.set_num_threads(1)
    load_plugins()


@pytest.fixture(autouse=True)
def _isolated_plugins() -> Iterator[None]:
    """A test that loads a plugin folder leaves nothing registered behind it (its entries and
    its modules are undone), so the tests pass in any order."""
    tables = [*REGISTRIES.values(), OPTIMIZERS, SCHEDULES]
    saved = [(t, dict(t._entries), dict(t._origins), dict(t._wheres)) for t in tables]
    modules = {m for m in sys.modules if m.startswith("nftbench_plugin_")}
    yield
    for table, entries, origins, wheres in saved:
        table._entries, table._origins, table._wheres = entries, origins, wheres
    for name in [m for m in sys.modules if m.startswith("nftbench_plugin_")]:
        if name not in modules:
            del sys.modules[name]


@pytest.fixture
def tiny_raw(tmp_path: Path) -> dict[str, Any]:
    raw = copy.deepcopy(TINY_MATRIX)
    raw["output_dir"] = str(tmp_path / "run")
    return raw
