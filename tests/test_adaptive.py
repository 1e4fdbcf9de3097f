"""Adaptive attacks: mask recovery (scored by the harness), re-initialization, long and hot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from nftbench.adversaries.adaptive import (
    LongHotConfig,
    MaskRecovery,
    MaskRecoveryConfig,
    Reinit,
    ReinitConfig,
    estimate_trained_fraction,
)
from nftbench.api import Adversary, AttackContext, Defense, DefenseContext, Release
from nftbench.cli import main
from nftbench.data import mixed_batches
from nftbench.masks import MASK_FILE, global_topk, load_mask, mask_iou, save_mask
from nftbench.masks import attack_diagnostics as mask_attack_diagnostics
from nftbench.metrics import sweep_trials
from nftbench.models import ModelSpec, TinyLlamaConfig, init_model, save_release, train_tokenizer
from nftbench.registry import (
    ADVERSARIES,
    PluginConfig,
    register_adversary,
    register_defense,
)
from nftbench.world import World, WorldConfig

SPEC = ModelSpec(tiny=TinyLlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=300))
RHO = 0.3


def shrink_complement(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A random global mask of RHO; everything outside it scaled toward zero (what PMP's
    `projected` complement looks like in a release)."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    mask = global_topk({n: torch.rand(p.shape, generator=gen) for n, p in params.items()}, RHO)
    with torch.no_grad():
        for n, p in params.items():
            p.mul_(torch.where(mask[n], 1.0, 1e-3))
    return mask


@register_defense("test_shrunk_complement", version="1")
class ShrunkComplement(Defense[PluginConfig]):
    """Test-only: the base with a random complement shrunk toward zero; the mask kept private."""

    def defend(self, ctx: DefenseContext) -> None:
        model, _ = ctx.base.load()
        save_mask(shrink_complement(model, seed=0), ctx.private_dir / MASK_FILE)
        ctx.save_release(model)

    def attack_diagnostics(self, private_dir, outcome):
        return mask_attack_diagnostics(load_mask(private_dir / MASK_FILE), outcome)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    world = World(WorldConfig(n_entities=40, n_documents=300))
    tokenizer = train_tokenizer(world.documents(), 300)
    folder = tmp_path_factory.mktemp("adaptive")
    model = init_model(SPEC, tokenizer, 0)
    dense = Release(save_release(model, tokenizer, folder / "dense"), SPEC)
    mask = shrink_complement(model, seed=1)
    shrunk = Release(save_release(model, tokenizer, folder / "shrunk"), SPEC)
    from nftbench.registry import TASKS
    from nftbench.task import register_task_files  # noqa: F401  (built-in tasks are registered)

    examples = TASKS.get("qa_city")().examples("train", world)
    return dense, shrunk, mask, examples


def context(seed: int = 0) -> AttackContext:
    return AttackContext(seed=seed, evaluate=lambda m, t: {}, budget_points=lambda s: [0, s],
                         progress=False)


def test_masks_round_trip_bit_packed(tmp_path: Path) -> None:
    mask = {"a": torch.rand(3, 5) > 0.5, "b": torch.rand(7) > 0.2}
    save_mask(mask, tmp_path / MASK_FILE)
    back = load_mask(tmp_path / MASK_FILE)
    assert all(torch.equal(mask[k], back[k]) for k in mask)
    assert (tmp_path / MASK_FILE).stat().st_size < 200
    assert mask_iou(mask, back) == 1.0 and mask_iou(mask, {k: ~v for k, v in mask.items()}) == 0


def test_mask_recovery_recovers_a_shrunk_complement(setup) -> None:
    _, shrunk, true_mask, examples = setup
    model, _ = shrunk.load()
    assert estimate_trained_fraction(list(model.parameters())) == pytest.approx(RHO, abs=0.02)
    ctx = context()
    MaskRecovery(MaskRecoveryConfig(steps=2, batch_size=4)).attack(shrunk, examples, ctx)
    assert mask_iou(ctx.guesses()["mask"], true_mask) >= 0.9
    assert ctx.diagnostics["estimated_rho"] == pytest.approx(RHO, abs=0.02)


def test_mask_recovery_trains_only_the_guess(setup) -> None:
    _, shrunk, _, examples = setup
    ctx = context()
    attack = MaskRecovery(MaskRecoveryConfig(steps=20, batch_size=8, lr=3e-3))
    before, _ = shrunk.load()
    captured = {}

    def evaluate(model, tok):
        captured["model"] = model
        return {}

    ctx.evaluate = evaluate
    result = attack.attack(shrunk, examples, ctx)
    assert result.losses[-1] < result.losses[0]
    after = dict(captured["model"].named_parameters())
    for name, p in before.named_parameters():
        outside = ~ctx.guesses()["mask"][name]
        assert torch.equal(p[outside], after[name].detach()[outside]), name
    changed = sum(int((p != after[n].detach()).sum()) for n, p in before.named_parameters())
    assert changed > 0


def test_saliency_guess(setup) -> None:
    _, shrunk, true_mask, examples = setup
    ctx = context()
    MaskRecovery(MaskRecoveryConfig(steps=1, batch_size=8, score="saliency", rho=RHO)).attack(
        shrunk, examples, ctx)
    # |w * grad| is a weaker guess than |w|: embedding rows of tokens absent from the attacker's
    # batches get no gradient at all. Two independent masks of density RHO have an expected IoU
    # of RHO^2 / (2 RHO - RHO^2) = 0.18; the guess must clearly beat that.
    chance = RHO**2 / (2 * RHO - RHO**2)
    assert mask_iou(ctx.guesses()["mask"], true_mask) > 2 * chance


@pytest.mark.parametrize("target", ["head", "smallest"])
def test_reinit_redraws_then_trains(setup, target: str) -> None:
    dense, _, _, examples = setup
    ctx = context()
    result = Reinit(ReinitConfig(target=target, steps=20, batch_size=8, lr=3e-3)).attack(
        dense, examples, ctx)
    model, _ = dense.load()
    expected = model.get_output_embeddings().weight.numel() if target == "head" else round(
        0.1 * sum(p.numel() for p in model.parameters() if p.dim() >= 2))
    assert ctx.diagnostics["reinitialized"] == expected
    assert result.losses[-1] < result.losses[0]


def test_long_hot_defaults_and_registry() -> None:
    cfg = LongHotConfig()
    assert (cfg.steps, cfg.optimizer, cfg.lr) == (1500, "adam", 3e-3)
    for name in ("mask_recovery", "reinit", "long_hot"):
        assert name in ADVERSARIES


def test_harness_reports_iou_from_the_private_mask(tiny_raw: dict[str, Any],
                                                   tmp_path: Path) -> None:
    tiny_raw["defenses"] = ["none", "test_shrunk_complement"]
    tiny_raw["adversaries"] = [{"name": "mask_recovery", "params": {"steps": 2, "batch_size": 4}},
                               {"name": "long_hot", "params": {"steps": 2, "batch_size": 4}}]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(path), "--quiet"]) == 0
    out = Path(tiny_raw["output_dir"])
    results = pd.read_parquet(out / "results.parquet")
    iou = results[results.metric == "mask_iou"]
    assert list(iou.release) == ["test_shrunk_complement"]  # only a release with a private mask
    assert iou.value.iloc[0] >= 0.9
    assert set(results[results.metric == "estimated_rho"].release) == {
        "none", "test_shrunk_complement", "scratch"}
    # the release the adversary saw holds no mask; the private folder beside it does
    release = out / "releases" / "test_shrunk_complement-base0"
    assert not any("mask" in p.name for p in release.iterdir())
    assert (release.resolve().parent / "private" / MASK_FILE).exists()


def test_sweep_selects_and_records_attacker_effort(tiny_raw: dict[str, Any],
                                                   tmp_path: Path) -> None:
    tiny_raw["adversaries"] = [{"name": "sweep", "params": {
        "params": {"steps": 3, "batch_size": 4}, "grid": {"lr": [1e-4, 1e-2]},
        "select": ["validation", "validation_accuracy", "oracle"]}},
        # each trial run alone: the oracle's cell must be its selected trial, whole
        {"name": "full_ft", "params": {"steps": 3, "batch_size": 4, "lr": [1e-4, 1e-2]}}]
    tiny_raw["tasks"] = ["recall_city", "qa_color"]  # a capability task, a restricted one
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(path), "--quiet"]) == 0
    results = pd.read_parquet(Path(tiny_raw["output_dir"]) / "results.parquet")
    sweeps = {"sweep[select=validation]", "sweep[select=validation_accuracy]",
              "sweep[select=oracle]"}
    assert sweeps <= set(results.adversary)
    oracle = results[(results.adversary == "sweep[select=oracle]") & (results.release == "none")]
    effort = oracle[oracle.metric == "effort_best"].sort_values("trial")
    trials = oracle[oracle.metric == "trial_score"].sort_values("trial")
    assert effort.trial.tolist() == [1, 2]
    assert effort.flops.is_monotonic_increasing and effort.value.is_monotonic_increasing
    assert effort.value.iloc[-1] == trials.value.max()  # the oracle keeps the best eval score
    final = oracle[(oracle.metric == "score")].sort_values("step").value.iloc[-1]
    assert final == trials.value.max()
    # each trial row names its grid point, and each cell the trial it selected
    assert [json.loads(p) for p in trials.params] == [{"lr": 1e-4}, {"lr": 1e-2}]
    selected = oracle[oracle.metric == "selected_trial"].value.tolist()
    assert selected == [trials.set_index("trial").value.idxmax()]  # the first best
    # the cell reports what its selected trial reported: the capability it left, every row
    lr = json.loads(trials.set_index("trial").params[int(selected[0])])["lr"]
    alone = results[(results.adversary == f"full_ft[lr={lr:g}]") & (results.release == "none")]
    cap = oracle[oracle.metric.str.startswith("capability_after/")]
    assert cap.metric.tolist() == ["capability_after/recall_city"]
    mine = alone[alone.metric.str.startswith("capability_after/")]
    assert (cap.set_index("metric").value.to_dict() == mine.set_index("metric").value.to_dict())

    # trials.csv: one row per release x sweep x trial, each cell's choice counted once
    table = sweep_trials(results)
    cells = results[results.metric == "selected_trial"]
    table = table[table.adversary.isin(sweeps)]
    assert set(table.adversary) == sweeps and set(table.trial) == {1, 2}
    for (release, adversary), g in table.groupby(["defense", "adversary"]):
        mine = cells[(cells.release == release) & (cells.adversary == adversary)]
        assert g.n_selected.sum() == len(mine) and g.n_cells.tolist() == [len(mine)] * 2
    row = table[(table.defense == "none") & (table.adversary == "sweep[select=oracle]")
                & (table.trial == 2)].iloc[0]
    assert row.score == pytest.approx(trials.value.iloc[1])
    report = Path(tiny_raw["output_dir"]) / "report" / "trials.csv"
    assert pd.read_csv(report).shape[0] == len(table)


class PlantedConfig(PluginConfig):
    trial: int = 0


#: per planted trial: (eval score, held-out answer loss, held-out accuracy); None: diverges
PLANTED = {1: (0.9, 2.0, 0.2),  # the best eval score: the oracle's pick
           2: (0.3, 0.5, 0.6),  # the lowest held-out loss: validation's pick
           3: (0.6, 1.5, 0.8),  # as many held-out answers right as 4, at a higher loss
           4: (0.5, 1.0, 0.8),  # validation_accuracy's pick
           5: None}             # diverged: would win every rule, never selected


def test_each_selection_rule_picks_its_own_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    """oracle: the highest eval score; validation: the lowest held-out answer loss;
    validation_accuracy: the most held-out answers right, ties by the lower loss; a diverged
    trial never. Trials are planted: each reports fixed numbers for each signal."""
    from nftbench.adversaries import sweep as sweep_module
    from nftbench.train import Point, TrainResult

    @register_adversary("test_planted", version="1")
    class Planted(Adversary[PlantedConfig]):
        def attack(self, release: Any, examples: Any, ctx: AttackContext) -> TrainResult:
            planted = PLANTED[self.config.trial]
            if planted is None:
                return TrainResult(steps=1, tokens=1, flops=1.0, wall_s=0.0, diverged_at=1)
            scores = ctx.evaluate(self.config.trial, None)  # the "model" is the trial's number
            return TrainResult(steps=1, tokens=1, flops=1.0, wall_s=0.0, points=[
                Point(step=1, tokens=1, flops=1.0, wall_s=0.0, peak_mem_mb=0.0, loss=0.0,
                      scores=scores)])

    monkeypatch.setattr(sweep_module, "answer_loss", lambda m, t, ex: PLANTED[m][1])
    monkeypatch.setattr(sweep_module, "answer_accuracy", lambda m, t, ex: PLANTED[m][2])
    examples = [{"prompt": f"q{i}", "answer": "a"} for i in range(10)]
    picks = {}
    for select in ("oracle", "validation", "validation_accuracy"):
        ctx = AttackContext(seed=0, evaluate=lambda m, t: {"task": PLANTED[m][0]},
                            budget_points=lambda steps: [steps], progress=False)
        sweep = sweep_module.Sweep(sweep_module.SweepConfig(
            adversary="test_planted", grid={"trial": [1, 2, 3, 4, 5]}, select=select))
        result = sweep.attack(None, examples, ctx)
        picks[select] = ctx.diagnostics["selected_trial"]
        assert result.points[-1].scores["task"] == PLANTED[picks[select]][0]
        assert [e["best_score"] for e in ctx.diagnostics["effort"]][-1] == \
            PLANTED[picks[select]][0]
    assert picks == {"oracle": 1, "validation": 2, "validation_accuracy": 4}


def test_sweep_config_is_validated() -> None:
    from nftbench.adversaries.sweep import Sweep, SweepConfig

    with pytest.raises(ValueError, match="grid"):
        SweepConfig(grid={})
    with pytest.raises(ValueError, match="unknown adversary 'nope'"):
        SweepConfig(adversary="nope")
    with pytest.raises(ValueError, match="Input should be greater than 0"):
        SweepConfig(grid={"lr": [1e-3, -1.0]})
    sweep = Sweep(SweepConfig(params={"steps": 5}, grid={"lr": [1e-3, 1e-2], "batch_size": [4]},
                              max_trials=1))
    (trial,) = sweep.trials(seed=0)
    assert trial.config.steps == 5 and trial.config.lr in (1e-3, 1e-2)


def test_epochs_budget_is_the_right_number_of_steps() -> None:
    from nftbench.adversaries.finetune import FullFineTuneConfig
    from nftbench.adversaries.lora import LoraAttackConfig

    assert FullFineTuneConfig(steps=70).budget_steps(50) == 70
    # SOPHON's attack: 20 epochs at batch 200 over 50 examples = 1,000 examples = 5 steps
    assert FullFineTuneConfig(epochs=20, batch_size=200).budget_steps(50) == 5
    assert FullFineTuneConfig(epochs=3, batch_size=32).budget_steps(50) == 5  # ceil(150 / 32)
    assert LoraAttackConfig(epochs=0.1, batch_size=32).budget_steps(50) == 1
    with pytest.raises(ValueError, match="not both"):
        FullFineTuneConfig(steps=10, epochs=2)


def test_sophon_paper_preset_is_the_papers_attack() -> None:
    from nftbench.plugins import load_plugins
    from nftbench.registry import ADVERSARIES

    load_plugins()
    cfg = ADVERSARIES.get("sophon_paper").Config()
    assert (cfg.optimizer, cfg.momentum, cfg.lr, cfg.weight_decay, cfg.batch_size,
            cfg.epochs) == ("sgd_momentum", 0.9, 1e-4, 1e-4, 200, 20)
    assert cfg.budget_steps(50) == 5
    with pytest.raises(ValueError, match="epochs: null"):
        ADVERSARIES.get("sophon_paper").Config(steps=10)


def test_paper_attack_presets() -> None:
    """TAR's red team is 6 optimizers x 4 schedules at the authors' settings; Qi et al.'s
    presets are their scripts' values; all select the worst trial as the papers report."""
    from nftbench.plugins import load_plugins
    from nftbench.registry import ADVERSARIES

    load_plugins()
    tar = ADVERSARIES.get("tar_redteam")
    trials = tar(tar.Config()).trials(0)
    assert len(trials) == 24 and tar.Config().select == "oracle"
    assert {t.config.optimizer for t in trials} == {"sgd_momentum", "sgd_nesterov", "adam",
                                                    "adamw", "adagrad", "adadelta"}
    assert {(t.config.schedule, t.config.warmup_steps) for t in trials} == {
        ("constant", 0), ("linear_warmup", 100), ("cosine", 100), ("sgdr", 30)}
    assert all((t.config.lr, t.config.steps, t.config.batch_size) == (2e-5, 1000, 64)
               for t in trials)
    adamw = [t.config for t in trials if t.config.optimizer == "adamw"]
    assert all(c.weight_decay == 0.01 and c.betas == (0.9, 0.999) for c in adamw)
    qi = ADVERSARIES.get("qi_tar").Config()
    assert (qi.optimizer, qi.lr, qi.steps, qi.batch_size, qi.schedule, qi.warmup_steps,
            qi.weight_decay) == ("adamw", 2e-5, 1000, 64, "cosine", 100, 0.01)
    grid = ADVERSARIES.get("qi_lr_grid")
    assert [t.config.lr for t in grid(grid.Config()).trials(0)] == [3e-5, 6e-5, 8e-5]
    for preset in (tar, grid):  # every selection rule of `sweep` is open to the presets
        assert preset.Config(select="validation_accuracy").select == "validation_accuracy"


def test_mixed_batches_hold_the_share_in_every_batch() -> None:
    task = [([1, 1], [1, 1])] * 3 + [([1, 1, 1], [1, 1, 1])] * 2  # 5 rows of token 1
    public = [([2, 2], [2, 2])] * 7  # 7 rows of token 2
    batches = mixed_batches(task, public, batch_size=8, share=0.25, seed=0, pad_id=0)
    seen = []
    for _ in range(10):
        ids = next(batches)["input_ids"]
        assert ids.shape[0] == 8
        first = ids[:, 0].tolist()
        assert first.count(2) == 2 and first.count(1) == 6  # round(0.25 * 8) mixed in
        seen += (ids[ids[:, 0] == 1] != 0).sum(dim=1).tolist()  # lengths of the task rows
    # every pass over the task split shows each row once: the 3s appear 2 / 5 of the time
    assert seen.count(3) == 2 * len(seen) // 5
    with pytest.raises(ValueError, match="at least one row"):
        next(mixed_batches(task, public, batch_size=4, share=0.1, seed=0, pad_id=0))
    with pytest.raises(ValueError, match="both sources"):
        next(mixed_batches(task, [], batch_size=4, share=0.5, seed=0, pad_id=0))


def test_data_mix_trains_on_the_capability_splits(tiny_raw: dict[str, Any],
                                                 tmp_path: Path) -> None:
    tiny_raw["tasks"] = ["recall_city", "recall_food", "qa_city"]
    tiny_raw["adversaries"] = [
        {"name": "data_mix", "params": {"steps": 2, "batch_size": 4}},
        {"name": "data_mix", "label": "mix_food", "params": {"steps": 2, "batch_size": 4,
                                                             "share": 0.25,
                                                             "tasks": ["recall_food"]}},
        {"name": "data_mix", "label": "mix_nothing", "params": {"steps": 2, "batch_size": 4,
                                                                "tasks": ["qa_city"]}}]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(path), "--quiet"]) == 3  # mix_nothing's cells fail
    out = Path(tiny_raw["output_dir"])
    results = pd.read_parquet(out / "results.parquet")
    world = World(WorldConfig(n_entities=24, n_documents=400))
    from nftbench.registry import TASKS

    n_train = {t: len(TASKS.get(t)().examples("train", world)) for t in ("recall_city",
                                                                        "recall_food")}
    mixed = results[results.metric == "mix_examples"]
    assert set(mixed[mixed.adversary == "data_mix"].value) == {sum(n_train.values())}
    assert set(mixed[mixed.adversary == "mix_food"].value) == {n_train["recall_food"]}
    assert set(results[results.metric == "mix_share"].value) == {0.5, 0.25}
    failed = results[results.adversary == "mix_nothing"]
    assert set(failed.status) == {"failed"}
    manifest = json.loads((out / "manifest.json").read_text())
    errors = {s["error"] for s in manifest["stages"] if s["status"] == "failed"}
    assert errors and all("['qa_city'] not among the matrix's: ['recall_city', 'recall_food']"
                          in e for e in errors)
