"""Token streams for the training loop: packed corpus blocks and task examples.

Both yield batches forever, in an order fixed by a seed, as dicts that a Hugging Face causal
LM takes directly (``input_ids``, ``attention_mask``, ``labels``; label -100 is ignored).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from nftbench.task import training_text

IGNORE = -100


def pack_corpus(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase,
                seq_len: int) -> torch.Tensor:
    """Concatenate documents (each followed by EOS) and cut into ``[n_blocks, seq_len]``."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"corpus too small: {len(ids)} tokens for blocks of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def corpus_batches(blocks: torch.Tensor, batch_size: int, seed: int) -> Iterator[dict[str,
                                                                                    torch.Tensor]]:
    """Random blocks, reshuffled every epoch."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(blocks), generator=gen)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            x = blocks[order[i:i + batch_size]]
            yield {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}
        if len(order) < batch_size:  # tiny corpora: sample with replacement
            x = blocks[torch.randint(len(blocks), (batch_size,), generator=gen)]
            yield {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}


def encode_examples(examples: list[dict[str, Any]],
                    tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example; the loss falls on the completion only. The prompt is
    encoded with the tokenizer's own special tokens (a BOS where it adds one), as lm-eval
    encodes it when it scores, so a model is tuned on the sequences it is scored on."""
    out = []
    for ex in examples:
        prompt, completion = training_text(ex)
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        out.append((p + c, [IGNORE] * len(p) + c))
    return out


def example_batches(encoded: list[tuple[list[int], list[int]]], batch_size: int, seed: int,
                    pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled, right-padded batches of encoded examples, reshuffled every epoch."""
    if not encoded:
        raise ValueError("no training examples")
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(encoded), generator=gen).tolist()
        if len(order) < batch_size:
            order = order * (batch_size // len(order) + 1)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield pad_rows([encoded[j] for j in order[i:i + batch_size]], pad_id)


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded batch of encoded (input ids, labels) rows."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        ids[r, :len(x)] = torch.tensor(x)
        labels[r, :len(y)] = torch.tensor(y)
        mask[r, :len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's padding id, or its end-of-sequence id if it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
