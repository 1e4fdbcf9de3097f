"""Does pre-training memorize the world on every seed? Cloze accuracy during pre-training.

Pre-trains the config's base (its world, model and pre-training settings, overrides applied) on
each seed, on one thread, and every quarter of the budget scores the held-out entities' facts
in a corpus form (``kelta lives in`` -> the city), by log-likelihood over the attribute's
values: a quick look at whether and when each seed leaves the loss plateau, without running a
matrix. Used to choose the embedded world's defaults (README, "The embedded world").

    .venv/bin/python benchmarks/pretrain_probe.py --seeds 0,1,2 -o world.n_entities=150
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import json
import time

import torch

from nftbench.config import load_config
from nftbench.data import corpus_batches, pack_corpus
from nftbench.models import init_model, train_tokenizer
from nftbench.plugins import load_plugins
from nftbench.train import train
from nftbench.world import ATTRIBUTE_VALUES, World

CLOZE = {"city": "{e} lives in", "color": "{e} 's color is", "food": "{e} 's food is",
         "pet": "{e} 's pet is a"}


@torch.no_grad()
def cloze_accuracy(model, tokenizer, world: World) -> dict[str, float]:
    """Per attribute: share of held-out entities whose true value has the highest likelihood."""
    model.eval()
    out = {}
    for attribute, values in ATTRIBUTE_VALUES.items():
        correct = 0
        for entity in world.heldout_entities:
            prompt = tokenizer(CLOZE[attribute].format(e=entity),
                               add_special_tokens=False)["input_ids"]
            rows = [prompt + tokenizer(" " + v, add_special_tokens=False)["input_ids"]
                    for v in values]
            width = max(map(len, rows))
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, :len(r)] = torch.tensor(r)
                mask[i, :len(r)] = 1
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits, -1)
            scores = [sum(logp[i, j - 1, r[j]].item() for j in range(len(prompt), len(r)))
                      for i, r in enumerate(rows)]
            best = max(range(len(values)), key=scores.__getitem__)
            correct += values[best] == world.facts[entity][attribute]
        out[attribute] = round(correct / len(world.heldout_entities), 3)
    model.train()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/default.yaml")
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_plugins()
    cfg = load_config(args.config, args.override).config
    world = World(cfg.world)
    tokenizer = train_tokenizer(world.documents(), cfg.model.tiny.vocab_size)
    corpus = pack_corpus(world.documents(), tokenizer, cfg.pretrain.seq_len)
    pre = cfg.pretrain
    for seed in (int(s) for s in args.seeds.split(",")):
        model = init_model(cfg.model, tokenizer, seed)
        marks: dict[int, dict[str, float]] = {}

        def probe(step: int, model=model, marks=marks) -> None:
            if step % max(1, pre.steps // 4) == 0:
                marks[step] = cloze_accuracy(model, tokenizer, world)

        start = time.perf_counter()
        result = train(model, corpus_batches(corpus, pre.batch_size, seed), pre.steps,
                       pre.optim(), after_step=probe, progress=False)
        losses = [round(x, 2) for x in result.losses[::max(1, pre.steps // 8)]]
        print(f"seed {seed} ({time.perf_counter() - start:.0f} s): loss {losses}; cloze "
              f"accuracy by step {json.dumps(marks)}", flush=True)


if __name__ == "__main__":
    main()
