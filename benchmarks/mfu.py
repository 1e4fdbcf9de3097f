"""Model FLOPs utilization of the training loop: achieved training FLOP/s against the device's
measured matmul peak, side by side in one run.

The peak is the best of several large square matmuls at the configured thread count, in fp32
and in bf16 (2048^3 on a CPU, 8192^3 on a GPU); a row is measured against the peak of its own
precision. A training step's FLOPs are the loop's own accounting (``6 N`` per token
for full training, N the matmul parameters, output head included; attention's score and value
products are left out, as in the usual MFU). Variants show where the rest goes: the optimizer
(forward and backward alone), the thread count, ``torch.compile`` and bf16 autocast.

    .venv/bin/python benchmarks/mfu.py                   # tiny and 0.5B-shaped, ~15 min
    .venv/bin/python benchmarks/mfu.py --models tiny     # a minute

Take the numbers on a quiet machine: every row is a ratio against the peak measured in the
same run, but a neighbour's load moves rows measured at different times differently.
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import time
from collections.abc import Iterator

import pandas as pd
import torch
from real_size import QWEN25_05B  # (benchmarks/, the script's folder, is on the path)

from nftbench.optim import OptimConfig
from nftbench.train import ComputeConfig, count_matmul_params, lm_loss, train


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10
                ) -> float:
    """FLOP/s of the best of ``repeats`` n x n x n matmuls."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name: str, device: torch.device) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if name == "tiny":  # the embedded default: 2 blocks, 128 wide, ~1.8k vocabulary
        config = LlamaConfig(vocab_size=1800, hidden_size=128, intermediate_size=512,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                             max_position_embeddings=128)
        return LlamaForCausalLM(config).to(device)
    return Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B)).to(device)


def batches(vocab: int, batch: int, seq: int, device: torch.device
            ) -> Iterator[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    while True:
        x = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
        yield {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}


def measure(model: torch.nn.Module, shape: tuple[int, int], steps: int, warmup: int,
            compute: ComputeConfig, optimizer: bool | str, device: torch.device
            ) -> dict[str, float]:
    """Tokens/s and FLOP/s of ``steps`` training steps after ``warmup`` (compilation)."""
    vocab = model.get_input_embeddings().num_embeddings
    data = batches(vocab, *shape, device)
    n_all, _ = count_matmul_params(model)
    if optimizer:  # the loop itself, optimizer step included ("fused": torch's fused AdamW)
        optim = OptimConfig(optimizer="adamw", lr=1e-4,
                            options={"fused": True} if optimizer == "fused" else {})
        train(model, data, warmup, optim, compute=compute, progress=False)
        sync(device)
        r = train(model, data, steps, optim, compute=compute, progress=False)
        sync(device)
        return {"tokens_per_s": r.tokens / r.wall_s, "flops_per_s": r.flops / r.wall_s}
    forward = torch.compile(model) if compute.compile else model
    model.train()
    for i in range(warmup + steps):  # forward and backward only
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        with compute.autocast(device):
            loss = lm_loss(model, next(data), forward)
        loss.backward()
        model.zero_grad(set_to_none=True)
    sync(device)
    tokens = steps * shape[0] * shape[1]
    wall = time.perf_counter() - t0
    return {"tokens_per_s": tokens / wall, "flops_per_s": 6 * n_all * tokens / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "0.5b"], choices=["tiny", "0.5b"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the table as CSV here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    size = 8192 if gpu else 2048
    # a row is measured against the peak of the precision its matmuls run in
    peaks = {"fp32": matmul_peak(device, torch.float32, n=size),
             "bf16": matmul_peak(device, torch.bfloat16, n=size)}
    # (batch x seq, threads, compute, optimizer step: True, False or "fused", label)
    plans = {
        "tiny": [((32, 64), 1, ComputeConfig(), True, "loop, 1 thread"),
                 ((32, 64), args.threads, ComputeConfig(), True, f"loop, {args.threads} threads"),
                 ((32, 64), args.threads, ComputeConfig(), False, "forward+backward only"),
                 ((32, 64), args.threads, ComputeConfig(), "fused", "loop, fused AdamW"),
                 ((32, 64), args.threads, ComputeConfig(compile=True), True, "loop, compiled"),
                 ((32, 64), args.threads, ComputeConfig(precision="bf16"), True, "loop, bf16")],
        "0.5b": [((8, 128), args.threads, ComputeConfig(), True, "loop"),
                 ((8, 128), args.threads, ComputeConfig(), False, "forward+backward only"),
                 ((8, 128), args.threads, ComputeConfig(), "fused", "loop, fused AdamW"),
                 ((8, 128), args.threads, ComputeConfig(compile=True), True, "loop, compiled"),
                 ((8, 128), args.threads, ComputeConfig(precision="bf16"), True, "loop, bf16")],
    }
    rows = []
    for name in args.models:
        steps, warmup = (30, 5) if name == "tiny" else (3, 1)
        if gpu:
            plans[name] = [(s, args.threads, c.model_copy(update={"precision": "bf16"}), o, lab)
                           for s, _, c, o, lab in plans[name]]
        for shape, threads, compute, optimizer, label in plans[name]:
            torch.set_num_threads(threads)
            model = build(name, device)
            m = measure(model, shape, steps, warmup, compute, optimizer, device)
            torch.set_num_threads(args.threads)
            peak = peaks[compute.precision]
            rows.append({"model": name, "variant": label, "batch": f"{shape[0]}x{shape[1]}",
                         "precision": compute.precision,
                         "tokens/s": round(m["tokens_per_s"], 1),
                         "GFLOP/s": round(m["flops_per_s"] / 1e9, 1),
                         "MFU": round(m["flops_per_s"] / peak, 3)})
            print(rows[-1], flush=True)
            del model
    table = pd.DataFrame(rows)
    where = torch.cuda.get_device_name() if gpu else f"CPU, {args.threads} threads"
    print(f"\nmatmul peak ({where}, {size}^3): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    print(table.to_string(index=False))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
