"""The sweep attacker: the best of many attacks over a hyperparameter grid.

Each trial is a full attack by another registered adversary with one grid point of its
parameters. The sweep reports the curve of the trial it selects, and the attacker-effort curve:
the score of the best trial so far against the number of trials and the compute spent on all
of them (``effort`` in the cell's diagnostics; rows ``effort_best`` in the results table, one
per trial, with cumulative tokens and FLOPs).

Selection, named honestly:

* ``validation`` (default, what a real attacker can do): trials train on the attacker's train
  data minus a held-out share, and the trial with the lowest answer loss on that share wins.
* ``validation_accuracy`` (also a real attacker's rule): the same held-out share, and the trial
  that answers most of it right wins (ties: the lower answer loss). An answer is right by the
  rule the task is scored with (``answer_accuracy``). Answer loss can rank recipes against
  their accuracy: a recipe that moves the model a little lowers the loss of every answer
  without making any the most likely one.
* ``oracle``: the trial with the highest eval score wins. No attacker has the eval split; this
  is an upper bound on what the grid can reach, for worst-case reporting.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any, Literal, TypeVar

import torch
from pydantic import Field, ValidationError, field_validator, model_validator

from nftbench.api import Adversary, AttackContext, Release
from nftbench.data import (
    IGNORE,
    chat_text,
    encode_examples,
    example_batches,
    pad_id,
    pad_rows,
)
from nftbench.registry import ADVERSARIES, PluginConfig, register_adversary
from nftbench.train import TrainResult

#: how a sweep picks its trial (see the module's docstring)
Selection = Literal["validation", "validation_accuracy", "oracle"]


class SweepConfig(PluginConfig):
    """A grid of attacks and how the best one is chosen."""

    adversary: str = Field("full_ft", description="the registered adversary whose parameters "
                           "are swept")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="fixed parameters of every trial")
    grid: dict[str, list[Any]] = Field(
        default_factory=lambda: {"lr": [1e-4, 3e-4, 1e-3, 3e-3],
                                 "optimizer": ["adamw", "sgd_momentum"]},
        description="parameter -> values; trials are the product, in order (a value that is "
        "a mapping sets several parameters together, e.g. an optimizer with its weight decay)")
    max_trials: int | None = Field(None, ge=1, description="keep this many trials of the grid, "
                                   "drawn at random with the cell's seed (null: all)")
    select: Selection = Field(
        "validation", description="validation: lowest answer loss on held-out train data "
        "(realistic); validation_accuracy: most held-out answers right, ties by answer loss "
        "(realistic); oracle: highest eval score (an upper bound, not an attack)")
    validation_fraction: float = Field(0.2, gt=0, lt=1,
                                       description="(validation, validation_accuracy) share "
                                       "of train data held out")

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not v or any(not values for values in v.values()):
            raise ValueError("the grid needs at least one parameter with at least one value")
        return v

    @model_validator(mode="after")
    def _trials_validate(self) -> SweepConfig:
        """Every trial's config is checked now, not hours into a run."""
        if self.adversary == "sweep":
            raise ValueError("adversary: a sweep cannot sweep sweeps")
        try:
            cls = ADVERSARIES.get(self.adversary)
        except KeyError as err:
            raise ValueError(f"adversary: {err}") from None
        for values in itertools.product(*self.grid.values()):
            point = dict(zip(self.grid, values, strict=True))
            try:
                cls.Config(**trial_params(self.params, point))
            except ValidationError as err:
                raise ValueError(f"trial {point}: {err.errors()[0]['loc']}: "
                                 f"{err.errors()[0]['msg']}") from None
        return self


SweepConfigT = TypeVar("SweepConfigT", bound=SweepConfig)


def trial_params(params: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """One trial's parameters: the fixed ones, then the grid point's (a mapping value sets each
    of its fields)."""
    out = dict(params)
    for name, value in point.items():
        if isinstance(value, dict):
            out.update(value)
        else:
            out[name] = value
    return out


def held_out_split(examples: list[dict[str, Any]], fraction: float, seed: int
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held out): a validation-selected cell's split of the attacker's examples, drawn
    with the cell's seed; at least one example is held out."""
    order = random.Random(seed).sample(range(len(examples)), len(examples))
    cut = max(1, round(fraction * len(examples)))
    return [examples[i] for i in order[cut:]], [examples[i] for i in order[:cut]]


@torch.no_grad()
def answer_loss(model: torch.nn.Module, tokenizer: Any, examples: list[dict[str, Any]],
                batch_size: int = 64) -> float:
    """Mean loss on the answers of ``examples`` (the attacker's own validation signal)."""
    pad = pad_id(tokenizer)
    encoded = encode_examples(examples, tokenizer)
    batches = example_batches(encoded, min(batch_size, len(encoded)), seed=0, pad_id=pad)
    device = next(model.parameters()).device
    n = max(1, len(encoded) // min(batch_size, len(encoded)))
    losses = [float(model(**{k: v.to(device) for k, v in next(batches).items()}).loss)
              for _ in range(n)]
    return sum(losses) / len(losses)


@torch.no_grad()
def answer_accuracy(model: torch.nn.Module, tokenizer: Any, examples: list[dict[str, Any]],
                    batch_size: int = 64) -> float:
    """Share of ``examples`` the model answers right, by the rule lm-eval scores their task
    with: an example with ``choices`` is right when its label's choice has the highest
    log-likelihood after the prompt (``acc``); any other is right when greedy decoding
    reproduces its answer and stops (every completion token, the stop included, is the most
    likely next token: exact match, read off one forward pass instead of generating)."""
    right = [ok for ok, _ in answers(model, tokenizer, examples, batch_size)]
    return sum(right) / len(right)


def answers(model: torch.nn.Module, tokenizer: Any, examples: list[dict[str, Any]],
            batch_size: int = 64) -> list[tuple[bool, int | None]]:
    """Per example, whether :func:`answer_accuracy` counts it right and, for one with
    ``choices``, the index of the choice the model picks (None for a generated answer)."""
    rows, groups = [], []  # encoded (prompt + continuation) rows; per example, its rows' span
    for ex in examples:
        if "choices" in ex:
            chat = ex.get("prompt_format") == "chat"
            prompt = chat_text(ex, tokenizer)[0] if chat else ex["prompt"]
            bos = tokenizer.bos_token
            p = tokenizer(prompt, add_special_tokens=not (chat and bos and prompt.startswith(bos))
                          )["input_ids"]
            first = len(rows)
            for choice in ex["choices"]:  # lm-eval's delimiter: a space, none in chat format
                c = tokenizer(choice if chat else " " + choice,
                              add_special_tokens=False)["input_ids"]
                rows.append((p + c, [IGNORE] * len(p) + c))
            groups.append((first, len(ex["choices"]), ex["label"]))
        else:
            rows.extend(encode_examples([ex], tokenizer))
            groups.append((len(rows) - 1, 0, None))
    device = next(model.parameters()).device
    loglik, greedy = [], []
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in pad_rows(rows[i:i + batch_size],
                                                      pad_id(tokenizer)).items()}
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        scored = labels != IGNORE
        logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        loglik += (logp * scored).sum(1).tolist()
        greedy += ((logits.argmax(-1) == labels) | ~scored).all(1).tolist()
    out: list[tuple[bool, int | None]] = []
    for first, n, label in groups:
        if label is None:
            out.append((greedy[first], None))
        else:
            pick = max(range(n), key=lambda j: loglik[first + j])
            out.append((pick == label, pick))
    return out


# version 2: the cell reports the selected trial's diagnostics (capability_after) and outputs
@register_adversary("sweep", version="2")
class Sweep(Adversary[SweepConfigT]):
    """The best attack over a hyperparameter grid, with the attacker-effort curve."""

    def points(self, seed: int) -> list[dict[str, Any]]:
        """The grid points this cell tries, in order, each as the parameters it sets (a
        mapping value spread into its fields)."""
        cfg = self.config
        points = [dict(zip(cfg.grid, values, strict=True))
                  for values in itertools.product(*cfg.grid.values())]
        if cfg.max_trials and cfg.max_trials < len(points):
            points = random.Random(seed).sample(points, cfg.max_trials)
        return [trial_params({}, point) for point in points]

    def trials(self, seed: int) -> list[Adversary]:
        cls = ADVERSARIES.get(self.config.adversary)
        return [cls(cls.Config(**trial_params(self.config.params, point)))
                for point in self.points(seed)]

    def attack(self, release: Release, examples: list[dict[str, Any]],
               ctx: AttackContext) -> TrainResult:
        cfg = self.config
        train, held_out = examples, []
        if cfg.select != "oracle":
            train, held_out = held_out_split(examples, cfg.validation_fraction, ctx.seed)

        def evaluate(model: Any, tokenizer: Any) -> dict[str, float]:
            scores = ctx.evaluate(model, tokenizer)
            if held_out:
                scores["_validation_loss"] = answer_loss(model, tokenizer, held_out)
            if held_out and cfg.select == "validation_accuracy":
                scores["_validation_accuracy"] = answer_accuracy(model, tokenizer, held_out)
            return scores

        # the selected trial's result, with what it reported and left for the harness (its
        # capability_after, its trained model, its guesses): the cell is that trial's attack
        best: tuple[tuple[float, ...], TrainResult, AttackContext] | None = None
        best_score = float("nan")  # eval score of the trial selected so far
        selected = 0
        effort, tokens, flops = [], 0, 0.0
        points = self.points(ctx.seed)  # the grid points of self.trials, in the same order
        for i, (point, trial) in enumerate(zip(points, self.trials(ctx.seed), strict=True),
                                           start=1):
            trial_ctx = replace(ctx, evaluate=evaluate, diagnostics={}, outputs={},
                                desc=f"{ctx.desc} trial {i}")
            result = trial.attack(release, train, trial_ctx)
            tokens, flops = tokens + result.tokens, flops + result.flops
            final = result.points[-1].scores if result.points and not result.diverged else {}
            score = next((v for k, v in final.items() if not k.startswith("_")), float("nan"))
            # higher is better for every criterion; a diverged trial never wins
            merit: tuple[float, ...] = (
                (float("-inf"),) if not final
                else (score,) if cfg.select == "oracle"
                else (-final["_validation_loss"],) if cfg.select == "validation"
                else (final["_validation_accuracy"], -final["_validation_loss"]))
            if best is None or merit > best[0]:
                best = (merit, result, trial_ctx)
                best_score, selected = score, i
            effort.append({"trial": i, "point": point,
                           "params": trial.config.model_dump(mode="json"),
                           "score": score, "diverged": result.diverged, "tokens": tokens,
                           "flops": flops, "best_score": best_score})
        assert best is not None  # the grid is never empty
        ctx.diagnostics.update(best[2].diagnostics)
        ctx.outputs.update(best[2].outputs)
        ctx.report(effort=effort, trials=len(effort), selected_trial=selected)
        return best[1]
