"""Every common causal-LM architecture through the whole pipeline, on random local folders
(no hub here: the same code paths as real weights). Per architecture: pre-training a few steps
on the world corpus, then none / pmp / sophon x full_ft / lora / qlora / mask_recovery / reinit,
scored through lm-eval; and LoRA adapts every linear layer whatever the architecture names it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from transformers.pytorch_utils import Conv1D

from nftbench.adversaries.lora import LoraAttackConfig
from nftbench.config import resolve
from nftbench.engine import Runner
from nftbench.models import train_tokenizer
from nftbench.world import World, WorldConfig

H, LAYERS, HEADS, FFN = 32, 2, 4, 64
WORLD = WorldConfig(n_entities=24, n_documents=300)
#: a small config of each family, as its own transformers class (random weights)
ARCHITECTURES: dict[str, Any] = {
    "llama": lambda v: tf.LlamaConfig(vocab_size=v, hidden_size=H, num_hidden_layers=LAYERS,
                                      num_attention_heads=HEADS, intermediate_size=FFN),
    "qwen2": lambda v: tf.Qwen2Config(vocab_size=v, hidden_size=H, num_hidden_layers=LAYERS,
                                      num_attention_heads=HEADS, num_key_value_heads=2,
                                      intermediate_size=FFN),
    "mistral": lambda v: tf.MistralConfig(vocab_size=v, hidden_size=H, num_hidden_layers=LAYERS,
                                          num_attention_heads=HEADS, num_key_value_heads=2,
                                          intermediate_size=FFN),
    "gemma": lambda v: tf.GemmaConfig(vocab_size=v, hidden_size=H, num_hidden_layers=LAYERS,
                                      num_attention_heads=HEADS, num_key_value_heads=1,
                                      intermediate_size=FFN, head_dim=8),
    "gpt_neox": lambda v: tf.GPTNeoXConfig(vocab_size=v, hidden_size=H,
                                           num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                           intermediate_size=FFN),
    "gpt2": lambda v: tf.GPT2Config(vocab_size=v, n_embd=H, n_layer=LAYERS, n_head=HEADS,
                                    n_positions=256),
    "phi3": lambda v: tf.Phi3Config(vocab_size=v, hidden_size=H, num_hidden_layers=LAYERS,
                                    num_attention_heads=HEADS, intermediate_size=FFN,
                                    pad_token_id=0),
    "opt": lambda v: tf.OPTConfig(vocab_size=v, hidden_size=H, num_hidden_layers=LAYERS,
                                  num_attention_heads=HEADS, ffn_dim=FFN,
                                  word_embed_proj_dim=H),
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(World(WORLD).documents(), 300)


def local_model(arch: str, tokenizer, folder: Path) -> Path:
    """A random-initialised model of ``arch`` saved as a hub-style local folder."""
    cfg = ARCHITECTURES[arch](len(tokenizer))
    cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_lora_adapts_every_linear_layer_by_the_architectures_own_names(arch, tokenizer,
                                                                        tmp_path) -> None:
    from peft import get_peft_model

    model = tf.AutoModelForCausalLM.from_pretrained(local_model(arch, tokenizer, tmp_path))
    head = model.get_output_embeddings()
    linears = {n for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear | Conv1D) and m is not head}
    adapted = get_peft_model(model, LoraAttackConfig().lora())
    with_adapter = {n.removeprefix("base_model.model.") for n, m in adapted.named_modules()
                    if hasattr(m, "lora_A")}
    assert linears and with_adapter == linears


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_whole_pipeline_runs_on(arch, tokenizer, tmp_path) -> None:
    folder = local_model(arch, tokenizer, tmp_path / "model")
    raw = {"name": arch, "output_dir": str(tmp_path / "run"),
           "model": {"name_or_path": str(folder)}, "world": WORLD.model_dump(),
           "pretrain": {"steps": 2, "batch_size": 4, "seq_len": 32},
           "defenses": ["none", {"name": "pmp", "params": {"rho": 0.5, "eb_max_steps": 2}},
                        {"name": "sophon", "params": {
                            "outer_steps": 1, "inner_steps": 1, "query_batch": 4,
                            "ntr_batch": 4, "test_steps": 0, "guard": None, "n_strategies": 1,
                            "strategies": [{"optimizer": "sgd", "lr": 1e-3, "batch_size": 4}]}}],
           "adversaries": [{"name": name, "params": {"steps": 1, "batch_size": 4}}
                           for name in ("full_ft", "lora", "qlora", "mask_recovery", "reinit")],
           "tasks": ["recall_city", "qa_city"], "seeds": [0],
           "eval": {"budget_points": 2, "batch_size": 16}}
    outcome = Runner(resolve(raw), progress=False, executor="sequential").run()
    assert not outcome.failed, [(s.label, s.reason) for s in outcome.failed]
    r = outcome.results
    scores = r[(r.role == "restricted") & (r.metric == "score")]
    assert set(scores.release) == {"none", "pmp", "sophon", "scratch"}
    assert set(scores.adversary) == {"full_ft", "lora", "qlora", "mask_recovery", "reinit"}
    assert scores.value.between(0, 1).all()
