"""LoRA and QLoRA: low-rank adapters on a frozen release (QLoRA: on a 4-bit NF4 copy of it).

Both train through ``ctx.finetune`` on the in-memory ``PeftModel``, so budget-point scores come
from lm-eval on the adapted model (adapters active, not merged). LoRA's ``B`` matrices start at
zero, so the step-0 score is the release's own; QLoRA's step-0 score is that of its quantized
copy. The base weights never change: only the adapters are trained.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import torch
from pydantic import Field, field_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nftbench.adversaries.finetune import FullFineTuneConfig
from nftbench.api import Adversary, AttackContext, Release
from nftbench.registry import register_adversary
from nftbench.train import TrainResult

#: peft's name for every linear layer of the model but the output head, whatever the
#: architecture calls them (q_proj in Llama, c_attn and c_fc in GPT-2, query_key_value in
#: GPT-NeoX, fc1 in OPT): Linear and transformers' Conv1D alike
ALL_LINEAR = "all-linear"


class LoraAttackConfig(FullFineTuneConfig):
    """Budget, optimizer (fields as in OptimConfig) and adapters of a LoRA attack."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32, gt=0, description="LoRA alpha: adapter output scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: Literal["all-linear"] | tuple[str, ...] = Field(
        ALL_LINEAR, description="the layers that get adapters: all-linear (every linear layer "
        "of the blocks, whatever the architecture names them; the output head excluded) or a "
        "list of module names")

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, v: Any) -> Any:
        if not v:
            raise ValueError("name at least one module, or all-linear")
        return v

    def lora(self) -> Any:
        from peft import LoraConfig

        targets = self.target_modules
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=targets if targets == ALL_LINEAR else list(targets),
                          bias="none", task_type="CAUSAL_LM")


LoraConfigT = TypeVar("LoraConfigT", bound=LoraAttackConfig)


class QLoraAttackConfig(LoraAttackConfig):
    """A LoRA attack on a bitsandbytes 4-bit copy of the release's linear layers."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type of the base")
    double_quant: bool = Field(True, description="also quantize the quantization constants")
    compute_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="dtype of the 4-bit matmuls; auto: bfloat16 on a GPU that supports "
        "it, else float32")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass (less memory; the extra "
        "forward is counted apart, as recompute_flops). compute.gradient_checkpointing turns it "
        "on for every stage; this turns it on for QLoRA only")

    def torch_compute_dtype(self, device: torch.device) -> torch.dtype:
        if self.compute_dtype != "auto":
            return getattr(torch, self.compute_dtype)
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32


def keep_4bit_layout(model: torch.nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On a CPU with AVX512-BF16, ``Linear4bit.forward`` in eval mode without grad rewrites its
    weight in place into an inference-only layout (bitsandbytes 0.50). After such an evaluation
    (every budget point), training goes through a kernel with no backward, so no gradient
    reaches the adapters below the last 4-bit layer, silently; and the repacking fails outright
    on layers narrower than the 64-value quantization block. Keeping the training layout makes
    evaluation use the same dequantize-and-matmul path as training.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and \
                hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


@register_adversary("lora", version="1")
class LoraAttack(Adversary[LoraConfigT]):
    """LoRA: low-rank adapters on the frozen release's linear layers (peft)."""

    def load(self, release: Release) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The base the adapters go on."""
        return release.load()

    def attack(self, release: Release, examples: list[dict[str, Any]],
               ctx: AttackContext) -> TrainResult:
        from peft import get_peft_model

        model, tokenizer = self.load(release)
        model = get_peft_model(model, self.config.lora())  # freezes every base weight
        return ctx.finetune(model, tokenizer, examples,
                            steps=self.config.budget_steps(len(examples)),
                            batch_size=self.config.batch_size, optim=self.config.optim())


@register_adversary("qlora", version="1")
class QLoraAttack(LoraAttack[QLoraAttackConfig]):
    """QLoRA: LoRA adapters on a 4-bit (NF4) bitsandbytes copy of the release."""

    def load(self, release: Release) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        spec, cfg = release.spec, self.config
        device = spec.torch_device()
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=cfg.torch_compute_dtype(device))
        model = AutoModelForCausalLM.from_pretrained(
            release.path, quantization_config=quant, dtype=spec.torch_dtype(),
            device_map={"": device}, use_safetensors=True,
            trust_remote_code=spec.trust_remote_code)
        keep_4bit_layout(model)
        # Freezes the base and upcasts its remaining half-precision weights (norms, embeddings,
        # lm_head) to float32, as the QLoRA recipe does.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
        tokenizer = AutoTokenizer.from_pretrained(release.path,
                                                  trust_remote_code=spec.trust_remote_code)
        return model, tokenizer
