"""Token streams for the training loop: packed corpus blocks and task examples.

Both yield batches forever, in an order fixed by a seed, as dicts that a Hugging Face causal
LM takes directly (``input_ids``, ``attention_mask``, ``labels``; label -100 is ignored).

A task example is encoded as lm-eval scores it: as plain text, or, where the harness handed it
over in chat format (``model.prompt_format: chat``; :func:`in_prompt_format` marks it), as the
tokenizer's chat template renders it, so every plugin that encodes examples fine-tunes the
model on the sequences it is scored on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from nftbench.models import require_chat_template
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


def in_prompt_format(examples: list[dict[str, Any]], prompt_format: str
                     ) -> list[dict[str, Any]]:
    """``examples`` as the harness hands them to plugins: in chat format each carries
    ``prompt_format: chat``, which :func:`encode_examples` renders with the chat template;
    plain examples are returned as they are."""
    if prompt_format == "plain":
        return examples
    return [{**ex, "prompt_format": prompt_format} for ex in examples]


def chat_text(example: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """(prompt, completion) of an example in chat format. The prompt is what lm-eval's
    ``apply_chat_template`` renders for a zero-shot document: the prompt as the only user turn,
    then the generation prompt (the opening of the assistant's turn). The completion is the
    answer right after it, as lm-eval scores a choice in chat format (no delimiter), then the
    rest of the assistant's turn as the template renders it (its end-of-turn marker), so the
    model learns to stop."""
    require_chat_template(tokenizer)
    answer = example["answer"]
    user = [{"role": "user", "content": example["prompt"]}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": answer}],
                                          tokenize=False)
    turn = whole[len(prompt):] if whole.startswith(prompt) else ""
    if answer in turn:  # (a template may put a space before the answer: lm-eval puts none)
        return prompt, answer + turn[turn.index(answer) + len(answer):]
    # a template that renders a past assistant turn otherwise than the one it prompts for
    return prompt, answer + (tokenizer.eos_token or "")


def encode_examples(examples: list[dict[str, Any]],
                    tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example; the loss falls on the completion only. The prompt is
    encoded with the tokenizer's own special tokens (a BOS where it adds one), as lm-eval
    encodes it when it scores, so a model is tuned on the sequences it is scored on; a chat
    prompt that the template already opens with the BOS gets no second one (lm-eval's rule)."""
    out = []
    for ex in examples:
        if ex.get("prompt_format") == "chat":
            prompt, completion = chat_text(ex, tokenizer)
            bos = tokenizer.bos_token
            p = tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos))
                          )["input_ids"]
        else:
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


def mixed_batches(encoded: list[tuple[list[int], list[int]]],
                  mix_in: list[tuple[list[int], list[int]]], batch_size: int, share: float,
                  seed: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``batch_size`` rows of which ``round(share * batch_size)`` come from
    ``mix_in`` and the rest from ``encoded``: a fixed mixture in every step, not only on
    average. Each source is its own stream, reshuffled every pass over it."""
    if not encoded or not mix_in:
        raise ValueError("mixing needs examples in both sources")
    k = round(share * batch_size)
    if not 0 < k < batch_size:
        raise ValueError(f"a share of {share} leaves {k} of {batch_size} rows to mix in: "
                         "it must leave at least one row to each source")

    def stream(rows: list[tuple[list[int], list[int]]], gen: torch.Generator):
        while True:
            for i in torch.randperm(len(rows), generator=gen).tolist():
                yield rows[i]

    gen = torch.Generator().manual_seed(seed)
    main, extra = stream(encoded, gen), stream(mix_in, gen)
    while True:
        rows = [next(main) for _ in range(batch_size - k)] + [next(extra) for _ in range(k)]
        yield pad_rows(rows, pad_id)


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
