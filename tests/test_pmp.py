"""PMP: exact mask ratio, frozen complement bit-identical to theta_0, projected complement within
its radius, exact rewind, and a release that holds no mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from defenses.pmp import PMP, STATS_FILE, PMPConfig
from nftbench.api import DefenseContext, Release
from nftbench.config import PretrainConfig
from nftbench.data import pack_corpus
from nftbench.masks import MASK_FILE, load_mask, mask_iou
from nftbench.models import ModelSpec, TinyLlamaConfig, init_model, load_release, train_tokenizer
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
