"""The smoke path end to end on a tiny budget: results, manifest, resume and invalidation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from nftbench.cli import main
from nftbench.records import read_results


def run(raw: dict[str, Any], tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["run", str(path), "--quiet", *args])
    manifest = json.loads((Path(raw["output_dir"]) / "manifest.json").read_text())
    return code, manifest


def computed(manifest: dict[str, Any]) -> list[str]:
    return sorted(s["kind"] for s in manifest["stages"] if not s["cached"])


def test_smoke_run_resume_and_invalidation(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    out = Path(tiny_raw["output_dir"])
    code, manifest = run(tiny_raw, tmp_path)
    assert code == 0
    assert computed(manifest) == ["attack", "attack", "defend", "pretrain", "scratch",
                                  "tokenizer", "utility", "utility"]
    results = pd.read_parquet(out / "results.parquet")
    curves = results[(results.role == "restricted") & (results.metric == "score")]
    assert set(curves.release) == {"none", "scratch"}
    for _, curve in curves.groupby("release"):
        assert curve.step.tolist() == [0, 4]
        assert curve.value.between(0, 1).all()
        assert curve.tokens.iloc[0] == 0 and curve.tokens.iloc[1] > 0
        assert curve.flops.iloc[1] > 0
    utility = results[(results.role == "capability") & (results.metric == "score")]
    assert set(utility.release) == {"none", "scratch"} and set(utility.task) == {"recall_city"}
    after = results[results.metric == "capability_after/recall_city"]  # of attacked models
    assert len(after) == 2 and set(after.task) == {"qa_city"} and set(after.step) == {4}
    # every score keeps its items' outcomes (0/1 in lm-eval's document order), and their
    # mean is the score lm-eval reported
    scored = results[(results.metric == "score")]
    assert scored["items"].notna().all()
    for _, r in scored.iterrows():
        assert len(r["items"]) == r.n_items and set(r["items"]) <= {"0", "1"}
        assert abs(r["items"].count("1") / len(r["items"]) - r.value) < 1e-9
    from_csv = read_results(out / "results.csv")  # "0110" stays a string, not 110
    assert from_csv.shape == results.shape
    assert from_csv["items"].fillna("").tolist() == results["items"].fillna("").tolist()
    for field in ("config", "config_hash", "packages", "git", "hardware", "data_fingerprints",
                  "wall_s"):
        assert field in manifest
    assert manifest["packages"]["torch"] and manifest["hardware"]["cpu_count"]
    assert (out / "releases" / "none-base0" / "model.safetensors").exists()
    assert (out / "lm_eval_tasks" / "nft_qa_city.yaml").exists()
    report = out / "report"  # every run ends by writing its report
    assert (report / "leaderboard.md").exists() and (report / "curves_qa_city.png").exists()

    # the same command again: every stage comes from the store, same table
    code, again = run(tiny_raw, tmp_path)
    assert code == 0 and computed(again) == []
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "results.parquet").drop(columns="wall_s"),
        results.drop(columns="wall_s"))

    # one adversary field changed: only the attack cells rerun
    code, changed = run(tiny_raw, tmp_path, "-o", "adversaries.full_ft.params.lr=0.01")
    assert code == 0 and computed(changed) == ["attack", "attack"]

    # a new seed: one more scratch init and its two attack cells, nothing else
    code, seeded = run(tiny_raw, tmp_path, "-o", "seeds=[0, 1]")
    assert computed(seeded) == ["attack", "attack", "scratch"]


def test_task_scored_by_an_lm_eval_task_name(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    """A capability task given only by an lm-eval task name (here the generated
    nft_recall_city, which the run's include path provides) scores like the task itself."""
    tiny_raw["tasks"].append({"name": "lm_eval_capability", "label": "by_name", "params": {
        "lm_eval_task": "nft_recall_city", "lm_eval_metric": "exact_match"}})
    code, _ = run(tiny_raw, tmp_path)
    assert code == 0
    results = pd.read_parquet(Path(tiny_raw["output_dir"]) / "results.parquet")
    utility = results[(results.role == "capability") & (results.metric == "score")]
    utility = utility.set_index(["release", "task"]).value
    assert utility[("none", "by_name")] == utility[("none", "recall_city")]
    assert utility[("scratch", "by_name")] == utility[("scratch", "recall_city")]


class Boom(Exception):
    pass


def test_diverged_and_failed_cells_are_recorded_and_the_matrix_goes_on(
        tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    from nftbench.api import Adversary
    from nftbench.registry import PluginConfig, register_adversary

    @register_adversary("test_broken", version="1")
    class Broken(Adversary):
        """Test-only: raises."""

        class Config(PluginConfig):
            pass

        def attack(self, release, examples, ctx):
            raise Boom("this attack is broken")

    tiny_raw["adversaries"] = [
        {"name": "full_ft", "label": "hot", "params": {
            "steps": 6, "batch_size": 4, "optimizer": "sgd", "lr": 1.0e6, "grad_clip": None}},
        {"name": "reinit", "params": {"steps": 3, "batch_size": 4}},
        "test_broken"]
    code, manifest = run(tiny_raw, tmp_path)
    assert code == 3  # some cells failed
    results = pd.read_parquet(Path(tiny_raw["output_dir"]) / "results.parquet")
    cells = results[results.role == "restricted"]
    hot = cells[cells.adversary == "hot"]
    assert set(hot.status) == {"diverged"}
    assert (hot.metric == "diverged_at").sum() == 2  # none and scratch, each with its step
    assert set(cells[cells.adversary == "reinit"].status) == {"ok"}
    broken = cells[cells.adversary == "test_broken"]
    assert set(broken.status) == {"failed"} and broken.value.isna().all()
    failures = [s for s in manifest["stages"] if s["status"] == "failed"]
    assert len(failures) == 2 and "this attack is broken" in failures[0]["error"]
    # failed cells are not stored; a rerun reports the recorded failures, --retry-failed
    # runs them again (and the others come from the store)
    code, again = run(tiny_raw, tmp_path)
    assert code == 3
    failed = [s["error"] for s in again["stages"] if s["status"] == "failed"]
    assert len(failed) == 2 and all(e.startswith("recorded failure") for e in failed)
    code, retried = run(tiny_raw, tmp_path, "--retry-failed")
    assert code == 3
    reran = [(s["kind"], s["status"]) for s in retried["stages"] if not s["cached"]]
    assert reran == [("attack", "failed"), ("attack", "failed")]
    assert all("this attack is broken" in s["error"] for s in retried["stages"]
               if s["status"] == "failed")


def test_a_failed_defense_counts_its_cells_as_failed(tiny_raw: dict[str, Any],
                                                     tmp_path: Path) -> None:
    from nftbench.api import Defense
    from nftbench.registry import PluginConfig, register_defense

    @register_defense("test_broken_defense", version="1")
    class BrokenDefense(Defense):
        """Test-only: raises."""

        class Config(PluginConfig):
            pass

        def defend(self, ctx):
            raise Boom("this defense is broken")

    tiny_raw["defenses"] = ["none", "test_broken_defense"]
    code, _ = run(tiny_raw, tmp_path)
    assert code == 3
    results = pd.read_parquet(Path(tiny_raw["output_dir"]) / "results.parquet")
    broken = results[results.release == "test_broken_defense"]
    assert len(broken) == 1 and set(broken.status) == {"failed"}  # 1 adversary x 1 task x 1 seed
    assert set(results[results.release == "none"].status) == {"ok"}
