"""LoRA and QLoRA adversaries: adapters train, the base does not, scores come from the adapted
model, and both run inside a matrix."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from nftbench.adversaries.lora import (
    LoraAttack,
    LoraAttackConfig,
    QLoraAttack,
    QLoraAttackConfig,
)
from nftbench.api import AttackContext, Release
from nftbench.cli import main
from nftbench.models import ModelSpec, init_model, save_release, train_tokenizer
from nftbench.registry import ADVERSARIES, describe_config
from nftbench.train import OptimConfig, count_matmul_params, train

# 64 wide: the smallest width at which bitsandbytes' CPU inference repacking (see
# adversaries.lora.keep_4bit_layout) would kick in, so the QLoRA tests exercise it.
SPEC = ModelSpec(tiny={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "intermediate_size": 128, "vocab_size": 64})
EXAMPLES = [{"prompt": f"question : where does person {i} live ? answer :",
             "answer": f"city {i % 4}"} for i in range(16)]
#: linear layers of a tiny Llama block that all-linear adapts: q, k, v, o, gate, up, down
LLAMA_LINEARS = 7


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    texts = [f"{ex['prompt']} {ex['answer']}" for ex in EXAMPLES] * 4
    tokenizer = train_tokenizer(texts, SPEC.tiny.vocab_size)
    # A briefly pre-trained base (counting down): at random init the frozen lm_head is too small
    # for any adapter to make confident predictions.
    model = init_model(SPEC, tokenizer, seed=0)
    train(model, counting_batches(descending=True), 40, OptimConfig(lr=3e-3), progress=False)
    path = tmp_path_factory.mktemp("release")
    save_release(model, tokenizer, path)
    return Release(path, SPEC)


def counting_batches(descending: bool = False):
    """A learnable sequence: 0 1 2 ... 31 (or 31 ... 0), four rows."""
    x = torch.arange(32).repeat(4, 1)
    x = x.flip(1) if descending else x
    while True:
        yield {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}


def adapted(adversary: LoraAttack, release: Release) -> tuple[Any, Any]:
    from peft import get_peft_model

    model, tokenizer = adversary.load(release)
    return get_peft_model(model, adversary.config.lora()), tokenizer


def frozen_and_trained(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    return frozen, trained


def assert_only_adapters_changed(model: torch.nn.Module, frozen: dict[str, torch.Tensor],
                                 trained: list[str], n_targets: int) -> None:
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert len(trained) == 2 * n_targets  # an A and a B per adapted linear layer
    params = dict(model.named_parameters())
    for name, before in frozen.items():
        assert torch.equal(params[name].detach(), before), f"{name} changed"
    assert all(params[n].abs().sum() > 0 for n in trained if ".lora_B." in n)  # B left 0


def test_lora_lowers_the_loss_and_leaves_the_base_bit_identical(release: Release) -> None:
    cfg = LoraAttackConfig(lr=1e-2, dropout=0.0)
    model, _ = adapted(LoraAttack(cfg), release)
    frozen, trained = frozen_and_trained(model)
    r = train(model, counting_batches(), 30, cfg.optim(), progress=False)
    assert r.losses[-1] < 0.3 * r.losses[0]
    n_layers = SPEC.tiny.num_hidden_layers
    assert_only_adapters_changed(model, frozen, trained, LLAMA_LINEARS * n_layers)
    assert frozen  # every base weight, embeddings and lm_head included
    base, _ = release.load()
    assert len(frozen) == len(list(base.parameters()))

    # FLOPs: frozen base forward + backward, adapters 6 per parameter
    n_all, n_train = count_matmul_params(model)
    n_base, _ = count_matmul_params(base)
    assert n_train == sum(p.numel() for n, p in model.named_parameters() if n in trained)
    assert n_all == n_base + n_train
    assert r.flops == pytest.approx((4 * n_all + 2 * n_train) * r.tokens)


def test_lora_scores_the_adapted_model_through_lm_eval(release: Release) -> None:
    """lm-eval's HFLM takes the in-memory PeftModel: at step 0 (adapters at zero) it scores the
    release exactly; after training, the adapters are live in both loglikelihood and generation."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    requests = [Instance("loglikelihood", {}, (ex["prompt"], " " + ex["answer"]), i)
                for i, ex in enumerate(EXAMPLES[:4])]
    generate = [Instance("generate_until", {},
                         (EXAMPLES[0]["prompt"], {"until": ["\n"], "max_gen_toks": 4}), 0)]

    def evaluate(model: Any, tokenizer: Any) -> dict[str, float]:
        with contextlib.redirect_stderr(io.StringIO()):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
            lls = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
            lm.generate_until(generate, disable_tqdm=True)  # runs through the adapters
        return {"ll": sum(lls)}

    ctx = AttackContext(seed=0, evaluate=evaluate, budget_points=lambda steps: [0, steps],
                        progress=False)
    cfg = LoraAttackConfig(steps=20, batch_size=8, lr=1e-2, dropout=0.0)
    result = LoraAttack(cfg).attack(release, EXAMPLES, ctx)
    start, end = (p.scores["ll"] for p in result.points)
    assert start == evaluate(*release.load())["ll"]
    assert end > start + 1.0  # trained on these very answers


def test_lora_config_is_registered_and_documented() -> None:
    for name, cls in (("lora", LoraAttack), ("qlora", QLoraAttack)):
        assert ADVERSARIES.get(name) is cls
        rows = {r["field"]: r for r in describe_config(cls.Config)}
        assert {"lr", "optimizer", "steps", "batch_size", "r", "alpha", "dropout",
                "target_modules"} <= set(rows)
        assert all(r["description"] for r in rows.values())
    lora = {r["field"]: r["default"] for r in describe_config(LoraAttackConfig)}
    assert (lora["r"], lora["alpha"], lora["dropout"], lora["steps"], lora["batch_size"]) == \
        (16, 32, 0.05, 200, 32)
    assert lora["target_modules"] == "all-linear"  # whatever the architecture calls them
    qlora = {r["field"]: r["default"] for r in describe_config(QLoraAttackConfig)}
    assert (qlora["quant_type"], qlora["compute_dtype"]) == ("nf4", "auto")
    assert LoraAttackConfig(target_modules=["q_proj"]).target_modules == ("q_proj",)  # YAML list
    with pytest.raises(ValueError):
        LoraAttackConfig(rank=8)
    with pytest.raises(ValueError):
        LoraAttackConfig(target_modules=[])
    with pytest.raises(ValueError):
        LoraAttackConfig(target_modules="all")
    cpu = torch.device("cpu")
    assert QLoraAttackConfig().torch_compute_dtype(cpu) == torch.float32
    assert QLoraAttackConfig(compute_dtype="bfloat16").torch_compute_dtype(cpu) == torch.bfloat16


def test_qlora_trains_adapters_on_a_4bit_base(release: Release) -> None:
    import bitsandbytes as bnb

    cfg = QLoraAttackConfig(lr=1e-2, dropout=0.0)
    model, _ = adapted(QLoraAttack(cfg), release)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    n_targets = LLAMA_LINEARS * SPEC.tiny.num_hidden_layers
    assert len(quantized) == n_targets  # every block projection; lm_head stays dense
    for layer in quantized:
        assert isinstance(layer.weight, bnb.nn.Params4bit)
        assert layer.weight.dtype == torch.uint8 and layer.weight.quant_state.quant_type == "nf4"
    frozen, trained = frozen_and_trained(model)
    # evaluations at budget points (eval mode, no grad) must not change what training does
    r = train(model, counting_batches(), 30, cfg.optim(), eval_at=[0, 10, 20],
              on_eval=lambda step: {}, progress=False)
    assert r.losses[-1] < 0.3 * r.losses[0]
    assert_only_adapters_changed(model, frozen, trained, n_targets)


def test_qlora_gradients_are_the_same_after_an_evaluation(release: Release) -> None:
    """bitsandbytes repacks 4-bit weights for CPU inference on the first no-grad eval-mode
    forward, after which no gradient flows through the base; the adversary turns that off."""
    model, _ = adapted(QLoraAttack(QLoraAttackConfig(dropout=0.0)), release)
    with torch.no_grad():  # non-zero B, so every adapter gets a gradient
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.1)
    batch = next(counting_batches())

    def grads() -> dict[str, torch.Tensor | None]:
        model.train()
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    before = grads()
    model.eval()
    with torch.no_grad():
        model(**batch)
    after = grads()
    for name, g in before.items():
        assert g is not None and after[name] is not None, name
        torch.testing.assert_close(after[name], g)


def test_qlora_flops_count_the_logical_base_size(release: Release) -> None:
    lora, _ = adapted(LoraAttack(LoraAttackConfig()), release)
    qlora, _ = adapted(QLoraAttack(QLoraAttackConfig()), release)
    assert count_matmul_params(qlora) == count_matmul_params(lora)


def test_lora_and_qlora_run_in_a_matrix(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    # qa_color is scored by log-likelihood, so step-0 agreement is not the trivial 0 == 0
    tiny_raw["tasks"] = ["qa_color"]
    tiny_raw["world"]["n_entities"] = 64
    tiny_raw["adversaries"] = [
        {"name": name, "params": {"steps": 4, "batch_size": 4}}
        for name in ("full_ft", "lora", "qlora")]
    # a list-typed field given one list is a value, not a sweep
    tiny_raw["adversaries"][2]["params"]["target_modules"] = ["q_proj", "v_proj"]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(path), "--quiet"]) == 0
    results = pd.read_parquet(Path(tiny_raw["output_dir"]) / "results.parquet")
    scores = results[(results.role == "restricted") & (results.metric == "score")]
    assert set(scores.status) == {"ok"}
    assert set(scores.adversary) == {"full_ft", "lora", "qlora"}
    for adversary in ("lora", "qlora"):
        for release_name in ("none", "scratch"):
            curve = scores[(scores.adversary == adversary) & (scores.release == release_name)]
            assert curve.step.tolist() == [0, 4] and set(curve.task) == {"qa_color"}
            assert curve.value.between(0, 1).all()
            assert curve.flops.iloc[1] > 0
    at_zero = scores[(scores.step == 0) & (scores.release == "none")].set_index("adversary")
    assert at_zero.value["lora"] == at_zero.value["full_ft"] > 0  # the release, unchanged
