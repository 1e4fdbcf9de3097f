"""lm-eval's own command line scores a saved release exactly as nftbench reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from conftest import EXAMPLE_PLUGINS

from nftbench.cli import main


def test_lm_eval_cli_gives_the_reported_scores(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    # qa_color is multiple choice: a barely trained model scores well above 0 by log-likelihood,
    # so agreement is not the trivial 0 == 0; recall_city checks the generate_until path.
    tiny_raw["tasks"] = ["recall_city", "qa_city", "qa_color"]
    tiny_raw["world"]["n_entities"] = 64
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(path), "--quiet", "--plugins", str(EXAMPLE_PLUGINS)]) == 0
    run = Path(tiny_raw["output_dir"])
    results = pd.read_parquet(run / "results.parquet")
    at_release = results[(results.release == "none") & (results.metric == "score")
                         & (results.step == 0) & (results.seed.fillna(0) == 0)]
    ours = dict(zip(at_release.task, at_release.value, strict=True))

    out = tmp_path / "lm_eval_out"
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
           "--model_args", f"pretrained={run / 'releases' / 'none-base0'}", "--device", "cpu",
           "--include_path", str(run / "lm_eval_tasks"),
           "--tasks", "nft_recall_city,nft_qa_city,nft_qa_color", "--batch_size", "16",
           "--output_path", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=300)
    (result_file,) = out.rglob("results_*.json")
    theirs = json.loads(result_file.read_text())["results"]
    assert theirs["nft_qa_color"]["acc,none"] == ours["qa_color"]
    assert ours["qa_color"] > 0
    assert theirs["nft_qa_city"]["exact_match,none"] == ours["qa_city"]
    assert theirs["nft_recall_city"]["exact_match,none"] == ours["recall_city"]
