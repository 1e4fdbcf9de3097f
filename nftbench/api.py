"""What plugins see: the base classes of defenses and adversaries and their contexts.

The boundary between private and public is drawn here. A defense gets a :class:`DefenseContext`
with a ``release_dir`` (public) and a ``private_dir`` (never released). An adversary gets only a
:class:`Release` (a path to the public directory, checked against an allow-list), the task's
train examples, and an :class:`AttackContext` that can train and evaluate but holds no path to
the store or to any private artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nftbench.checkpoint import Checkpoint
from nftbench.data import corpus_batches, encode_examples, example_batches, mixed_batches, pad_id
from nftbench.models import RELEASE_FILES, ModelSpec, init_model, load_release, save_release
from nftbench.registry import ConfigT, Plugin
from nftbench.train import ComputeConfig, OptimConfig, TrainResult, train


@dataclass(frozen=True)
class Release:
    """A public release: dense safetensors weights, config and tokenizer. Nothing else."""

    path: Path
    spec: ModelSpec

    def __post_init__(self) -> None:
        extra = sorted(p.name for p in Path(self.path).iterdir()
                       if p.name not in RELEASE_FILES and not p.name.startswith("model-"))
        if extra:
            raise ValueError(f"{self.path} is not a release: it holds {extra}")

    def load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_release(self.path, self.spec)


@dataclass
class Authorization:
    """How the owner fine-tunes its own release with its private artifacts (PMP: only the
    masked elements move). Built by :meth:`Defense.authorize` for one loaded model."""

    grad_hook: Callable[[], None] | None = None  # after every backward pass
    after_step: Callable[[int], bool | None] | None = None  # after every optimizer step


@dataclass
class AttackOutcome:
    """What an attack on a defense's release left behind, for the defense's
    :meth:`Defense.attack_diagnostics` (the harness builds it; no adversary sees it)."""

    release: Path  # the public release the attack started from
    model: PreTrainedModel | None  # the model the attack trained last (None if it diverged)
    guesses: dict[str, Any]  # what the adversary guessed of private artifacts, by kind
    result: TrainResult


class Defense(Plugin[ConfigT]):
    """Turns a model spec (+ corpus, + restricted-task data if it needs it) into a release."""

    #: set True if the defense trains on restricted tasks' data: it then receives them and the
    #: scorers, and their fingerprints enter its cache key (without it, it receives neither)
    uses_restricted_data: ClassVar[bool] = False
    #: set True if the owner can fine-tune its own release with private artifacts
    #: (:meth:`authorize`): the matrix then gets the owner's rows, marked authorized
    authorized_tuning: ClassVar[bool] = False

    def defend(self, ctx: DefenseContext) -> None:
        """Build the release with ``ctx.save_release``; private artifacts go to
        ``ctx.private_dir``."""
        raise NotImplementedError

    def authorize(self, private_dir: Path) -> Callable[[PreTrainedModel], Authorization]:
        """The owner's authorized fine-tuning, from the private artifacts in ``private_dir``:
        a function of the loaded release model. Only called where ``authorized_tuning``."""
        raise NotImplementedError(f"{type(self).__name__} sets authorized_tuning but does not "
                                  "implement authorize()")

    def attack_diagnostics(self, private_dir: Path, outcome: AttackOutcome) -> dict[str, Any]:
        """Numbers about one attack on this defense's release that need its private artifacts
        (PMP: how much of the update fell on the private mask, how well a guessed mask
        matches it). Stored with the attack's curve; the default measures nothing."""
        return {}

    def build_log(self, private_dir: Path) -> list[dict[str, Any]]:
        """How this release was built, step by step, read from its private artifacts: rows of
        ``step``, ``metric``, ``value`` and, where a row concerns one task, ``task`` (SOPHON:
        the capability at every guard check, the suppression loss, its probe fine-tunes'
        scores). The run's results table keeps them (role ``defense``) and the report plots
        each metric against the step; a metric ``<m>:threshold`` is drawn as a grey line in
        ``<m>``'s panel (SOPHON's guard). The default logs nothing."""
        return []


@dataclass
class DefenseContext:
    spec: ModelSpec
    tokenizer: PreTrainedTokenizerBase
    corpus: torch.Tensor  # packed pre-training blocks [n, seq_len]
    pretrain: Any  # nftbench.config.PretrainConfig: the dense base's budget, to match
    base: Release | None  # the pre-trained dense base
    #: restricted tasks' train examples (only the defense's part where restricted_data cuts them)
    restricted: dict[str, list[dict[str, Any]]]
    release_dir: Path
    private_dir: Path
    progress: bool = True
    #: scores the named tasks' eval splits (diagnostics, e.g. SOPHON's test fine-tunes)
    evaluate: Callable[[PreTrainedModel, PreTrainedTokenizerBase, list[str]],
                       dict[str, float]] | None = None
    #: scores the matrix's capability tasks (e.g. SOPHON's intactness guard)
    evaluate_capability: Callable[[PreTrainedModel, PreTrainedTokenizerBase],
                                  dict[str, float]] | None = None

    #: the packed corpus with the facts of the named world attributes filtered out (the same
    #: documents and order otherwise); None where the corpus is not the embedded world's
    corpus_without: Callable[[Sequence[str]], torch.Tensor] | None = None

    #: saves and restores the stage's state, so a defense that runs for hours survives a
    #: killed process (a no-op where no store is behind the context)
    checkpoint: Checkpoint = field(default_factory=lambda: Checkpoint(None))
    #: how training runs on the machine (the matrix's ``compute``): pass it to ``train``
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def init_model(self, seed: int) -> PreTrainedModel:
        return init_model(self.spec, self.tokenizer, seed)

    def corpus_batches(self, batch_size: int, seed: int):
        return corpus_batches(self.corpus, batch_size, seed)

    def save_release(self, model: PreTrainedModel) -> None:
        save_release(model, self.tokenizer, self.release_dir)


@dataclass
class AttackContext:
    """Training and evaluation for an adversary; it holds no path to private data."""

    seed: int
    evaluate: Callable[[PreTrainedModel, PreTrainedTokenizerBase], dict[str, float]]
    budget_points: Callable[[int], list[int]]
    progress: bool = True
    desc: str = "attack"
    #: free-form numbers an adversary reports (stored with the curve)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    #: what the attack leaves for the harness besides its curve: guesses of private artifacts
    #: by kind (:meth:`report_guess`) and the model :meth:`finetune` trained last ("model")
    outputs: dict[str, Any] = field(default_factory=dict)
    #: scores the capability tasks; run once on the attacked model after training
    evaluate_capability: Callable[[PreTrainedModel, PreTrainedTokenizerBase],
                                  dict[str, float]] | None = None
    #: set by the harness only in authorized cells (the owner tuning its own release); None in
    #: every attack, so no adversary is ever handed a private artifact
    authorization: Callable[[PreTrainedModel], Authorization] | None = None
    #: how training runs on the machine (the matrix's ``compute``); :meth:`finetune` uses it
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    #: the train splits of the matrix's capability tasks (label -> examples): public data an
    #: attacker may train on besides the task, to keep the model working (``data_mix``). An
    #: attack's key already covers them (the capability tasks' fingerprints)
    public_examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def report(self, **values: Any) -> None:
        """Record diagnostics of this attack (JSON-serializable values)."""
        self.diagnostics.update(values)

    def report_guess(self, kind: str, value: Any) -> None:
        """Hand the harness a guess of a private artifact (``"mask"``: parameter name -> bool
        tensor). The defense, not the adversary, scores it against the real one
        (:meth:`Defense.attack_diagnostics`)."""
        if isinstance(value, dict):
            value = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in value.items()}
        self.outputs[f"guess:{kind}"] = value

    def guesses(self) -> dict[str, Any]:
        return {k.removeprefix("guess:"): v for k, v in self.outputs.items()
                if k.startswith("guess:")}

    def finetune(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 examples: list[dict[str, Any]], *, steps: int, batch_size: int,
                 optim: OptimConfig, params: Sequence[Any] | None = None,
                 grad_hook: Callable[[], None] | None = None,
                 mix_in: list[dict[str, Any]] | None = None,
                 mix_share: float = 0.0) -> TrainResult:
        """Fine-tune on task examples (loss on answers), scoring at every budget point. With
        ``mix_in``, every batch holds ``round(mix_share * batch_size)`` of those examples and
        the rest from ``examples`` (:func:`nftbench.data.mixed_batches`)."""
        torch.manual_seed(self.seed)
        pad = pad_id(tokenizer)
        encoded = encode_examples(examples, tokenizer)
        if mix_in:
            batches = mixed_batches(encoded, encode_examples(mix_in, tokenizer), batch_size,
                                    mix_share, self.seed, pad)
        else:
            batches = example_batches(encoded, batch_size, self.seed, pad)
        after_step = None
        if self.authorization is not None:
            owner = self.authorization(model)
            after_step = owner.after_step
            grad_hook = chain(grad_hook, owner.grad_hook)
        self.outputs["model"] = model  # the harness hands it to the defense's diagnostics
        result = train(model, batches, steps, optim, params=params,
                       eval_at=self.budget_points(steps),
                       on_eval=lambda step: self.evaluate(model, tokenizer),
                       grad_hook=grad_hook, after_step=after_step, compute=self.compute,
                       desc=self.desc,
                       progress=self.progress)
        if self.evaluate_capability is not None and not result.diverged:
            with torch.no_grad():  # what the attack cost the model's normal use
                self.report(capability_after=self.evaluate_capability(model.eval(), tokenizer))
        return result


class Adversary(Plugin[ConfigT]):
    """Fine-tunes a public release on a task under a budget and returns the curve."""

    #: the owner of a defense with authorized tuning (PMP) also runs this recipe, restricted
    #: by the defense's private artifacts, in rows marked authorized (plain fine-tuning only)
    owner_recipe: ClassVar[bool] = False

    def attack(self, release: Release, examples: list[dict[str, Any]],
               ctx: AttackContext) -> TrainResult:
        raise NotImplementedError


def chain(*hooks: Callable[[], None] | None) -> Callable[[], None] | None:
    """One hook that runs the given ones in order (None if there are none)."""
    present = [h for h in hooks if h is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def run() -> None:
        for hook in present:
            hook()

    return run
