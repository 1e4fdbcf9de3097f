"""restricted_data: a defense and the adversaries that read disjoint parts of a restricted
task's train split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adversaries.finetune import FullFineTune
from nftbench.api import Defense, DefenseContext
from nftbench.cli import main
from nftbench.config import ConfigError, cut, resolve
from nftbench.registry import PluginConfig, register_adversary, register_defense
from tests.test_engine import manifest, write_config


class RecordingConfig(PluginConfig):
    record: str = ""


@register_defense("test_reads_tasks", version="1")
class ReadsTasks(Defense[RecordingConfig]):
    """Test-only: records the restricted examples it was given, releases the base."""

    uses_restricted_data = True

    def defend(self, ctx: DefenseContext) -> None:
        Path(self.config.record).write_text(json.dumps(
            {task: [ex["prompt"] for ex in examples] for task, examples in ctx.restricted.items()}))
        model, _ = ctx.base.load()
        ctx.save_release(model)


@register_adversary("test_records_data", version="1")
class RecordsData(FullFineTune):
    """Test-only: full fine-tuning that records the examples it trains on."""

    class Config(FullFineTune.Config):
        record: str = ""

    def attack(self, release, examples, ctx):
        Path(self.config.record).write_text(json.dumps([ex["prompt"] for ex in examples]))
        return super().attack(release, examples, ctx)


def test_cut_is_disjoint_seeded_and_keeps_order() -> None:
    items = [{"i": i} for i in range(10)]
    defense, attack = cut(items, 0.3, seed=0)
    assert len(defense) == 3 and len(attack) == 7
    assert sorted(ex["i"] for ex in defense + attack) == list(range(10))
    assert [ex["i"] for ex in attack] == sorted(ex["i"] for ex in attack)  # original order
    assert cut(items, 0.3, seed=0) == (defense, attack)
    assert {ex["i"] for ex in cut(items, 0.3, seed=1)[0]} != {ex["i"] for ex in defense}
    assert [len(part) for part in cut(items[:2], 0.99, seed=0)] == [1, 1]  # never empty
    assert [len(part) for part in cut(items[:2], 0.01, seed=0)] == [1, 1]


def test_a_cut_needs_a_share_inside_0_1_and_two_examples(tiny_raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="defense_share"):
        resolve(dict(tiny_raw, restricted_data={"defense_share": 1.0}))
    with pytest.raises(ConfigError, match="defense_share"):
        resolve(dict(tiny_raw, restricted_data={"share": 0.5}))  # misspelt
    one = dict(tiny_raw, restricted_data={"defense_share": 0.5},
               tasks=["recall_city", {"name": "qa_city", "params": {"n_train": 1}}])
    with pytest.raises(ConfigError, match="too few to cut"):
        resolve(one)


def test_the_defense_and_the_adversaries_read_disjoint_parts(tiny_raw: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """With a cut, the defense's examples and the attacker's are disjoint and together the
    whole train split; without one both read all of it. The cut moves the keys of what reads
    the task (a data-reading defense, every attack) and of nothing else; the report says it."""
    read, trained = tmp_path / "defense.json", tmp_path / "attack.json"
    tiny_raw |= {"store_dir": str(tmp_path / "store"),
                 "defenses": ["none", {"name": "test_reads_tasks",
                                       "params": {"record": str(read)}}],
                 "adversaries": [{"name": "test_records_data",
                                  "params": {"steps": 2, "batch_size": 4,
                                             "record": str(trained)}}]}
    shared = write_config(tiny_raw, tmp_path / "shared.yaml")
    assert main(["run", str(shared), "--quiet"]) == 0
    whole = json.loads(read.read_text())["qa_city"]
    assert json.loads(trained.read_text()) == whole and len(whole) >= 4
    before = {(s["kind"], s["label"]): s["key"] for s in manifest(tiny_raw)["stages"]}

    tiny_raw |= {"output_dir": str(tmp_path / "cut"),
                 "restricted_data": {"defense_share": 0.5, "seed": 3}}
    assert main(["run", str(write_config(tiny_raw, tmp_path / "cut.yaml")), "--quiet"]) == 0
    defense = json.loads(read.read_text())["qa_city"]
    attack = json.loads(trained.read_text())  # the last cell's: every cell reads the same
    assert not set(defense) & set(attack)
    assert sorted(defense + attack) == sorted(whole)
    assert len(defense) == round(0.5 * len(whole))

    after = manifest(tiny_raw)
    keys = {(s["kind"], s["label"]): s["key"] for s in after["stages"]}
    moved = {k for k in keys if keys[k] != before[k]}
    assert {kind for kind, _ in moved} == {"defend", "attack", "utility"}
    assert all("test_reads_tasks" in label for kind, label in moved if kind != "attack")
    assert {label for kind, label in moved if kind == "attack"} == {
        label for kind, label in keys if kind == "attack"}
    cached = {s["label"] for s in after["stages"] if s["cached"]}
    assert {"base 0", "none / base 0"} <= cached
    assert after["data_fingerprints"]["train_items"] == {"qa_city": {"defense": len(defense),
                                                        "adversary": len(attack)}}
    board = (Path(tiny_raw["output_dir"]) / "report" / "leaderboard.md").read_text()
    assert f"qa_city: {len(defense)} / {len(attack)}" in board
