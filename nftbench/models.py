"""Model specs: the embedded tiny Llama or any Hugging Face causal LM (hub id or local path).

A *release* is a directory that plain ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` reload: safetensors weights, ``config.json``,
``generation_config.json`` and the tokenizer files, and nothing else (see ``RELEASE_FILES``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

TINY = "tiny"
# What a release directory may hold. Anything else (a mask, a log, a pickle) is refused on save.
RELEASE_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
})
# Checkpoint formats that unpickle on load (arbitrary code execution); never read.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                  "unk_token": "<unk>"}


class TinyLlamaConfig(BaseModel):
    """Shape of the embedded model (about 1M parameters at the defaults: 0.52M in two blocks,
    0.45M in input and output embeddings of the ~1.8k-token vocabulary)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden_size: int = Field(128, ge=8, description="model width")
    num_hidden_layers: int = Field(
        2, ge=1, description="transformer blocks (2: deeper tiny models sat on a loss plateau "
        "for most of the default budget before memorizing the world's facts)")
    num_attention_heads: int = Field(4, ge=1, description="attention heads")
    intermediate_size: int = Field(512, ge=8, description="MLP width")
    max_position_embeddings: int = Field(128, ge=16, description="context length")
    vocab_size: int = Field(
        2048, ge=64, description="BPE vocabulary budget (the world's corpus exhausts its merges at "
        "~1.8k tokens, with every entity name a single token)")
    tie_word_embeddings: bool = Field(False, description="share input and output embeddings")


class ModelSpec(BaseModel):
    """An architecture plus where its weights and tokenizer come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name_or_path: str = Field(TINY, description="'tiny' (embedded), a hub id, or a local folder")
    tiny: TinyLlamaConfig = Field(default_factory=TinyLlamaConfig,
                                  description="shape of the embedded model")
    dtype: str = Field("float32", pattern="^(float32|bfloat16|float16)$",
                       description="weights dtype for training and evaluation")
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda:0'")
    trust_remote_code: bool = Field(False, description="run a hub model's own code (off: safer)")
    prompt_format: Literal["plain", "chat"] = Field(
        "plain", description="how the model is prompted. plain: the task's text as is (a base "
        "model); chat: the tokenizer's chat template makes each prompt a user turn and its "
        "answer the assistant turn, in fine-tuning and in lm-eval's scoring "
        "(--apply_chat_template): an instruction-tuned model. Enters the keys of the stages "
        "that fine-tune or score on tasks, not pre-training's")

    @model_validator(mode="after")
    def _local_path_exists(self) -> ModelSpec:
        p = self.name_or_path
        if p != TINY and p.startswith((".", "/", "~")) and not Path(p).expanduser().exists():
            raise ValueError(f"name_or_path: local model folder not found: {p}")
        return self

    @model_validator(mode="after")
    def _chat_needs_a_template(self) -> ModelSpec:
        # A hub model's tokenizer is not read here (no download at validation): each stage
        # that renders a chat checks it (require_chat_template).
        if self.prompt_format != "chat":
            return self
        if self.is_tiny:
            raise ValueError("prompt_format: 'chat' needs a tokenizer with a chat template; "
                             "the embedded model's has none (chat is for an instruction-tuned "
                             "hub or local model)")
        folder = Path(self.name_or_path).expanduser()
        if folder.is_dir() and not has_chat_template(folder):
            raise ValueError(f"prompt_format: 'chat' needs a tokenizer with a chat template; "
                             f"{self.name_or_path} has none (no chat_template.jinja, and no "
                             "chat_template in tokenizer_config.json)")
        return self

    @property
    def is_tiny(self) -> bool:
        return self.name_or_path == TINY

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def has_chat_template(folder: Path) -> bool:
    """Whether the tokenizer saved in ``folder`` has a chat template (read from its files)."""
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists() \
            or any((folder / "additional_chat_templates").glob("*.jinja")):
        return True
    config = folder / "tokenizer_config.json"
    return config.exists() and bool(json.loads(config.read_text()).get("chat_template"))


def require_chat_template(tokenizer: Any) -> None:
    """Raise a clear error where ``prompt_format: chat`` meets a tokenizer without a chat
    template (a hub model's, which the config could not read)."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "this model"
        raise ValueError(f"model.prompt_format is 'chat' but the tokenizer of {name} has no "
                         "chat template (a base model?); use prompt_format: plain")


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained locally with the ``tokenizers`` library, wrapped as a
    standard Hugging Face fast tokenizer (``save_pretrained`` writes ``tokenizer.json``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=1_000_000,
                                   **SPECIAL_TOKENS)


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerFast:
    """The tokenizer of a hub or local model (not for 'tiny', whose tokenizer is trained)."""
    tok = AutoTokenizer.from_pretrained(spec.name_or_path,
                                        trust_remote_code=spec.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def init_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast, seed: int) -> PreTrainedModel:
    """The architecture at random initialization (the scratch baseline, and the start of
    pre-training for 'tiny')."""
    torch.manual_seed(seed)
    if spec.is_tiny:
        t = spec.tiny
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_attention_heads,
            max_position_embeddings=t.max_position_embeddings,
            tie_word_embeddings=t.tie_word_embeddings, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        model = LlamaForCausalLM(config)
    else:
        config = AutoConfig.from_pretrained(spec.name_or_path,
                                            trust_remote_code=spec.trust_remote_code)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
    return model.to(device=spec.torch_device(), dtype=spec.torch_dtype())


class UntrustedCheckpoint(ValueError):
    """Weights that nftbench will not read: a pickle, or a file that is not valid safetensors."""


class NonFiniteWeights(ValueError):
    """A model whose weights hold NaN or inf."""


def check_safetensors_only(folder: Path) -> None:
    """Refuse a local model folder whose weights are not all safetensors (a pickle checkpoint is
    code that runs on load), and safetensors files that do not parse as such."""
    from safetensors import safe_open

    if not folder.is_dir():
        return  # a hub id: from_pretrained is told to fetch safetensors only
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        found = f"; it holds {pickles}" if pickles else ""
        raise UntrustedCheckpoint(f"{folder}: no safetensors weights{found}. nftbench reads "
                                  "weights only as safetensors, never as pickles (convert "
                                  "them with safetensors.torch.save_file)")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as err:  # SafetensorError, or an OS error on a bad header
            raise UntrustedCheckpoint(f"{file} is not a valid safetensors file ({err}); "
                                      "nftbench never unpickles weights") from None


def check_finite(model: torch.nn.Module, what: str = "model") -> None:
    """Raise :class:`NonFiniteWeights` naming the tensors that hold NaN or inf."""
    bad = []
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            if nan or inf:
                bad.append(f"{name}: {nan} NaN, {inf} inf")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteWeights(f"{what} has non-finite weights in {len(bad)} tensors ({shown})")


def load_pretrained(spec: ModelSpec) -> PreTrainedModel:
    """A hub or local model with its published weights (safetensors only)."""
    check_safetensors_only(Path(spec.name_or_path))
    model = AutoModelForCausalLM.from_pretrained(
        spec.name_or_path, dtype=spec.torch_dtype(), use_safetensors=True,
        trust_remote_code=spec.trust_remote_code)
    return model.to(spec.torch_device())


def save_release(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast,
                 path: str | Path) -> Path:
    """Write a release: dense safetensors weights, config and tokenizer, nothing else. Weights
    with NaN or inf are refused (:class:`NonFiniteWeights`): a release must be usable."""
    check_finite(model, f"the release at {path}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    extra = sorted(p.name for p in path.iterdir() if p.name not in RELEASE_FILES
                   and not p.name.startswith("model-"))
    if extra:
        raise RuntimeError(f"release {path} holds files outside the allow-list: {extra}")
    return path


def load_release(path: str | Path, spec: ModelSpec) -> tuple[PreTrainedModel,
                                                             PreTrainedTokenizerFast]:
    """Reload a release directory (safetensors only; remote code only if the spec allows it)."""
    path = Path(path)
    check_safetensors_only(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=spec.torch_dtype(), use_safetensors=True,
        trust_remote_code=spec.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    return model.to(spec.torch_device()), tokenizer


def weight_update(trained: torch.nn.Module, release_dir: str | Path) -> dict[str, torch.Tensor]:
    """:func:`weight_updates` as a dict (every delta in memory at once: a model's size)."""
    return dict(weight_updates(trained, release_dir))


@torch.no_grad()
def weight_updates(trained: torch.nn.Module, release_dir: str | Path
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """What fine-tuning changed, by the model's parameter names (``named_parameters``: a tied
    table once, as a mask keys it): ``trained - released`` for a fully fine-tuned model; for a
    peft LoRA/QLoRA model, each adapter's delta ``B @ A * scale`` on the weight it adapts (its
    frozen base, 4-bit or not, did not move). One (name, delta) at a time, so a consumer that
    reduces them (:func:`nftbench.masks.update_share`) never holds more than one."""
    from peft import PeftModel
    from safetensors import safe_open

    if isinstance(trained, PeftModel):
        shapes = {}
        for file in sorted(Path(release_dir).glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                shapes |= {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        prefix = "base_model.model."
        for name, module in trained.named_modules():
            adapters = getattr(module, "lora_A", None)
            if adapters is not None and "default" in adapters:
                weight = name.removeprefix(prefix) + ".weight"
                delta = module.get_delta_weight("default").float().cpu()
                if weight in shapes and delta.shape != shapes[weight] and \
                        delta.T.shape == shapes[weight]:
                    delta = delta.T  # a Conv1D (GPT-2) 4-bit-quantized as a Linear: [out, in]
                yield weight, delta
        return
    # The release read as the model reads it: the file's names can differ from the model's
    # (GPT-NeoX saves lm_head as embed_out; a tied table is saved under one of its names),
    # and reading the file by the model's names silently dropped such a tensor's update.
    dtype = next(trained.parameters()).dtype
    released = dict(type(trained).from_pretrained(release_dir, dtype=dtype,
                                                  use_safetensors=True).named_parameters())
    for n, p in trained.named_parameters():
        if n in released:
            yield n, p.detach().float().cpu() - released[n].detach().float()
