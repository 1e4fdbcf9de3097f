"""Cost of one SOPHON outer step against one plain training step, and its memory against K.

For each K, in a fresh process (so the peak memory is that run's): builds the default tiny model,
times plain AdamW training steps on the corpus (batch 32) and SOPHON outer steps (N strategies
x K inner steps, then NTR), alternating, and reads the process's peak memory (CUDA: peak
allocated; CPU: peak RSS). Prints a table with the ratio outer step / plain step.

    .venv/bin/python benchmarks/sophon_step.py --k 1 5 20 --repeats 3
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import json
import statistics
import subprocess
import sys
import time

import pandas as pd


def measure(k: int, n: int, repeats: int, device: str) -> dict:
    import torch

    from nftbench.data import corpus_batches, pack_corpus
    from nftbench.defenses.sophon import SophonConfig, Strategy, Suppression, TaskData
    from nftbench.models import ModelSpec, init_model, train_tokenizer
    from nftbench.plugins import load_plugins
    from nftbench.registry import TASKS
    from nftbench.train import peak_memory_mb
    from nftbench.world import World, WorldConfig

    load_plugins()
    world = World(WorldConfig(n_documents=20_000))
    tokenizer = train_tokenizer(world.documents(), ModelSpec().tiny.vocab_size)
    model = init_model(ModelSpec(device=device), tokenizer, 0)
    corpus = corpus_batches(pack_corpus(world.documents(), tokenizer, 64), 32, 0)
    task = TASKS.get("qa_city")
    data = TaskData(task(task.Config()).examples("train", world), tokenizer, 0)
    cfg = SophonConfig(inner_steps=k, n_strategies=n, query_batch=16,
                       strategies=[Strategy(optimizer="adam", lr=1e-3, batch_size=32)] * n)
    params = list(model.parameters())
    plain_opt = torch.optim.AdamW(params, lr=1e-3)
    fts_opt, ntr_opt = torch.optim.Adam(params, lr=1e-4), torch.optim.Adam(params, lr=1e-4)
    sup = Suppression(model, cfg.loss)
    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def plain() -> None:
        batch = {key: v.to(dev) for key, v in next(corpus).items()}
        model(**batch).loss.backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    def outer() -> None:
        for s in cfg.strategy_set()[:n]:
            sup.simulate(s, data, k, cfg.query_batch)
        sup.apply(fts_opt, n * k, cfg.grad_clip)
        batch = {key: v.to(dev) for key, v in next(corpus).items()}
        model(**batch).loss.backward()
        ntr_opt.step()
        ntr_opt.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"plain": [], "outer": []}
    plain()
    outer()  # warm-up
    for _ in range(repeats):
        for name, fn in (("plain", plain), ("outer", outer)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {"K": k, "N": n, "plain_ms": 1000 * statistics.median(times["plain"]),
            "outer_ms": 1000 * statistics.median(times["outer"]),
            "peak_mem_mb": peak_memory_mb(dev)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--n", type=int, default=2, help="strategies per outer step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one K
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.n, args.repeats, args.device)))
        return
    rows = []
    for k in args.k:
        out = subprocess.run([sys.executable, __file__, "--one", str(k), "--n", str(args.n),
                              "--repeats", str(args.repeats), "--device", args.device],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = pd.DataFrame(rows)
    table["outer / plain"] = table.outer_ms / table.plain_ms
    table["per inner step / plain"] = table["outer / plain"] / (table.N * table.K)
    print(f"default tiny model, device {args.device}, medians of {args.repeats}; an outer step "
          "is N x K inner steps (support step + query loss and gradient) + 1 NTR step; peak "
          "memory is the process's (CPU: RSS, includes the data and the tokenizer)")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))


if __name__ == "__main__":
    main()
