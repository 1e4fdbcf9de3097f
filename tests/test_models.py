from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nftbench.api import Release
from nftbench.models import (
    ModelSpec,
    TinyLlamaConfig,
    init_model,
    load_pretrained,
    save_release,
    train_tokenizer,
)
from nftbench.world import World, WorldConfig

SPEC = ModelSpec(tiny=TinyLlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=300))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(World(WorldConfig(n_entities=16, n_documents=300)).documents(), 300)


def test_default_tiny_model_is_about_one_million_parameters(tokenizer) -> None:
    big_tok = train_tokenizer(World(WorldConfig()).documents(), ModelSpec().tiny.vocab_size)
    n = sum(p.numel() for p in init_model(ModelSpec(), big_tok, 0).parameters())
    assert 0.7e6 < n < 1.3e6, n  # 0.8M on the default world (its vocabulary sets the embeddings)


def test_release_reloads_with_plain_from_pretrained(tokenizer, tmp_path: Path) -> None:
    model = init_model(SPEC, tokenizer, seed=0)
    path = save_release(model, tokenizer, tmp_path / "release")
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("kelta lives in paris .", return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0]) == "kelta lives in paris ."
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_release_refuses_foreign_files(tokenizer, tmp_path: Path) -> None:
    path = save_release(init_model(SPEC, tokenizer, 0), tokenizer, tmp_path / "r")
    (path / "mask.bin").write_bytes(b"\x00")
    with pytest.raises(ValueError, match=r"mask\.bin"):
        Release(path, SPEC)


def test_local_hub_style_model_loads_through_auto_classes(tokenizer, tmp_path: Path) -> None:
    """The real path (any hub id or local folder) is the same code as for a hub model."""
    src = save_release(init_model(SPEC, tokenizer, 1), tokenizer, tmp_path / "local_model")
    spec = ModelSpec(name_or_path=str(src))
    model = load_pretrained(spec)
    scratch = init_model(spec, tokenizer, 2)  # random init of the same architecture
    assert type(model) is type(scratch)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in scratch.parameters())


def test_missing_local_model_folder_is_refused() -> None:
    with pytest.raises(ValueError, match="local model folder not found"):
        ModelSpec(name_or_path="./does/not/exist")


def test_init_is_deterministic_per_seed(tokenizer) -> None:
    a, b, c = (init_model(SPEC, tokenizer, s) for s in (0, 0, 1))
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
