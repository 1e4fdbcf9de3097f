"""A random model of Qwen2.5-0.5B's exact configuration through the whole pipeline on the CPU.

No hub is reachable here, so the weights are random; every code path is the real one. The model
(494M parameters, tied embeddings, 151,936-token vocabulary) is written to a local folder with a
tokenizer trained on the embedded world, then one matrix runs it through pre-training (2 steps),
the defenses none, pmp (Stage I capped at 2 steps, Stage II 2 steps, with its mask) and sophon
(K = 2 simulated steps, N = 2 strategies; 2 outer steps, so the second runs with every
optimizer state allocated), and the attacks full_ft, lora and qlora (2 steps each), each scored
through lm-eval on 8 items. Every stage runs in one process and records its own peak (the
resident high-water mark, reset at stage start); this script prints it beside an analytic
estimate of what the stage must hold, and the time per step.

    .venv/bin/python benchmarks/real_size.py            # ~1 hour on 2 cores
    .venv/bin/python benchmarks/real_size.py --threads 2 --out runs/real_size

The run's store keeps finished stages: run it again to finish an interrupted one.
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

# Qwen/Qwen2.5-0.5B's config.json (the fields that decide shapes and arithmetic)
QWEN25_05B = {
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "hidden_act": "silu", "use_sliding_window": False,
    "sliding_window": 32768, "max_window_layers": 21, "attention_dropout": 0.0,
}
GB = 1e9
MB = 2**20


def write_model(folder: Path) -> None:
    """Random Qwen2.5-0.5B-shaped weights and a locally trained tokenizer, as a model folder."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from nftbench.models import train_tokenizer
    from nftbench.world import World, WorldConfig

    tokenizer = train_tokenizer(World(WorldConfig()).documents(), 2048)
    torch.manual_seed(0)
    config = Qwen2Config(**QWEN25_05B, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def matrix(model_dir: Path, out: Path, threads: int) -> dict:
    eight = {"n_eval": 8}
    return {
        "name": "real_size", "output_dir": str(out / "run"), "threads": threads,
        "model": {"name_or_path": str(model_dir.resolve()), "dtype": "float32"},
        "pretrain": {"steps": 2, "batch_size": 4, "seq_len": 64},
        "defenses": [
            "none",
            {"name": "pmp", "params": {"eb_max_steps": 2, "eb_batch_size": 4}},
            {"name": "sophon", "params": {"tasks": ["qa_color"], "outer_steps": 2,
                                          "inner_steps": 2, "query_batch": 8, "ntr_batch": 4,
                                          "guard": None, "test_steps": 0}},
        ],
        "adversaries": [{"name": a, "params": {"steps": 2, "batch_size": 8}}
                        for a in ("full_ft", "lora", "qlora")],
        "tasks": [{"name": "qa_color", "params": eight}],
        "seeds": [0], "eval": {"budget_points": 2, "batch_size": 8},
    }


def shapes() -> dict[str, int]:
    """Parameter counts of the model, from its config (tied table counted once)."""
    c = QWEN25_05B
    h, i, n_layers, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], \
        c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    per_layer_linear = h * h + 2 * h * kv + h * h + 3 * h * i  # q, k, v, o, gate/up/down
    per_layer = per_layer_linear + h + 2 * kv + 2 * h  # q/k/v biases, two norms
    return {"params": n_layers * per_layer + v * h + h, "linear": n_layers * per_layer_linear,
            "embed": v * h, "hidden": h, "inter": i, "layers": n_layers, "vocab": v}


def activations(s: dict[str, int], tokens: int, head_tokens: int) -> float:
    """Bytes the autograd graph keeps for one training step (fp32): per token and block the
    saved inputs of every matmul, attention and MLP intermediates (~16 h + 4 i floats); the
    output head's logits, their log-softmax and its gradient at the positions that need them."""
    per_block = 4 * (16 * s["hidden"] + 4 * s["inter"])
    return tokens * s["layers"] * per_block + 3 * 4 * head_tokens * s["vocab"]


def estimates(s: dict[str, int]) -> dict[str, float]:
    """Bytes each stage must hold beyond the process it starts in, by stage: the largest of its
    phases (see the README, "Real size on the CPU")."""
    w = 4 * s["params"]  # fp32 weights (the tied table once)
    load = 2 * w  # the safetensors file, mapped while it is read, + the weights
    pre_act = activations(s, 4 * 64, 4 * 64)  # pre-training: 4 x 64 tokens, labelled everywhere
    ft_act = activations(s, 8 * 24, 8 * 2)  # fine-tuning: 8 short examples, answers only
    eval_logits = 2 * 4 * 8 * 24 * s["vocab"]  # lm-eval: a batch of 8 x ~24 tokens, + softmax
    quant = s["linear"] / 2 + 4 * s["embed"]  # 4-bit linear layers; the table stays fp32
    # SOPHON's query: 8 questions x 8 choices, each a full sequence through the head
    query_act = activations(s, 8 * 8 * 24, 8 * 8 * 24)
    return {
        # weights + grads + AdamW's two states + activations
        "pretrain": max(load, 4 * w + pre_act),
        "defend none": load,  # load the base, save it (saving measured no extra copy)
        # Stage I: training 4W + theta_0 + the batch's scores + the tie-break draw + this and
        # the last step's masks (a byte an element in memory; bit-packed on disk)
        "defend pmp": 4 * w + 3 * w + 2 * s["params"] + pre_act,
        # weights + 2 Adam (FTS, NTR: 4W) + the functional copy, its Adam state (2W) and grads,
        # the meta-gradient accumulated in .grad
        "defend sophon": w + 4 * w + 3 * w + w + w + query_act,
        "scratch": 2 * w,  # initialise, and save
        "attack full_ft": max(load, 4 * w + ft_act + eval_logits),
        "attack lora": max(load, w + ft_act + eval_logits),
        # loading: the file mapped while it is quantized; training: bitsandbytes' CPU path
        # keeps every layer's dequantized fp32 weight for the backward pass (measured)
        "attack qlora": max(w + quant, quant + 4 * s["linear"] + ft_act + eval_logits),
        # the owner's full fine-tune: + the ticket's float mask and complement anchor, + mask
        "attack owner full_ft": max(load, 6 * w + s["params"] + ft_act + eval_logits),
        # PMP's diagnostics after an attack: the mask (a byte an element), and for a full
        # fine-tune the released weights to subtract (deltas streamed one tensor at a time)
        "pmp diagnostics": s["params"],
        "pmp diagnostics full_ft": s["params"] + w,
    }


def stage_name(stage: dict) -> str:
    if stage["kind"] == "attack":
        return f"attack {stage['label'].split(' > ')[0]}"
    if stage["kind"] == "defend":
        return f"defend {stage['label'].split(' / ')[0]}"
    return stage["kind"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/real_size", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model_dir = args.out / "model"
    if not (model_dir / "model.safetensors").exists():
        write_model(model_dir)
    config = args.out / "matrix.yaml"
    config.write_text(yaml.safe_dump(matrix(model_dir, args.out, args.threads)))

    def expendable() -> None:  # if memory runs out, the kernel stops this run, not another
        Path("/proc/self/oom_score_adj").write_text("1000")

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "nftbench.cli", "run", str(config), "--executor",
                    "sequential"], check=False, env=env, preexec_fn=expendable)
    run = args.out / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    est = estimates(shapes())
    store = run / "store"
    rows = []
    for stage in manifest["stages"]:
        if stage["cached"] and stage.get("peak_mem_mb") is None:
            continue
        name = stage_name(stage)
        if stage["kind"] in ("tokenizer", "utility") or name not in est:
            continue
        where = stage["label"].split(" > ")[-1] if stage["kind"] == "attack" else ""
        per_step = None
        entry = store / stage["kind"] / stage["key"]
        for log_file in ("curve.json", "train_log.json"):
            if (entry / log_file).exists():
                log = json.loads((entry / log_file).read_text())
                steps = log.get("steps", len(log.get("losses", [])))
                per_step = log["wall_s"] / steps if steps else None
        start = stage.get("start_mem_mb") or 0.0
        release = where.split(" / ")[0]
        estimate = est[name]
        if release == "pmp":  # the ticket's diagnostics run in the cell after the attack
            estimate += est["pmp diagnostics full_ft" if name.endswith("full_ft")
                            else "pmp diagnostics"]
        rows.append({
            "stage": name + (f" ({release})" if where else ""),
            "status": stage["status"],
            "wall_s": round(stage["computed_wall_s"] or stage["wall_s"], 1),
            "s_per_step": round(per_step, 1) if per_step else None,
            "start_GB": round(start * MB / GB, 2),
            "peak_GB": round(stage["peak_mem_mb"] * MB / GB, 2) if stage.get("peak_mem_mb")
            else None,
            "estimate_GB": round(start * MB / GB + estimate / GB, 2),
        })
    table = pd.DataFrame(rows)
    table["peak/estimate"] = (table.peak_GB / table.estimate_GB).round(2)
    print(table.to_string(index=False))
    table.to_csv(args.out / "real_size.csv", index=False)
    print(f"\nparameters {shapes()['params'] / 1e6:.1f}M; "
          f"largest peak {table.peak_GB.max():.1f} GB")


if __name__ == "__main__":
    main()
