"""How the one training loop runs on the machine (``compute``): micro-batches, gradient
checkpointing, bf16 autocast, torch.compile, TF32; and the stage keys they enter."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from nftbench.config import load_config
from nftbench.data import IGNORE
from nftbench.engine import Runner
from nftbench.train import (
    ComputeConfig,
    OptimConfig,
    checkpointed_matmul_params,
    count_matmul_params,
    is_checkpointing,
    micro_batches,
    train,
)


def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, max_position_embeddings=32))


def uneven_batches():
    """Fine-tuning-like batches: a prompt, then answers of 1 to 6 labelled tokens, right-padded,
    so micro-batches hold very different numbers of labelled tokens."""
    gen = torch.Generator().manual_seed(0)
    while True:
        x = torch.randint(1, 32, (8, 12), generator=gen)
        labels = torch.full_like(x, IGNORE)
        mask = torch.ones_like(x)
        for r in range(8):
            n = 1 + r % 6
            labels[r, 4:4 + n] = x[r, 4:4 + n]
            mask[r, 4 + n:] = 0
        yield {"input_ids": x, "attention_mask": mask, "labels": labels}


def one_batch():
    """The same batch every step: a model can learn it."""
    batch = next(uneven_batches())
    while True:
        yield batch


def run(compute: ComputeConfig, steps: int = 5, batches=uneven_batches
        ) -> tuple[Any, LlamaForCausalLM]:
    m = model()
    r = train(m, batches(), steps, OptimConfig(lr=1e-2), compute=compute, progress=False)
    return r, m


def weights(m: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_micro_batches_weight_by_labelled_tokens() -> None:
    batch = next(uneven_batches())
    parts = micro_batches(batch, 3)
    assert [p["input_ids"].shape[0] for p, _ in parts] == [3, 3, 2]
    labelled = [int((p["labels"][:, 1:] != IGNORE).sum()) for p, _ in parts]
    assert [w for _, w in parts] == pytest.approx([n / sum(labelled) for n in labelled])
    assert micro_batches(batch, None) == [(batch, 1.0)] == micro_batches(batch, 8)


def test_gradient_accumulation_is_the_full_batch_step() -> None:
    full, m_full = run(ComputeConfig())
    split, m_split = run(ComputeConfig(micro_batch_size=3))
    # the same steps up to float reassociation, and the same FLOPs and tokens
    assert split.losses == pytest.approx(full.losses, rel=1e-5)
    assert torch.allclose(weights(m_split), weights(m_full), atol=1e-5)
    assert (split.tokens, split.flops) == (full.tokens, full.flops)
    # the test can fail: averaging the micro-batches' mean losses equally is a different step
    batch = next(uneven_batches())
    m = model()
    with torch.no_grad():
        naive = sum(m(**p).loss for p, _ in micro_batches(batch, 3)) / 3
        weighted = sum(m(**p).loss * w for p, w in micro_batches(batch, 3))
        whole = m(**batch).loss
    assert float(weighted) == pytest.approx(float(whole), rel=1e-6)
    assert abs(float(naive) - float(whole)) > 1e-3
    # one micro-batch per step is the unsplit loop, bit for bit
    same, m_same = run(ComputeConfig(micro_batch_size=8))
    assert same.losses == full.losses and torch.equal(weights(m_same), weights(m_full))


def test_gradient_checkpointing_recomputes_the_same_numbers() -> None:
    plain, m_plain = run(ComputeConfig())
    ckpt, m_ckpt = run(ComputeConfig(gradient_checkpointing=True))
    assert ckpt.losses == plain.losses and torch.equal(weights(m_ckpt), weights(m_plain))
    assert ckpt.flops == plain.flops  # the model's FLOPs do not grow ...
    blocks = checkpointed_matmul_params(m_ckpt)  # ... the recomputed forward is counted apart
    n_all, _ = count_matmul_params(m_ckpt)
    assert 0 < blocks < n_all  # the blocks, not the head
    assert ckpt.recompute_flops == pytest.approx(2 * blocks * ckpt.tokens)
    assert plain.recompute_flops == 0
    assert not is_checkpointing(m_ckpt) and m_ckpt.config.use_cache  # released as it was


def test_bf16_autocast_keeps_fp32_master_weights() -> None:
    fp32, _ = run(ComputeConfig(), steps=20, batches=one_batch)
    bf16, m16 = run(ComputeConfig(precision="bf16"), steps=20, batches=one_batch)
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    assert bf16.losses != fp32.losses  # bf16 arithmetic did run
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], rel=2e-2)
    assert bf16.losses[-1] < 0.5 * bf16.losses[0]  # and it learns the batch


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C compiler")
def test_compile_trains_like_eager() -> None:
    eager, m_eager = run(ComputeConfig(), steps=3)
    compiled, m_compiled = run(ComputeConfig(compile=True), steps=3)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    assert torch.allclose(weights(m_compiled), weights(m_eager), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tf32_and_bf16_on_the_gpu() -> None:
    device = torch.device("cuda")
    ComputeConfig(tf32=True).apply(device)
    assert torch.backends.cuda.matmul.allow_tf32
    ComputeConfig(tf32=False).apply(device)
    assert not torch.backends.cuda.matmul.allow_tf32
    m = model().to(device)
    r = train(m, one_batch(), 20, OptimConfig(lr=1e-2),
              compute=ComputeConfig(precision="bf16", micro_batch_size=4,
                                    gradient_checkpointing=True), progress=False)
    assert r.losses[-1] < 0.8 * r.losses[0]
    assert torch.cuda.max_memory_allocated() > 0


def test_compute_enters_training_keys_only_away_from_defaults(tiny_raw: dict[str, Any],
                                                                tmp_path: Path) -> None:
    def keys(raw: dict[str, Any]) -> dict[tuple[str, str], str]:
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump(raw))
        plan = Runner(load_config(path), progress=False, executor="sequential").plan
        return {(j.kind, j.label): j.key for j in plan}

    base = keys(tiny_raw)
    explicit = copy.deepcopy(tiny_raw)
    explicit["compute"] = {"precision": "fp32", "micro_batch_size": None, "tf32": True}
    assert keys(explicit) == base  # defaults written out move nothing
    changed = copy.deepcopy(tiny_raw)
    changed["compute"] = {"micro_batch_size": 2}
    moved = keys(changed)
    for (kind, label), key in base.items():
        if kind in ("pretrain", "defend", "attack"):  # the stages that train
            assert moved[kind, label] != key, (kind, label)
        elif kind in ("tokenizer", "scratch"):  # no training in them
            assert moved[kind, label] == key, (kind, label)
    assert {kind for kind, _ in base} >= {"tokenizer", "pretrain", "defend", "scratch", "attack"}


def test_a_matrix_runs_with_accumulation_and_checkpointing(tiny_raw: dict[str, Any],
                                                            tmp_path: Path) -> None:
    import json

    from nftbench.cli import main

    tiny_raw["compute"] = {"micro_batch_size": 2, "gradient_checkpointing": True}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(path), "--quiet"]) == 0
    curves = list(Path(tiny_raw["output_dir"], "store", "attack").rglob("curve.json"))
    assert curves
    for curve in map(json.loads, (c.read_text() for c in curves)):
        assert curve["recompute_flops"] > 0 and curve["flops"] > curve["recompute_flops"]
    # every computed stage recorded its own peak memory, and a rerun reads it from the store
    run = Path(tiny_raw["output_dir"])
    first = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(s["peak_mem_mb"] > 0 and s["start_mem_mb"] > 0 for s in first)
    assert main(["run", str(path), "--quiet"]) == 0
    again = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(s["cached"] for s in again)
    assert [s["peak_mem_mb"] for s in again] == [s["peak_mem_mb"] for s in first]
