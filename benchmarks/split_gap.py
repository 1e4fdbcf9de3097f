"""Does the attacker's held-out share of the train split predict the eval score?

A sweep that selects by validation (``select: validation`` or ``validation_accuracy``) scores
its trials on a fifth of the attacker's own train split. A defense that trains on that same
split (SOPHON suppresses the restricted task on its train split, the data the attacker
fine-tunes on) may hold those very examples down harder than examples it never saw; then a
recipe that recovers the eval split can leave the held-out fifth suppressed, and the attacker's
signal misranks the recipes. For each release and recipe this fine-tunes on the four fifths a
sweep trains on (the sweep's own split for the seed, 300 steps by default) and prints the
accuracy (the sweep's ``answer_accuracy``, lm-eval's rule) on the trained four fifths, the
held-out fifth and the eval split, before and after, and the share of the eval questions that
get the model's most frequent answer (1.0: it gives one answer to all, and its score on a
split is that answer's share of the split's labels):

    .venv/bin/python benchmarks/split_gap.py runs/store/defend/KEY/release [...] --task qa_color

A release is any release folder (a store entry's ``release/``); ``--world-seed`` and
``--n-entities`` must be those of the run that made it. For a release built with
``restricted_data: {defense_share: S, seed: K}`` pass ``--defense-share S --cut-seed K``: the
attacker's split is then cut from its own part, and a ``defense`` column scores the part the
defense trained on (examples the attacker never sees).
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import torch

from nftbench.api import AttackContext, Release
from nftbench.config import cut
from nftbench.models import ModelSpec
from nftbench.plugins import load_plugins
from nftbench.registry import ADVERSARIES, TASKS
from nftbench.world import World, WorldConfig

#: recipes of configs/sophon_alpha3_search.yaml: those the oracle picked on some cell, and the
#: loss-selected SGD 3e-3
RECIPES = {
    "AdamW 1e-4 b8": {"optimizer": "adamw", "weight_decay": 0.01, "lr": 1e-4, "batch_size": 8},
    "AdamW 3e-4 b8 cos": {"optimizer": "adamw", "weight_decay": 0.01, "lr": 3e-4,
                          "batch_size": 8, "schedule": "cosine", "warmup_steps": 30},
    "Adam 1e-4 b8": {"optimizer": "adam", "lr": 1e-4, "batch_size": 8},
    "RMSprop 1e-4 b8": {"optimizer": "rmsprop", "lr": 1e-4, "batch_size": 8},
    "SGD-m 0.1 b32 cos": {"optimizer": "sgd_momentum", "lr": 0.1, "batch_size": 32,
                          "schedule": "cosine", "warmup_steps": 30},
    "SGD-m 3e-3 b8": {"optimizer": "sgd_momentum", "lr": 3e-3, "batch_size": 8},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("releases", nargs="+", type=Path)
    ap.add_argument("--task", default="qa_color")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--n-entities", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0, help="the sweep cell's seed (its split)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--validation-fraction", type=float, default=0.2)
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--defense-share", type=float,
                    help="the run's restricted_data.defense_share (default: no cut)")
    ap.add_argument("--cut-seed", type=int, default=0, help="the run's restricted_data.seed")
    ap.add_argument("--csv", type=Path, help="also write the table here")
    args = ap.parse_args()

    from nftbench.adversaries.sweep import answer_accuracy, answers, held_out_split

    load_plugins()
    torch.set_num_threads(1)
    world = World(WorldConfig(seed=args.world_seed, n_entities=args.n_entities))
    task = TASKS.get(args.task)()
    train, evaluation = task.examples("train", world), task.examples("eval", world)
    defense: list = []
    if args.defense_share is not None:  # what the run's MatrixData.load gave each side
        defense, train = cut(train, args.defense_share, args.cut_seed)
    trained, held_out = held_out_split(train, args.validation_fraction, args.seed)

    def accuracies(model: torch.nn.Module, tokenizer: object) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            out = {"trained": answer_accuracy(model, tokenizer, trained),
                   "held_out": answer_accuracy(model, tokenizer, held_out),
                   "eval": answer_accuracy(model, tokenizer, evaluation)}
            if defense:
                out["defense"] = answer_accuracy(model, tokenizer, defense)
            # a collapsed model gives one answer to every question; its score on a split is
            # then that answer's share of the split's labels, not a sign of which examples
            # it suppressed
            picks = Counter(pick for _, pick in answers(model, tokenizer, evaluation))
            out["top_answer_share"] = max(picks.values()) / len(evaluation)
        model.train()
        return out

    full_ft = ADVERSARIES.get("full_ft")
    rows = []
    for path in args.releases:
        release = Release(path, ModelSpec(name_or_path=str(path)))
        model, tokenizer = release.load()
        name = path.parent.name[:10] if path.name == "release" else path.name
        rows.append({"release": name, "recipe": "(release)", **accuracies(model, tokenizer)})
        for recipe in args.recipes:
            ctx = AttackContext(seed=args.seed, evaluate=accuracies,
                                budget_points=lambda steps: [steps], progress=False)
            attack = full_ft(full_ft.Config(steps=args.steps, **RECIPES[recipe]))
            result = attack.attack(release, trained, ctx)
            final = result.points[-1].scores if result.points else {}
            rows.append({"release": name, "recipe": recipe, **final})
            print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False, floatfmt=".2f"))
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
