"""What computing the output head only at labelled positions saves: one fine-tuning step
(forward and backward) on a restricted task's batch, ``model(**batch).loss`` against
``train.lm_loss``, alternating, on the config's base 0 (pre-trained first if the store lacks it).

    .venv/bin/python benchmarks/loss_head.py configs/default.yaml --task qa_city
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import logging
import time

import torch

from nftbench.config import load_config
from nftbench.data import encode_examples, example_batches, pad_id
from nftbench.engine import Runner
from nftbench.models import load_release
from nftbench.plugins import load_plugins
from nftbench.registry import TASKS
from nftbench.train import lm_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/default.yaml")
    parser.add_argument("--task", default="qa_city")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per block")
    parser.add_argument("--repeats", type=int, default=5, help="alternating blocks per way")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_plugins()
    matrix = load_config(args.config, ["defenses=[none]", "pretrain.seeds=[0]",
                                       "name=loss_head", "output_dir=runs/loss_head"])
    runner = Runner(matrix, progress=False)
    runner.plan = [j for j in runner.plan if j.kind in ("tokenizer", "pretrain")]
    runner.run()
    job = next(j for j in runner.plan if j.kind == "pretrain")
    model, tokenizer = load_release(runner.store.path(job.kind, job.key) / "release",
                                    matrix.config.model)
    torch.set_num_threads(matrix.config.threads or 1)
    examples = TASKS.get(args.task)().examples("train", runner.world)
    batch = next(example_batches(encode_examples(examples, tokenizer), 32, 0, pad_id(tokenizer)))
    model.train()
    ways = {"plain": lambda: model(**batch).loss, "lm_loss": lambda: lm_loss(model, batch)}
    best = {name: float("inf") for name in ways}
    for _ in range(args.repeats):
        for name, loss in ways.items():
            loss().backward()  # warm
            start = time.perf_counter()
            for _ in range(args.steps):
                loss().backward()
            best[name] = min(best[name], (time.perf_counter() - start) / args.steps * 1e3)
            model.zero_grad(set_to_none=True)
    labelled = int((batch["labels"][:, 1:] != -100).any(0).sum())
    print(f"task {args.task}: batch {tuple(batch['input_ids'].shape)}, {labelled} of "
          f"{batch['input_ids'].shape[1] - 1} positions predict a label somewhere in the batch; "
          f"{matrix.config.threads or 1} thread(s); best of {args.repeats} blocks of "
          f"{args.steps} steps")
    print(f"forward + backward: model(**batch).loss {best['plain']:.1f} ms, lm_loss "
          f"{best['lm_loss']:.1f} ms, ratio {best['lm_loss'] / best['plain']:.2f}")


if __name__ == "__main__":
    main()
