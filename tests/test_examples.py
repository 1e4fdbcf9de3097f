"""The README's worked plugin examples are the files in examples/plugins, and they run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from conftest import EXAMPLE_PLUGINS, ROOT
from pydantic import ValidationError

from nftbench import OptimConfig, load_plugins
from nftbench.cli import main
from nftbench.optim import build_optimizer


def test_readme_embeds_the_example_files_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    for path in sorted(EXAMPLE_PLUGINS.iterdir()):
        if path.suffix in (".py", ".yaml"):
            assert path.read_text().strip() in readme, f"README is out of date with {path.name}"


def test_example_plugins_run_in_a_matrix(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    tiny_raw["defenses"] = ["none", {"name": "noisy_release", "params": {"sigma": [0.5, 2.0]}}]
    tiny_raw["adversaries"].append({"name": "head_only", "params": {"steps": 3, "batch_size": 4}})
    tiny_raw["tasks"].append("qa_city_mc")
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(path), "--quiet", "--plugins", str(EXAMPLE_PLUGINS)]) == 0
    out = Path(tiny_raw["output_dir"])
    results = pd.read_parquet(out / "results.parquet")
    curves = results[(results.role == "restricted") & (results.metric == "score")]
    assert set(curves.release) == {"none", "noisy_release[sigma=0.5]", "noisy_release[sigma=2]",
                                   "scratch"}
    assert set(curves.adversary) == {"full_ft", "head_only"}
    assert set(curves.task) == {"qa_city", "qa_city_mc"}
    assert curves.value.notna().all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variants"]["defenses"]["noisy_release[sigma=2]"]["params"]["sigma"] == 2.0


def test_a_third_party_optimizer_serves_full_ft_and_sweep(tiny_raw: dict[str, Any],
                                                          tmp_path: Path, capsys) -> None:
    """examples/plugins/lion.py registers `lion`: a plain optimizer name in `full_ft` and in a
    `sweep` grid, with its own options validated by its options class."""
    load_plugins([EXAMPLE_PLUGINS])
    model = torch.nn.Linear(3, 1)
    opt = build_optimizer(model.parameters(), OptimConfig(optimizer="lion",
                                                          options={"beta2": 0.98}))
    assert type(opt).__name__ == "Lion" and opt.param_groups[0]["betas"] == (0.9, 0.98)
    with pytest.raises(ValidationError, match="options of optimizer 'lion'"):
        OptimConfig(optimizer="lion", options={"beta3": 0.5})
    with pytest.raises(ValidationError, match="optimizer 'sgd' takes no options"):
        OptimConfig(optimizer="sgd", options={"beta2": 0.5})
    with pytest.raises(ValidationError, match="options of optimizer 'adamw'"):  # fused only
        OptimConfig(options={"beta2": 0.5})
    fused = build_optimizer(model.parameters(), OptimConfig(options={"fused": True}))
    assert fused.defaults["fused"] is True
    assert not build_optimizer(model.parameters(), OptimConfig()).defaults["fused"]
    assert main(["list", "--brief", "--plugins", str(EXAMPLE_PLUGINS)]) == 0
    assert "  lion (options: beta2)\n" in capsys.readouterr().out

    tiny_raw["adversaries"] = [
        {"name": "full_ft", "label": "lion", "params": {
            "steps": 3, "batch_size": 4, "optimizer": "lion", "lr": 1e-4,
            "options": {"beta2": 0.98}}},
        {"name": "sweep", "params": {"adversary": "full_ft", "params": {"steps": 3,
                                                                        "batch_size": 4},
                                     "grid": {"optimizer": ["adamw", "lion"]},
                                     "select": "oracle"}}]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(path), "--quiet", "--plugins", str(EXAMPLE_PLUGINS)]) == 0
    results = pd.read_parquet(Path(tiny_raw["output_dir"]) / "results.parquet")
    scores = results[(results.role == "restricted") & (results.metric == "score")]
    assert set(scores.adversary) == {"lion", "sweep"} and scores.value.notna().all()
    effort = results[results.metric == "effort_best"]
    assert effort.groupby(["release", "task", "seed", "base"]).size().eq(2).all()  # 2 trials
