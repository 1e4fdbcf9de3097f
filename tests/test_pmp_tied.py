"""PMP on tied input/output embeddings and on every architecture's module types: a tied table
is one tensor under two names, masked, counted, re-initialized and diagnosed once; `exclude`
and `pmp_rows` pick modules by type, never by one family's names; FLOPs count lookups out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors import safe_open
from test_architectures import ARCHITECTURES, WORLD, local_model

from nftbench.api import DefenseContext
from nftbench.config import PretrainConfig
from nftbench.data import corpus_batches, pack_corpus
from nftbench.defenses.pmp import PMP, STATS_FILE, PMPConfig, TicketHooks
from nftbench.masks import MASK_FILE, load_mask, mask_iou, update_share
from nftbench.models import (
    ModelSpec,
    TinyLlamaConfig,
    init_model,
    load_release,
    load_tokenizer,
    train_tokenizer,
    weight_update,
)
from nftbench.train import OptimConfig, train
from nftbench.world import World

TINY = TinyLlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, vocab_size=300)
TIED = ModelSpec(tiny=TINY.model_copy(update={"tie_word_embeddings": True}))
PRE = PretrainConfig(steps=6, batch_size=4, seq_len=32)
TIED_ARCHS = ("tiny", "gpt2", "gemma")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(World(WORLD).documents(), 300)


@pytest.fixture(scope="module")
def specs(tokenizer, tmp_path_factory) -> dict[str, ModelSpec]:
    """The tied tiny Llama and a local folder of every architecture of test_architectures."""
    root = tmp_path_factory.mktemp("archs")
    out = {"tiny": TIED}
    for arch in ARCHITECTURES:
        out[arch] = ModelSpec(name_or_path=str(local_model(arch, tokenizer, root / arch)))
    return out


def tok_of(spec: ModelSpec, tokenizer):
    return tokenizer if spec.is_tiny else load_tokenizer(spec)


def defend(spec: ModelSpec, tokenizer, folder: Path, plugin: PMP | None = None) -> Path:
    tok = tok_of(spec, tokenizer)
    ctx = DefenseContext(spec=spec, tokenizer=tok, pretrain=PRE, base=None, restricted={},
                         corpus=pack_corpus(World(WORLD).documents(), tok, PRE.seq_len),
                         release_dir=folder / "release", private_dir=folder / "private",
                         progress=False)
    ctx.private_dir.mkdir(parents=True)
    (plugin or PMP(PMPConfig(rho=0.3, eb_max_steps=3))).defend(ctx)
    return folder


def table_names(model: torch.nn.Module) -> list[str]:
    """Every name under which the input embedding table is reachable."""
    table = model.get_input_embeddings().weight
    return [n for n, p in model.named_parameters(remove_duplicate=False) if p is table]


@pytest.mark.parametrize("arch", TIED_ARCHS)
def test_a_tied_table_is_masked_once_and_reinitialized_alike_under_both_names(
        arch, specs, tokenizer, tmp_path) -> None:
    spec = specs[arch]
    folder = defend(spec, tokenizer, tmp_path)
    mask = load_mask(folder / "private" / MASK_FILE)
    model = load_release(folder / "release", spec)[0]
    names = table_names(model)
    assert len(names) == 2  # the architecture does tie: embedding and head
    assert len(set(names) & mask.keys()) == 1  # one entry for the one tensor
    unique = {id(p): p for p in model.parameters()}
    assert len(mask) == len(unique)
    total = sum(p.numel() for p in unique.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(0.3 * total)
    stats = json.loads((folder / "private" / STATS_FILE).read_text())
    assert stats["total_fraction"] == round(0.3 * total) / total
    with safe_open(str(folder / "release" / "model.safetensors"), "pt") as f:
        assert len(set(names) & set(f.keys())) == 1  # saved once
    # the complement is theta_0 under both names; the ticket trained
    init = init_model(spec, tok_of(spec, tokenizer), PRE.seed)
    m = mask[next(iter(set(names) & mask.keys()))]
    theta_0 = init.get_input_embeddings().weight.detach()
    for view in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        assert torch.equal(view.detach()[~m], theta_0[~m])
        assert (view.detach()[m] != theta_0[m]).any()


@pytest.mark.parametrize("arch", TIED_ARCHS)
def test_the_owners_step_moves_only_the_masked_elements_of_a_tied_table(
        arch, specs, tokenizer, tmp_path) -> None:
    spec = specs[arch]
    folder = defend(spec, tokenizer, tmp_path)
    mask = load_mask(folder / "private" / MASK_FILE)
    model = load_release(folder / "release", spec)[0]
    name = next(iter(set(table_names(model)) & mask.keys()))
    m = mask[name]
    before = model.get_input_embeddings().weight.detach().clone()
    owner = PMP(PMPConfig()).authorize(folder / "private")(model)
    tok = tok_of(spec, tokenizer)
    corpus = pack_corpus(World(WORLD).documents(), tok, PRE.seq_len)
    train(model, corpus_batches(corpus, 4, 0), 3, OptimConfig(lr=1e-2, weight_decay=0.5),
          grad_hook=owner.grad_hook, after_step=owner.after_step, progress=False)
    for view in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        assert torch.equal(view.detach()[~m], before[~m])
        assert (view.detach()[m] != before[m]).float().mean() > 0.5


def test_a_mask_names_a_tied_tensor_by_either_name_and_only_consistently(tokenizer) -> None:
    """A mask keyed by the head's name (how a tool reading the state dict may key it) holds the
    table as well as one keyed by the embedding's; two names with two masks, or a name the
    model does not have, are refused rather than silently left dense."""
    model = init_model(TIED, tokenizer, 0)
    table = model.get_input_embeddings().weight
    keep = torch.rand(table.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    others = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
              if p is not table}
    before = table.detach().clone()
    hooks = TicketHooks(model, others | {"lm_head.weight": keep})
    model(**{"input_ids": torch.arange(20).view(2, 10), "labels": torch.arange(20).view(2, 10)}
          ).loss.backward()
    hooks.grad_hook()
    assert torch.equal(table.grad[~keep], torch.zeros_like(table.grad[~keep]))
    with torch.no_grad():
        table.add_(1.0)
    hooks.after_step(1)
    assert torch.equal(table.detach()[~keep], before[~keep])  # once, not twice
    assert torch.equal(table.detach()[keep], before[keep] + 1.0)
    both = others | {"lm_head.weight": keep, "model.embed_tokens.weight": keep}
    TicketHooks(model, both)  # consistent entries are fine
    with pytest.raises(ValueError, match=r"lm_head\.weight"):
        TicketHooks(model, both | {"lm_head.weight": ~keep})
    with pytest.raises(ValueError, match="no_such"):
        TicketHooks(model, others | {"no_such.weight": keep})


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_weight_update_names_every_parameter_as_the_mask_does(arch, specs, tokenizer) -> None:
    """Diagnostics line up: the update is keyed by the model's parameter names (a tied table
    once, under the name the mask uses), whatever names the safetensors file holds."""
    folder = Path(specs[arch].name_or_path)
    model = tf.AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(float(i + 1))
    update = weight_update(model, folder)
    names = [n for n, _ in model.named_parameters()]
    assert list(update) == names
    for i, n in enumerate(names):
        assert torch.allclose(update[n], torch.full_like(update[n], float(i + 1))), n
    mask = {n: torch.ones_like(d, dtype=torch.bool) for n, d in update.items()}
    table = table_names(model)[0]
    mask[table] = torch.zeros_like(mask[table])
    on = sum(float(d.pow(2).sum()) for n, d in update.items() if n != table)
    assert update_share(update, mask) == pytest.approx(
        on / sum(float(d.pow(2).sum()) for d in update.values()))


def test_a_guess_keyed_by_the_head_scores_the_tied_table(specs, tokenizer, tmp_path) -> None:
    """The mask-recovery IoU counts the table once, whichever of its names the guess uses."""
    from nftbench.api import AttackOutcome
    from nftbench.masks import attack_diagnostics

    folder = defend(specs["tiny"], tokenizer, tmp_path)
    mask = load_mask(folder / "private" / MASK_FILE)
    model = load_release(folder / "release", TIED)[0]
    table = "model.embed_tokens.weight"
    # right everywhere but on the table, which it names by the head's name and gets all wrong
    guess = {("lm_head.weight" if n == table else n): (~m if n == table else m)
             for n, m in mask.items()}
    outcome = AttackOutcome(release=folder / "release", model=model, guesses={"mask": guess},
                            result=None)
    right = sum(int(m.sum()) for n, m in mask.items() if n != table)
    expected = right / (right + mask[table].numel())
    assert attack_diagnostics(mask, outcome)["mask_iou"] == pytest.approx(expected)
    assert mask_iou(guess, mask) == 1.0  # without the model the table's entry is not seen
