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
from transformers.pytorch_utils import Conv1D

from nftbench.api import DefenseContext
from nftbench.config import PretrainConfig
from nftbench.data import corpus_batches, pack_corpus
from nftbench.defenses.pmp import PMP, STATS_FILE, PMPConfig, PMPRows, PMPRowsConfig, TicketHooks
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
from nftbench.train import OptimConfig, count_matmul_params, train
from nftbench.world import World

TINY = TinyLlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, vocab_size=300)
TIED = ModelSpec(tiny=TINY.model_copy(update={"tie_word_embeddings": True}))
PRE = PretrainConfig(steps=6, batch_size=4, seq_len=32)
TIED_ARCHS = ("tiny", "gpt2", "gemma", "qwen2_tied")


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
    # Qwen2 as Qwen2.5-0.5B's config has it: input and output embeddings tied
    config = tf.AutoConfig.from_pretrained(out["qwen2"].name_or_path, tie_word_embeddings=True)
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(root / "qwen2_tied")
    load_tokenizer(out["qwen2"]).save_pretrained(root / "qwen2_tied")
    out["qwen2_tied"] = ModelSpec(name_or_path=str(root / "qwen2_tied"))
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


# -- exclude and pmp_rows by module type ------------------------------------------------------

#: what `exclude` keeps dense, per architecture: every embedding lookup (token and learned
#: position tables) and the output head; every normalization layer, weight and bias
EMBEDDINGS = {
    "llama": {"model.embed_tokens.weight", "lm_head.weight"},
    "qwen2": {"model.embed_tokens.weight", "lm_head.weight"},
    "mistral": {"model.embed_tokens.weight", "lm_head.weight"},
    "phi3": {"model.embed_tokens.weight", "lm_head.weight"},
    "gemma": {"model.embed_tokens.weight"},  # tied: the head is this tensor
    "gpt_neox": {"gpt_neox.embed_in.weight", "lm_head.weight"},
    "gpt2": {"transformer.wte.weight", "transformer.wpe.weight"},
    "opt": {"model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight"},
}


def names_of(model: torch.nn.Module, types: tuple[type, ...]) -> set[str]:
    """The parameter names (``named_parameters``'s: a tied tensor under its first name) of the
    modules of these types."""
    ids = {id(p) for m in model.modules() if isinstance(m, types) for p in m.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def old_name_rule(name: str, param: torch.Tensor, exclude: tuple[str, ...]) -> bool:
    """The former rule, by Llama's names (kept here to show Llama's choice is unchanged)."""
    if "embeddings" in exclude and ("embed_tokens" in name or "lm_head" in name):
        return True
    return "norms" in exclude and param.dim() == 1 and "norm" in name


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_exclude_picks_embeddings_and_norms_by_module_type(arch, specs) -> None:
    from nftbench.defenses.pmp import exempt

    model = tf.AutoModelForCausalLM.from_pretrained(specs[arch].name_or_path)
    embeddings = exempt(model, ("embeddings",))
    norms = exempt(model, ("norms",))
    assert embeddings == EMBEDDINGS[arch]
    norm_types = (torch.nn.LayerNorm, *{type(m) for m in model.modules()
                                        if type(m).__name__.endswith("RMSNorm")})
    assert norms == names_of(model, norm_types)
    assert len(norms) >= 5  # two blocks of two norms and a final one
    # what is left is exactly the linear layers (and their biases)
    linear = names_of(model, (torch.nn.Linear, Conv1D))
    left = {n for n, _ in model.named_parameters()} - exempt(model, ("embeddings", "norms"))
    assert left == linear - embeddings
    if arch in ("llama", "qwen2", "mistral", "phi3", "gemma"):  # unchanged on Llama's names
        for exclude in [("embeddings",), ("norms",), ("embeddings", "norms")]:
            assert exempt(model, exclude) == {n for n, p in model.named_parameters()
                                              if old_name_rule(n, p, exclude)}


@pytest.mark.parametrize("arch", ["gpt2", "opt"])
def test_excluded_tables_train_densely_and_rho_applies_to_the_rest(arch, specs, tokenizer,
                                                                    tmp_path) -> None:
    from nftbench.defenses.pmp import exempt

    spec = specs[arch]
    plugin = PMP(PMPConfig(rho=0.3, eb_max_steps=3, exclude=("embeddings", "norms")))
    folder = defend(spec, tokenizer, tmp_path, plugin)
    mask = load_mask(folder / "private" / MASK_FILE)
    model = load_release(folder / "release", spec)[0]
    skip = exempt(model, ("embeddings", "norms"))
    assert skip >= EMBEDDINGS[arch]
    assert all(mask[n].all() for n in skip)
    rest = sum(mask[n].numel() for n in mask if n not in skip)
    assert sum(int(mask[n].sum()) for n in mask if n not in skip) == round(0.3 * rest)


@pytest.mark.parametrize("arch", TIED_ARCHS)
def test_rows_variant_freezes_output_rows_of_every_linear_layer_tied_head_included(
        arch, specs, tokenizer, tmp_path) -> None:
    """frozen_un.py's rule on any architecture: a Linear's output rows, a Conv1D's (GPT-2)
    output columns, and the tied head's rows (tokens) of the shared table."""
    spec = specs[arch]
    folder = defend(spec, tokenizer, tmp_path, PMPRows(PMPRowsConfig()))
    mask = load_mask(folder / "private" / MASK_FILE)
    model = load_release(folder / "release", spec)[0]
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | Conv1D):
            m = mask[names[id(module.weight)]]
            rows = m.T if isinstance(module, Conv1D) else m  # output units first
            whole = rows.all(dim=1)
            assert (rows.any(dim=1) == whole).all()  # an output unit frozen whole or not
            assert int((~whole).sum()) == max(1, int(rows.shape[0] * 0.3))
            seen.add(names[id(module.weight)])
    table = table_names(model)
    assert set(table) & seen  # the tied head's table is among them
    for n, m in mask.items():
        if n not in seen:
            assert m.all(), n  # biases, norms, position tables train


# -- FLOPs -----------------------------------------------------------------------------------


def analytic_matmul_params(arch: str, vocab: int) -> int:
    """Parameters of matrix multiplications, by hand: every block, the final norm and the
    output head (once, tied or not); no lookup table (token or position)."""
    h, f, layers = 32, 64, 2
    if arch == "tiny":
        h, f, layers = TINY.hidden_size, TINY.intermediate_size, TINY.num_hidden_layers
        return layers * (4 * h * h + 3 * h * f + 2 * h) + h + vocab * h
    if arch == "gpt2":  # c_attn, attn c_proj, c_fc, mlp c_proj (with biases), ln_1, ln_2
        block = (3 * h * h + 3 * h) + (h * h + h) + (4 * h * h + 4 * h) + (4 * h * h + h)
        return layers * (block + 4 * h) + 2 * h + vocab * h
    if arch == "opt":  # q, k, v, out (with biases), fc1, fc2, two LayerNorms
        block = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h
        return layers * block + 2 * h + vocab * h
    if arch == "qwen2_tied":  # q, k, v with biases (2 KV heads of 8), o, gated MLP, norms
        block = (h * h + h) + 2 * (h * 16 + 16) + h * h + 3 * h * f + 2 * h
        return layers * block + h + vocab * h
    if arch == "gemma":  # 4 heads of 8, one KV head of 8, gated MLP, two RMSNorms
        block = h * 32 + 2 * h * 8 + 32 * h + 3 * h * f + 2 * h
        return layers * block + h + vocab * h
    raise ValueError(arch)


@pytest.mark.parametrize("arch", ["tiny", "gpt2", "opt", "gemma", "qwen2_tied"])
def test_flops_per_token_count_a_tied_table_once_as_the_head_and_no_lookup(
        arch, specs, tokenizer) -> None:
    spec = specs[arch]
    tok = tok_of(spec, tokenizer)
    model = init_model(spec, tok, 0)
    n = analytic_matmul_params(arch, model.get_input_embeddings().weight.shape[0])
    assert count_matmul_params(model) == (n, n)
    if arch == "tiny":  # tying moves no matmul: the untied model counts the same
        assert count_matmul_params(init_model(ModelSpec(tiny=TINY), tok, 0)) == (n, n)
    corpus = pack_corpus(World(WORLD).documents(), tok, PRE.seq_len)
    r = train(model, corpus_batches(corpus, 2, 0), 1, OptimConfig(), progress=False)
    assert r.flops == 6 * n * r.tokens


def test_pmp_records_its_cost_with_the_tied_table_counted_once(specs, tokenizer,
                                                               tmp_path) -> None:
    folder = defend(specs["tiny"], tokenizer, tmp_path)
    stats = json.loads((folder / "private" / STATS_FILE).read_text())
    n = analytic_matmul_params("tiny", len(tokenizer))
    for stage in ("stage1", "stage2"):  # every weight gradient is computed, then masked
        assert stats[stage]["flops"] == 6 * n * stats[stage]["tokens"]
