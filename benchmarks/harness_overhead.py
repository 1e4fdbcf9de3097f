"""Harness overhead: a full fine-tuning attack through nftbench (no evaluation) against a plain
hand-written PyTorch loop with the same model, data, batch size, optimizer and steps.

Both start from the same saved release and include loading it; runs alternate (A, B, A, B, ...)
so that machine noise hits both alike; the table shows medians and the ratio.

    .venv/bin/python benchmarks/harness_overhead.py --steps 200 --repeats 3
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nftbench.adversaries.finetune import FullFineTune, FullFineTuneConfig
from nftbench.api import AttackContext, Release
from nftbench.models import ModelSpec, init_model, save_release, train_tokenizer
from nftbench.plugins import load_plugins
from nftbench.registry import TASKS
from nftbench.world import World, WorldConfig


def plain_loop(path: Path, examples: list[dict], steps: int, batch_size: int) -> float:
    """What a researcher would write by hand: tokenize, pad, mask the prompt, AdamW."""
    start = time.perf_counter()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    rows = []
    for ex in examples:
        p = tok(ex["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(" " + ex["answer"] + "\n", add_special_tokens=False)["input_ids"]
        rows.append((p + c, [-100] * len(p) + c))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(0)
    model.train()
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order = list(range(len(rows)))
            rng.shuffle(order)
        batch = [rows[order.pop()] for _ in range(batch_size)]
        width = max(len(x) for x, _ in batch)
        ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x, _ in batch])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(x) for x, _ in batch])[:, None])
        loss = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def nftbench_cell(release: Release, examples: list[dict], steps: int, batch_size: int) -> float:
    start = time.perf_counter()
    ctx = AttackContext(seed=0, evaluate=lambda m, t: {}, budget_points=lambda s: [],
                        progress=False)
    FullFineTune(FullFineTuneConfig(steps=steps, batch_size=batch_size)).attack(
        release, examples, ctx)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_plugins()
    world = World(WorldConfig())
    tokenizer = train_tokenizer(world.documents(), ModelSpec().tiny.vocab_size)
    examples = TASKS.get("qa_city")().examples("train", world)
    times: dict[str, list[float]] = {"plain PyTorch loop": [], "nftbench full_ft cell": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = save_release(init_model(ModelSpec(), tokenizer, 0), tokenizer, Path(tmp) / "r")
        release = Release(path, ModelSpec())
        nftbench_cell(release, examples, 5, args.batch_size)  # warm-up: imports, allocator
        for _ in range(args.repeats):
            times["plain PyTorch loop"].append(
                plain_loop(path, examples, args.steps, args.batch_size))
            times["nftbench full_ft cell"].append(
                nftbench_cell(release, examples, args.steps, args.batch_size))
    base = statistics.median(times["plain PyTorch loop"])
    table = pd.DataFrame([{"run": k, "median_s": statistics.median(v),
                           "runs_s": " ".join(f"{x:.2f}" for x in v),
                           "ratio": statistics.median(v) / base} for k, v in times.items()])
    print(f"{args.steps} steps, batch {args.batch_size}, default tiny model, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} alternating repeats")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
