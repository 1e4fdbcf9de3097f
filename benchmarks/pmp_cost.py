"""Cost of PMP pre-training against dense pre-training of the same model, data and steps.

Runs, alternating (dense, PMP, dense, PMP, ...): the dense base's pre-training loop, and the
PMP defense (Stage I early-bird search + Stage II ticket training with the same steps). Prints
medians and the ratios; Stage II alone is read from PMP's own progress (steps are equal).

    .venv/bin/python benchmarks/pmp_cost.py --steps 300 --repeats 2
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from nftbench.api import DefenseContext
from nftbench.config import PretrainConfig
from nftbench.data import corpus_batches, pack_corpus
from nftbench.defenses.pmp import PMP, PMPConfig
from nftbench.models import ModelSpec, init_model, train_tokenizer
from nftbench.train import train
from nftbench.world import World, WorldConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rho", type=float, default=0.5)
    args = parser.parse_args()
    world = World(WorldConfig(n_documents=20_000))
    tokenizer = train_tokenizer(World(WorldConfig()).documents(), ModelSpec().tiny.vocab_size)
    pre = PretrainConfig(steps=args.steps)
    corpus = pack_corpus(world.documents(), tokenizer, pre.seq_len)
    spec = ModelSpec()
    times: dict[str, list[float]] = {"dense pre-training": [], "PMP Stage II only": [],
                                     "PMP (Stage I + II)": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        model = init_model(spec, tokenizer, pre.seed)
        train(model, corpus_batches(corpus, pre.batch_size, pre.seed), pre.steps, pre.optim(),
              progress=False)
        times["dense pre-training"].append(time.perf_counter() - start)
        for label, cfg in (("PMP Stage II only", PMPConfig(rho=args.rho, mask="random")),
                           ("PMP (Stage I + II)", PMPConfig(rho=args.rho))):
            with tempfile.TemporaryDirectory() as tmp:
                ctx = DefenseContext(spec=spec, tokenizer=tokenizer, corpus=corpus, pretrain=pre,
                                     base=None, restricted={}, release_dir=Path(tmp) / "r",
                                     private_dir=Path(tmp) / "p", progress=False)
                ctx.private_dir.mkdir()
                start = time.perf_counter()
                PMP(cfg).defend(ctx)
                times[label].append(time.perf_counter() - start)
    base = statistics.median(times["dense pre-training"])
    table = pd.DataFrame([{"run": k, "median_s": statistics.median(v),
                           "runs_s": " ".join(f"{x:.1f}" for x in v),
                           "x dense": statistics.median(v) / base} for k, v in times.items()])
    print(f"{args.steps} steps of {pre.batch_size}x{pre.seq_len} tokens, default tiny model, "
          f"rho {args.rho}, torch threads {torch.get_num_threads()}, {args.repeats} repeats "
          "(PMP timings include saving the release and the mask)")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))


if __name__ == "__main__":
    main()
