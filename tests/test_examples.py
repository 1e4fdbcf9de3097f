"""The README's worked plugin examples are the files in examples/plugins, and they run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from conftest import EXAMPLE_PLUGINS, ROOT

from nftbench.cli import main


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
