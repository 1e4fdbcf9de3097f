"""PMP: exact mask ratio, frozen complement bit-identical to theta_0, projected complement within
its radius, exact rewind, and a release that holds no mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nftbench.adversaries.finetune import FullFineTune
from nftbench.api import DefenseContext, Release
from nftbench.config import PretrainConfig, resolve
from nftbench.data import pack_corpus
from nftbench.defenses.pmp import PMP, STATS_FILE, PMPConfig
from nftbench.engine import Runner
from nftbench.masks import MASK_FILE, load_mask, mask_iou
from nftbench.metrics import curves
from nftbench.models import ModelSpec, TinyLlamaConfig, init_model, load_release, train_tokenizer
from nftbench.registry import register_adversary
from nftbench.report import authorized_table, leaderboard
from nftbench.world import World, WorldConfig

SPEC = ModelSpec(tiny=TinyLlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=300))
PRE = PretrainConfig(steps=12, batch_size=4, seq_len=32)


@pytest.fixture(scope="module")
def data():
    world = World(WorldConfig(n_entities=24, n_documents=300))
    tokenizer = train_tokenizer(world.documents(), 300)
    return tokenizer, pack_corpus(world.documents(), tokenizer, PRE.seq_len)


def defend(data, tmp_path: Path, pre: PretrainConfig = PRE, **params) -> tuple[Path, Path]:
    tokenizer, corpus = data
    ctx = DefenseContext(spec=SPEC, tokenizer=tokenizer, corpus=corpus, pretrain=pre, base=None,
                         restricted={}, release_dir=tmp_path / "release",
                         private_dir=tmp_path / "private", progress=False)
    ctx.private_dir.mkdir(parents=True)
    PMP(PMPConfig(eb_max_steps=6, **params)).defend(ctx)
    return ctx.release_dir, ctx.private_dir


def theta_0(data) -> dict[str, torch.Tensor]:
    return dict(init_model(SPEC, data[0], PRE.seed).named_parameters())


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.9])
def test_mask_holds_exactly_rho(data, tmp_path: Path, rho: float) -> None:
    _, private = defend(data, tmp_path, rho=rho)
    mask = load_mask(private / MASK_FILE)
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(rho * total)


def test_frozen_complement_is_bit_identical_to_theta_0(data, tmp_path: Path) -> None:
    release, private = defend(data, tmp_path, rho=0.3)
    mask = load_mask(private / MASK_FILE)
    trained = dict(load_release(release, SPEC)[0].named_parameters())
    init = theta_0(data)
    changed = 0
    for name, m in mask.items():
        assert torch.equal(trained[name].detach()[~m], init[name].detach()[~m]), name
        changed += int((trained[name].detach()[m] != init[name].detach()[m]).sum())
    assert changed > 0  # the ticket did train


def test_projected_complement_respects_the_radius(data, tmp_path: Path) -> None:
    release, private = defend(data, tmp_path, rho=0.3, complement="projected", tau=4,
                              radius=0.5)
    mask = load_mask(private / MASK_FILE)
    trained = dict(load_release(release, SPEC)[0].named_parameters())
    norm = sum(float(trained[n].detach()[~m].pow(2).sum()) for n, m in mask.items()) ** 0.5
    assert norm <= 0.5 + 1e-4
    init_norm = sum(float(p.detach()[~mask[n]].pow(2).sum()) for n, p in theta_0(data).items())
    assert init_norm ** 0.5 > 1.0  # so the projection really shrank it
    stats = json.loads((private / STATS_FILE).read_text())
    assert stats["stage2"]["complement_norm"][0][1] == pytest.approx(init_norm ** 0.5, rel=1e-4)
    log = PMP().build_log(private)
    norms = [(r["step"], r["value"]) for r in log if r["metric"] == "stage2_complement_norm"]
    assert norms == [tuple(p) for p in stats["stage2"]["complement_norm"]]
    losses = [r for r in log if r["metric"] == "stage2_loss"]
    assert [r["step"] for r in losses] == list(range(1, PRE.steps + 1))  # 12 steps: all kept


def test_rewind_is_exact_and_stage_one_is_recorded(data, tmp_path: Path) -> None:
    no_stage_two = PretrainConfig(steps=0, batch_size=4, seq_len=32)
    release, private = defend(data, tmp_path, pre=no_stage_two, rho=0.5, eb_iou=1e-9,
                              eb_patience=2)
    trained = dict(load_release(release, SPEC)[0].named_parameters())
    for name, p in theta_0(data).items():
        assert torch.equal(trained[name].detach(), p.detach()), name  # back to theta_0 exactly
    stage1 = json.loads((private / STATS_FILE).read_text())["stage1"]
    assert stage1["early_bird"] and stage1["stopped_at"] == 3  # IoU rule fired after 2 checks
    assert len(stage1["iou"]) == 2
    log = PMP().build_log(private)  # what the report's build_log figure draws
    assert [(r["step"], r["value"]) for r in log if r["metric"] == "stage1_mask_iou"] == \
        [(2, stage1["iou"][0]), (3, stage1["iou"][1])]
    assert {r["value"] for r in log if r["metric"] == "stage1_mask_iou:threshold"} == {1e-9}
    assert not [r for r in log if r["metric"] == "stage2_loss"]  # no Stage II steps


def test_release_holds_no_mask_and_random_ablation(data, tmp_path: Path) -> None:
    release, private = defend(data, tmp_path / "eb", rho=0.3)
    assert sorted(p.name for p in release.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]
    Release(release, SPEC)  # passes the allow-list an adversary's release must pass
    (private / "mask.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="mask"):
        Release(private, SPEC)  # the adversary API refuses a folder holding private files
    _, random_private = defend(data, tmp_path / "random", rho=0.3, mask="random")
    iou = mask_iou(load_mask(private / MASK_FILE), load_mask(random_private / MASK_FILE))
    assert iou < 0.4  # a random mask of 0.3 overlaps a fixed one by chance (~0.18)


def test_authorized_tuning_moves_only_the_ticket(data, tmp_path: Path) -> None:
    """The owner's hooks (as the harness applies them) keep the complement at its released
    values through weight decay, while the ticket trains."""
    from nftbench.data import corpus_batches
    from nftbench.train import OptimConfig, train

    release, private = defend(data, tmp_path, rho=0.3, complement="projected", tau=4)
    mask = load_mask(private / MASK_FILE)
    model = load_release(release, SPEC)[0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    owner = PMP(PMPConfig()).authorize(private)(model)
    train(model, corpus_batches(data[1], 4, 0), 5, OptimConfig(lr=1e-2, weight_decay=0.5),
          grad_hook=owner.grad_hook, after_step=owner.after_step, progress=False)
    moved = 0
    for name, p in model.named_parameters():
        m = mask[name]
        assert torch.equal(p.detach()[~m], before[name][~m]), name
        moved += int((p.detach()[m] != before[name][m]).sum())
    assert moved > 0.5 * sum(int(m.sum()) for m in mask.values())


def test_update_share_and_fast_topk() -> None:
    from nftbench.masks import global_topk, topk_elements, update_share

    scores = {"a": torch.tensor([[0.5, 3.0], [1.0, -2.0]]), "b": torch.tensor([0.5, 0.5, 7.0])}
    mask = global_topk(scores, 3 / 7)
    assert mask["a"].tolist() == [[False, True], [True, False]]
    assert mask["b"].tolist() == [False, False, True]
    x = torch.randn(50_000)
    x[:5000] = 0.125  # many ties at the threshold
    for k in (0, 1, 4_999, 25_000, 49_999, 50_000):
        chosen = topk_elements(x, k)
        assert int(chosen.sum()) == k
        if 0 < k < len(x):
            assert x[chosen].min() >= x[~chosen].max()
    update = {"a": torch.tensor([[0.0, 3.0], [4.0, 0.0]]), "b": torch.zeros(3)}
    assert update_share(update, mask) == pytest.approx(1.0)
    update["b"] = torch.tensor([5.0, 0.0, 0.0])
    assert update_share(update, mask) == pytest.approx(25 / 50)
    assert update_share({"a": torch.zeros(2, 2)}, mask) is None


SEEN: list[dict] = []


@register_adversary("test_context_probe", version="1")
class ContextProbe(FullFineTune):
    """Test-only: full fine-tuning that records what its context holds."""

    owner_recipe = False

    def attack(self, release, examples, ctx):
        SEEN.append({"authorization": ctx.authorization, "release": sorted(
            p.name for p in release.path.iterdir()),
            "paths": [k for k, v in vars(ctx).items() if isinstance(v, Path)]})
        return super().attack(release, examples, ctx)


def test_matrix_with_pmp_authorized_rows_and_update_share(tiny_raw, tmp_path: Path) -> None:
    tiny_raw["defenses"] = ["none", {"name": "pmp", "params": {"rho": 0.3, "eb_max_steps": 3}}]
    tiny_raw["adversaries"] = [{"name": "full_ft", "params": {"steps": 3, "batch_size": 4}},
                               {"name": "lora", "params": {"steps": 3, "batch_size": 4}},
                               {"name": "test_context_probe",
                                "params": {"steps": 1, "batch_size": 4}}]
    SEEN.clear()
    outcome = Runner(resolve(tiny_raw)).run()
    assert not outcome.failed
    r = outcome.results
    owner = r[r.authorized.astype(bool)]
    # the owner runs plain fine-tuning only, and only on the release with a mask
    assert set(owner.release) == {"pmp"} and set(owner.adversary) == {"full_ft"}
    assert (owner.metric == "score").sum() == 2  # budget points 0 and T of one seed
    share = r[(r.metric == "update_share_ticket") & ~r.authorized.astype(bool)]
    assert set(share.release) == {"pmp"}
    assert set(share.adversary) == {"full_ft", "lora", "test_context_probe"}
    assert share.value.between(0, 1).all()
    assert r[r.metric == "ticket_fraction"].value.between(0.2999, 0.3001).all()
    owned = r[r.authorized.astype(bool) & (r.metric == "update_share_ticket")]
    assert owned.value.tolist() == [pytest.approx(1.0)]  # the owner moves only the ticket
    # every attack's context: no authorization, no path, a release without private files
    assert len(SEEN) == 3 and all(s["authorization"] is None and not s["paths"] for s in SEEN)
    assert all("mask.safetensors" not in s["release"] for s in SEEN)
    # attack metrics never read the owner's rows
    board = leaderboard(r)
    attack = curves(r)
    pmp_ft = board[(board.defense == "pmp") & (board.adversary == "full_ft")]
    last = attack[(attack.release == "pmp") & (attack.adversary == "full_ft")
                  & (attack.step == 3)]
    assert pmp_ft.final_score.iloc[0] == pytest.approx(last.value.mean())
    table = authorized_table(r)
    assert table[["defense", "recipe"]].values.tolist() == [["pmp", "full_ft"]]


def test_stage_one_runs_at_the_pretraining_rate_unless_told(data, tmp_path: Path) -> None:
    _, private = defend(data, tmp_path / "default", rho=0.5)
    assert json.loads((private / STATS_FILE).read_text())["stage1"]["lr"] == PRE.optim().lr
    _, private = defend(data, tmp_path / "override", rho=0.5, eb_lr=2e-5)
    assert json.loads((private / STATS_FILE).read_text())["stage1"]["lr"] == 2e-5


def test_ties_do_not_depend_on_position() -> None:
    """Half of the elements score zero (say, rows of tokens absent from the micro-batch) and the
    top-k must take half of those: by position it takes the first ones; with the random
    priority it takes them evenly from the whole range."""
    from nftbench.defenses.pmp import select_mask

    scores = {"embed": torch.cat([torch.rand(1000) + 1, torch.zeros(1000)]).view(200, 10)}
    cfg = PMPConfig(rho=0.75)
    by_position = select_mask(scores, cfg, set())["embed"].flatten()[1000:]
    assert by_position[:500].all() and not by_position[500:].any()
    priority = {"embed": torch.rand(200, 10, generator=torch.Generator().manual_seed(0))}
    drawn = select_mask(scores, cfg, set(), priority)["embed"].flatten()
    assert drawn[:1000].all() and int(drawn.sum()) == 1500  # the scored elements first
    tied = drawn[1000:]
    assert 200 <= int(tied[:500].sum()) <= 300 and 200 <= int(tied[500:].sum()) <= 300
    assert torch.equal(select_mask(scores, cfg, set(), priority)["embed"].flatten(), drawn)
    per_tensor = select_mask(scores, cfg.model_copy(update={"quota": "per_tensor"}), set(),
                             priority)["embed"].flatten()
    assert torch.equal(per_tensor, drawn)


def test_rows_variant_freezes_whole_output_rows(data, tmp_path: Path) -> None:
    from nftbench.defenses.pmp import PMPRows, PMPRowsConfig

    tokenizer, corpus = data
    ctx = DefenseContext(spec=SPEC, tokenizer=tokenizer, corpus=corpus, pretrain=PRE, base=None,
                         restricted={}, release_dir=tmp_path / "release",
                         private_dir=tmp_path / "private", progress=False)
    ctx.private_dir.mkdir(parents=True)
    PMPRows(PMPRowsConfig()).defend(ctx)
    mask = load_mask(ctx.private_dir / MASK_FILE)
    model = init_model(SPEC, tokenizer, PRE.seed)
    linear = {f"{n}.weight": m.out_features for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)}
    assert "lm_head.weight" in linear  # the output head is a linear layer too
    for name, m in mask.items():
        if name in linear:
            rows = m.all(dim=1)
            assert (m.any(dim=1) == rows).all(), name  # a row is frozen whole or not at all
            assert int((~rows).sum()) == max(1, int(linear[name] * 0.3)), name
        else:
            assert m.all(), name  # embeddings and norms train
    trained = dict(load_release(ctx.release_dir, SPEC)[0].named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(trained[name].detach()[~mask[name]], p.detach()[~mask[name]])


def test_named_variants_carry_their_settings() -> None:
    from nftbench.plugins import load_plugins
    from nftbench.registry import DEFENSES

    load_plugins()
    assert DEFENSES.get("pmp").Config().ema is None
    intent = DEFENSES.get("pmp_intent").Config()
    assert (intent.ema, intent.quota, intent.eb_batch_size, intent.exclude) == (
        0.98, "per_tensor", 32, ())
    rows = DEFENSES.get("pmp_rows").Config()
    assert (rows.mask, rows.rho) == ("random_rows", 0.7)


def test_streamed_topk_is_the_sorted_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunked radix select picks exactly what a full stable sort picks: value descending,
    then tie-break priority descending, then position (tensor order, then element), across
    chunk and tensor boundaries, with ties and zeros. (-0.0 ranks just below +0.0 there: the
    select orders the floats' bits, a sort calls them equal.)"""
    from nftbench import masks

    monkeypatch.setattr(masks, "CHUNK", 97)
    gen = torch.Generator().manual_seed(0)
    for trial in range(24):
        shapes = [(int(torch.randint(1, 30, (1,), generator=gen)), 40) for _ in range(3)]
        scores = {f"t{i}": torch.randint(-3, 4, s, generator=gen).float() / 2 if trial % 2
                  else torch.randn(s, generator=gen) for i, s in enumerate(shapes)}
        tiebreak = {n: torch.rand(v.shape, generator=gen) for n, v in scores.items()} \
            if trial % 3 else None
        flat = torch.cat([v.flatten() for v in scores.values()])
        order = torch.arange(flat.numel())
        if tiebreak is not None:
            prio = torch.cat([tiebreak[n].flatten() for n in scores])
            order = order[torch.sort(prio, descending=True, stable=True).indices]
        order = order[torch.sort(flat[order], descending=True, stable=True).indices]
        for fraction in (0.05, 0.5, 0.9):
            k = round(fraction * flat.numel())
            expected = torch.zeros(flat.numel(), dtype=torch.bool)
            expected[order[:k]] = True
            got = masks.global_topk(scores, fraction, tiebreak)
            assert torch.equal(torch.cat([got[n].flatten() for n in scores]), expected)
