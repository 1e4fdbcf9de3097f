"""Why does a restricted task transfer on one base and not another? One attack, item by item.

Fine-tunes the undefended base of each chosen pre-training seed on a world task's train split
(full fine-tuning, AdamW, as the config's first adversary unless told otherwise), then scores
every held-out item by log-likelihood over the attribute's values and prints the accuracy
before and after, and the most common (gold -> predicted) confusions. Variants of the task are
flags, so a change to the restricted fine-tuning data can be tried on the base where it fails
in a minute, before a full `transfer.py` run:

    .venv/bin/python benchmarks/task_probe.py --task qa_pet --bases 1
    .venv/bin/python benchmarks/task_probe.py --task qa_pet --bases 1 \
        --prompt "question : which animal does {entity} keep ? answer : a"

``--train-fraction`` re-splits the entities for the probe only (the corpus does not depend on
the split, so the base is the config's). Scores here are this script's own log-likelihood rule
(the value's tokens after the prompt, one example at a time), which matches lm-eval's
``multiple_choice`` accuracy; batch order differs from a matrix cell's, so expect a point or two
of difference from the cell's score.
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import logging
from collections import Counter

import torch

from nftbench.config import load_config
from nftbench.data import encode_examples, example_batches, pad_id
from nftbench.engine import Runner
from nftbench.models import load_release
from nftbench.plugins import load_plugins
from nftbench.registry import TASKS
from nftbench.train import OptimConfig, train
from nftbench.world import World


def accuracy(model, tokenizer, examples) -> tuple[float, Counter]:
    """Log-likelihood accuracy over each example's choices, and the confusions."""
    model.eval()
    wrong: Counter = Counter()
    with torch.no_grad():
        for ex in examples:
            prompt = tokenizer(ex["prompt"]).input_ids
            scores = []
            for choice in ex["choices"]:
                answer = tokenizer(" " + choice).input_ids
                logp = model(torch.tensor([prompt + answer])).logits[0].log_softmax(-1)
                scores.append(sum(logp[len(prompt) - 1 + i, t].item()
                                  for i, t in enumerate(answer)))
            pred = max(range(len(scores)), key=scores.__getitem__)
            if pred != ex["label"]:
                wrong[ex["answer"], ex["choices"][pred]] += 1
    return 1 - sum(wrong.values()) / len(examples), wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/default.yaml")
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--task", default="qa_pet", help="a classification task on the world")
    parser.add_argument("--bases", default="0", help="pre-training seeds, comma-separated")
    parser.add_argument("--prompt", help="the task's prompt template (train and eval)")
    parser.add_argument("--extra-prompts", default="",
                        help="more wordings for the train split, '|'-separated ({entity})")
    parser.add_argument("--train-fraction", type=float, help="world.task_fraction, probe only")
    parser.add_argument("--lr", type=float, help="attack learning rate (default: the config's)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="attack seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_plugins()
    torch.set_num_threads(1)
    bases = [int(b) for b in args.bases.split(",")]
    matrix = load_config(args.config, [*args.override, "defenses=[none]",
                                       f"pretrain.seeds={bases}", "name=task_probe",
                                       "output_dir=runs/task_probe"])
    cfg = matrix.config
    runner = Runner(matrix, progress=False)
    pretrain = [j for j in runner.plan if j.kind in ("tokenizer", "pretrain")]
    runner.plan = pretrain
    runner.run()  # the bases only (reused from the store when present)
    releases = {j.args["seed"]: runner.store.path(j.kind, j.key) / "release"
                for j in pretrain if j.kind == "pretrain"}
    world_cfg = cfg.world
    if args.train_fraction is not None:
        world_cfg = world_cfg.model_copy(update={"task_fraction": args.train_fraction})
    world = World(world_cfg)
    cls = TASKS.get(args.task)
    task = cls(cls.Config(**({"prompt": args.prompt} if args.prompt else {})))
    train_ex, eval_ex = task.examples("train", world), task.examples("eval", world)
    wordings = [p for p in args.extra_prompts.split("|") if p]
    if wordings:
        records = task.records("train", world)  # (no world record is ever dropped)
        train_ex = train_ex + [{**ex, "prompt": w.format(**r)}
                               for ex, r in zip(train_ex, records, strict=True) for w in wordings]
    attack = cfg.adversaries[0].params
    optim = OptimConfig(optimizer=attack.get("optimizer", "adamw"),
                        lr=args.lr or attack.get("lr", 3e-4),
                        weight_decay=attack.get("weight_decay", 0.0))
    print(f"task {args.task}: {len(train_ex)} train examples, {len(eval_ex)} eval items; "
          f"prompt {task.config.prompt!r}; {optim.optimizer} lr {optim.lr:g}, {args.steps} "
          f"steps, batch {attack.get('batch_size', 32)}")
    for base, folder in releases.items():
        model, tokenizer = load_release(folder, cfg.model)
        before, _ = accuracy(model, tokenizer, eval_ex)
        torch.manual_seed(args.seed)
        batches = example_batches(encode_examples(train_ex, tokenizer),
                                  attack.get("batch_size", 32), args.seed, pad_id(tokenizer))
        train(model.train(), batches, args.steps, optim, progress=False)
        after, wrong = accuracy(model, tokenizer, eval_ex)
        common = ", ".join(f"{g}->{p} {n}" for (g, p), n in wrong.most_common(4))
        print(f"base {base}: before {before:.2f}  after {after:.2f}  confusions: {common}")


if __name__ == "__main__":
    main()
