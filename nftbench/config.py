"""The matrix config: one YAML file, validated completely before anything runs.

* ``-o key=value`` overrides any field before validation (``key`` is a dotted path; a list item is
  chosen by index or by its ``name``; ``value`` is parsed as YAML).
* A plugin parameter given as a list expands into named variants: ``lr: [1e-4, 1e-3]`` gives
  ``full_ft[lr=0.0001]`` and ``full_ft[lr=0.001]``. A field that itself takes a list (LoRA's
  ``target_modules``) sweeps only when given a list of lists.
* Every error names the field, the value and what is allowed; all errors are reported at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nftbench.models import ModelSpec
from nftbench.registry import ADVERSARIES, DEFENSES, TASKS, Plugin, Registry
from nftbench.train import ComputeConfig, OptimConfig
from nftbench.world import World, WorldConfig


class ConfigError(ValueError):
    """A config that does not validate; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str], source: str = "config") -> None:
        self.errors = errors
        super().__init__(f"invalid {source}:\n" + "\n".join(f"  - {e}" for e in errors))


class PretrainConfig(OptimConfig):
    """Pre-training of the base model on the corpus (shared by every defense that starts from it;
    defenses that pre-train themselves, like PMP, use the same budget). The optimizer fields
    are flat, as in every adversary's params (OptimConfig's, with pre-training's defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(800, ge=0, description="optimizer steps (0 for a hub model: use as is)")
    batch_size: int = Field(32, ge=1, description="sequences per step")
    seq_len: int = Field(64, ge=8, description="tokens per packed sequence")
    seed: int = Field(0, description="seed of initialization and data order (one base)")
    seeds: list[int] | None = Field(
        None, min_length=1,
        description="pre-training seeds, one base each: every defense is applied to every base, "
        "and intervals cover the variation across bases (overrides `seed`)")
    # tuned on the embedded world: at lr 5e-3 with weight decay 0.1 some pre-training seeds
    # never left the loss plateau
    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    schedule: str = Field("cosine", description="a registered schedule (see OptimConfig)")
    warmup_steps: int = Field(50, ge=0, description="linear warm-up steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor, as a fraction of lr")

    @model_validator(mode="before")
    @classmethod
    def _flat_optimizer(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "optim" in raw:
            fields = raw["optim"] if isinstance(raw["optim"], dict) else {}
            flat = ", ".join(f"{k}: {v}" for k, v in fields.items()) or "lr: 0.003, ..."
            raise ValueError(f"pretrain.optim is gone: the optimizer fields sit at pretrain's top "
                             f"level, as in every adversary's params; write pretrain: {{{flat}}}")
        return raw

    @model_validator(mode="after")
    def _one_way_to_name_bases(self) -> PretrainConfig:
        if self.seeds is not None:
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"seeds: pre-training seeds repeat: {self.seeds}")
            if "seed" in self.model_fields_set and self.seed not in self.seeds:
                raise ValueError("give either seed (one base) or seeds (several), not both")
            if self.steps == 0 and len(self.seeds) > 1:
                raise ValueError("steps is 0 (a hub model used as is): there is one base, so "
                                 "pretrain.seeds must name one seed")
        return self

    @property
    def bases(self) -> list[int]:
        """The pre-training seeds of the matrix's bases (a hub model used as is has one)."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def for_base(self, seed: int) -> PretrainConfig:
        """This config for the one base pre-trained with ``seed`` (what a defense sees)."""
        return self.model_copy(update={"seed": seed, "seeds": None})

    def key_payload(self, seed: int) -> dict[str, Any]:
        """What of this config names one base's pre-training in a stage key (not the other
        bases: adding a base never changes an existing base's key). The optimizer keeps the
        nested place it had when keys were first published, so flat fields changed no key."""
        return {"steps": self.steps, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "seed": seed, "optim": self.optim().model_dump(mode="json")}


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_size: int = Field(64, ge=1, description="lm-eval batch size")
    budget_points: int | list[int] = Field(
        5, description="points per attack curve: a count, evenly spaced from step 0 to the "
        "adversary's last step, or an explicit list of steps")
    include_path: list[str] = Field(
        default_factory=list, description="folders of your own lm-eval task YAMLs (as "
        "`lm_eval --include_path`), where a task's lm_eval_task is looked up by name; every "
        "file in them enters the keys of the stages that score such a task")

    @field_validator("include_path")
    @classmethod
    def _folders_exist(cls, v: list[str]) -> list[str]:
        missing = [p for p in v if not Path(p).expanduser().is_dir()]
        if missing:
            raise ValueError(f"folder(s) not found: {', '.join(missing)}")
        return v

    @field_validator("budget_points")
    @classmethod
    def _check_points(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 2:
            raise ValueError("needs at least 2 points (step 0 and the last step)")
        if isinstance(v, list) and (not v or min(v) < 0):
            raise ValueError("an explicit list must be non-empty steps >= 0")
        return v


class LimitsConfig(BaseModel):
    """Resource limits of a run. They decide what is recorded as failed, never a result, so
    they are not part of any cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cell_timeout_s: float | None = Field(
        None, gt=0, description="an attack cell running longer is stopped and recorded as "
        "failed, and the matrix goes on (None: no limit)")


class RestrictedDataConfig(BaseModel):
    """Who reads which examples of each restricted task's train split. By default the defense
    and the adversaries read all of it, so every example an attacker fine-tunes and validates
    on is one the defense was trained against; a cut makes the two disjoint, as for a defender
    who cannot know the attacker's data."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    defense_share: float | None = Field(
        None, gt=0, lt=1, description="cut each restricted task's train split in two, by "
        "example: the defense reads this share (rounded, at least one example), the adversaries "
        "fine-tune on the rest (null: both read all of it)")
    seed: int = Field(0, description="seed of the cut (which examples go to the defense)")


class PluginSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(description="registered plugin name")
    label: str | None = Field(None, description="name in results (default: name + swept values)")
    params: dict[str, Any] = Field(default_factory=dict, description="the plugin's config")


def _spec_list(v: Any) -> Any:
    if isinstance(v, list):
        return [{"name": x} if isinstance(x, str) else x for x in v]
    return v


class MatrixConfig(BaseModel):
    """A benchmark matrix: defenses x adversaries x restricted tasks x seeds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(description="run name")
    output_dir: str = Field("runs/{name}", description="run folder ({name} is replaced)")
    store_dir: str | None = Field(None, description="store folder (default: OUTPUT_DIR/store); "
                                  "share one between configs to share stages")
    model: ModelSpec = Field(default_factory=ModelSpec, description="architecture and weights")
    world: WorldConfig = Field(default_factory=WorldConfig, description="the embedded world")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="base model")
    defenses: list[PluginSpec] = Field(min_length=1, description="defenses to compare")
    adversaries: list[PluginSpec] = Field(min_length=1, description="attacks on every release")
    tasks: list[PluginSpec] = Field(min_length=1, description="capability and restricted tasks")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="attack seeds")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="evaluation")
    threads: int = Field(
        1, ge=1, description="torch CPU threads of every stage, whichever executor runs it. "
        "Fixed by the config because on some CPUs (AVX512 with AMX) the thread count changes "
        "float reductions and so the numbers; it enters every computing stage's key. Use "
        "`--workers N` to use N cores")
    compute: ComputeConfig = Field(
        default_factory=ComputeConfig, description="how every training stage runs on the "
        "machine: precision (bf16 autocast), micro_batch_size (gradient accumulation), "
        "gradient_checkpointing, compile, tf32; fields away from their defaults enter the keys "
        "of training stages")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="resource limits")
    restricted_data: RestrictedDataConfig = Field(
        default_factory=RestrictedDataConfig, description="whether the defense and the "
        "adversaries share each restricted task's train split (the default) or cut it in two")
    checkpoint_every_s: float = Field(
        600, ge=0, description="seconds between checkpoints of a long stage (SOPHON's outer "
        "loop) in the store, so a killed run resumes it where it stopped; not in any key")

    @field_validator("defenses", "adversaries", "tasks", mode="before")
    @classmethod
    def _names_to_specs(cls, v: Any) -> Any:
        return _spec_list(v)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    @property
    def store_path(self) -> Path:
        return Path(self.store_dir) if self.store_dir else self.run_dir / "store"


@dataclass(frozen=True)
class Variant:
    """One concrete plugin instance of the matrix, with its readable name."""

    kind: str
    label: str
    plugin: Plugin
    params: dict[str, Any]  # the fully resolved config, defaults included

    @property
    def name(self) -> str:
        return self.plugin.name

    @property
    def version(self) -> str:
        return self.plugin.version


@dataclass(frozen=True)
class MatrixData:
    """The data a matrix reads, resolved once: the embedded world and every task's examples by
    split. Fingerprints (in stage keys) and item counts (in results) are computed from it."""

    world: World
    #: task label -> split -> examples. With ``restricted_data.defense_share`` a restricted
    #: task's ``train`` is the adversaries' part and ``defense`` the defense's.
    examples: dict[str, dict[str, list[dict[str, Any]]]]

    @classmethod
    def load(cls, config: MatrixConfig, tasks: list[Variant]) -> tuple[MatrixData, list[str]]:
        """Every task's splits; a split that cannot be read is an error line, not an
        exception, so a config reports all of them together."""
        world = World(config.world)
        examples: dict[str, dict[str, list[dict[str, Any]]]] = {}
        errors = []
        for task in tasks:
            examples[task.label] = {}
            for split in task.plugin.splits:
                try:
                    examples[task.label][split] = task.plugin.examples(split, world)
                except (ValueError, KeyError, FileNotFoundError) as err:
                    errors.append(f"tasks ({task.label}), {split} split: {err}")
            share = config.restricted_data.defense_share
            train = examples[task.label].get("train")
            if share is not None and task.plugin.config.role == "restricted" and train:
                if len(train) < 2:
                    errors.append(f"restricted_data.defense_share: task {task.label!r} has "
                                  f"{len(train)} train example(s), too few to cut in two")
                    continue
                defense, attack = cut(train, share, config.restricted_data.seed)
                examples[task.label] |= {"train": attack, "defense": defense}
        return cls(world, examples), errors

    def fingerprints(self, tasks: list[Variant], include: str | None = None,
                     reader: Literal["adversary", "defense"] = "adversary") -> dict[str, str]:
        """Each task's fingerprint, of the data ``reader`` reads (they differ only for a
        restricted task cut by ``restricted_data``); ``include`` is that of the user's lm-eval
        task folders (:func:`nftbench.evaluation.include_fingerprint`), None without any."""
        return {t.label: t.plugin.fingerprint_of(self.read_by(t.label, reader), include)
                for t in tasks}

    def read_by(self, label: str, reader: Literal["adversary", "defense"]
                ) -> dict[str, list[dict[str, Any]]]:
        """A task's splits as ``reader`` sees them: its train split is the defense's part for
        the defense, the rest for an adversary (the whole split without a cut)."""
        splits = self.examples[label]
        if reader == "defense" and "defense" in splits:
            return {**splits, "train": splits["defense"]}
        return splits

    def eval_examples(self) -> dict[str, list[dict[str, Any]]]:
        """Each task's eval split, what lm-eval scores (empty for an lm-eval task by name)."""
        return {label: splits.get("eval", []) for label, splits in self.examples.items()}

    def n_items(self, label: str) -> int | None:
        """Eval items behind a score (None for a task scored by an lm-eval task by name)."""
        split = self.examples.get(label, {}).get("eval")
        return None if split is None else len(split)


def cut(examples: list[dict[str, Any]], share: float, seed: int
        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``examples`` in two disjoint parts, in their original order: a seeded random
    ``share`` of them (rounded, at least one and at most all but one) and the rest."""
    n = len(examples)
    k = min(max(round(share * n), 1), n - 1)
    chosen = set(random.Random(seed).sample(range(n), k))
    return ([ex for i, ex in enumerate(examples) if i in chosen],
            [ex for i, ex in enumerate(examples) if i not in chosen])


@dataclass(frozen=True)
class Matrix:
    config: MatrixConfig
    defenses: list[Variant]
    adversaries: list[Variant]
    tasks: list[Variant]
    #: the tasks' data, read once by :func:`resolve` (None when it was told not to)
    data: MatrixData | None = None

    def resolved_data(self) -> MatrixData:
        """The data, read now if :func:`resolve` skipped it (raises on a split it cannot
        read)."""
        if self.data is not None:
            return self.data
        data, errors = MatrixData.load(self.config, self.tasks)
        if errors:
            raise ConfigError(errors)
        return data

    @property
    def capability_tasks(self) -> list[Variant]:
        return [t for t in self.tasks if t.plugin.config.role == "capability"]

    @property
    def restricted_tasks(self) -> list[Variant]:
        return [t for t in self.tasks if t.plugin.config.role == "restricted"]


# ---------------------------------------------------------------------------------------------
# overrides


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` to a raw config dict in place."""
    if "=" not in assignment:
        raise ConfigError([f"override {assignment!r}: expected key=value"])
    key, value_text = assignment.split("=", 1)
    value = yaml.safe_load(value_text)
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i + 1])
        if isinstance(node, list):
            idx = _list_index(node, part, where)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError([f"override {key}: {'.'.join(parts[:i])} is not a mapping or list"])


def _list_index(items: list[Any], part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if -len(items) <= idx < len(items):
            return idx
        raise ConfigError([f"override {where}: index out of range (list has {len(items)})"])
    matches = [i for i, item in enumerate(items)
               if item == part or (isinstance(item, dict)
                                   and part in (item.get("label"), item.get("name")))]
    if len(matches) != 1:
        raise ConfigError([f"override {where}: {len(matches)} list items named {part!r}"])
    return matches[0]


# ---------------------------------------------------------------------------------------------
# errors


def _allowed_fields(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the model that owns the last element of ``loc``."""
    for part in loc[:-1]:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field else None
    return sorted(model.model_fields) if model is not None else None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_errors(err: ValidationError, prefix: str = "",
                  model: type[BaseModel] | None = None) -> list[str]:
    lines = []
    for e in err.errors():
        loc = e["loc"]
        path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        path = path.lstrip(".") or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{path}: unknown field (value {e['input']!r}){hint}")
        elif e["type"] == "missing":
            lines.append(f"{path}: required field is missing")
        else:
            value = e.get("input")
            shown = repr(value) if not isinstance(value, dict) else "{...}"
            msg = e["msg"].removeprefix("Value error, ")  # our own validators' messages
            lines.append(f"{path} = {shown}: {msg}")
    return lines


# ---------------------------------------------------------------------------------------------
# expansion


def _accepts_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_list(a) for a in typing.get_args(annotation))
    return False


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "+".join(_fmt(v) for v in value)
    return str(value)


def expand(spec: PluginSpec, registry: Registry, where: str) -> list[Variant]:
    """Validate one plugin spec against its config class and expand swept parameters."""
    cls = registry.get(spec.name)
    fields = cls.Config.model_fields
    axes: dict[str, list[Any]] = {}
    fixed: dict[str, Any] = {}
    for key, value in spec.params.items():
        field = fields.get(key)
        takes_list = field is not None and _accepts_list(field.annotation)
        sweep = isinstance(value, list) and (
            not takes_list or (value and all(isinstance(v, list) for v in value)))
        if sweep:
            if not value:
                raise ConfigError([f"{where}.params.{key}: an empty list sweeps nothing"])
            axes[key] = value
        else:
            fixed[key] = value
    variants = []
    errors: list[str] = []
    for combo in itertools.product(*axes.values()):
        params = {**fixed, **dict(zip(axes, combo, strict=True))}
        try:
            config = cls.Config(**params)
        except ValidationError as err:
            errors += format_errors(err, f"{where}.params", cls.Config)
            continue
        base = spec.label or spec.name
        swept = ",".join(f"{k}={_fmt(v)}" for k, v in zip(axes, combo, strict=True))
        label = f"{base}[{swept}]" if swept else base
        variants.append(Variant(kind=registry.kind, label=label, plugin=cls(config),
                                params=config.model_dump(mode="json")))
    if errors:
        raise ConfigError(sorted(set(errors)))
    return variants


def load_raw(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"config file not found: {path}"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: not valid YAML: {err}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of fields"])
    return raw


def resolve(raw: dict[str, Any], overrides: list[str] = (), check_data: bool = True) -> Matrix:
    """Validate a raw config (plus overrides) completely and expand it into a :class:`Matrix`.
    Raises :class:`ConfigError` listing every problem; writes nothing. ``check_data`` off skips
    loading every task's splits (the only check that needs a hub dataset's files)."""
    raw = yaml.safe_load(yaml.safe_dump(raw))  # a deep copy that overrides may mutate
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        config = MatrixConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, model=MatrixConfig)) from None
    errors: list[str] = []
    groups: dict[str, list[Variant]] = {}
    for field, registry in (("defenses", DEFENSES), ("adversaries", ADVERSARIES),
                            ("tasks", TASKS)):
        groups[field] = []
        for i, spec in enumerate(getattr(config, field)):
            try:
                groups[field] += expand(spec, registry, f"{field}[{i}]")
            except ConfigError as err:
                errors += err.errors
            except KeyError as err:
                errors.append(f"{field}[{i}].name = {spec.name!r}: {err}")
        labels = [v.label for v in groups[field]]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            errors.append(f"{field}: variant names repeat ({', '.join(dupes)}); give each a "
                          "distinct 'label' so results are never overwritten")
    if errors:
        raise ConfigError(errors)
    matrix = Matrix(config=config, **groups)
    if not matrix.restricted_tasks:
        raise ConfigError(["tasks: at least one task must have role 'restricted'"])
    for field in ("defenses", "adversaries", "tasks"):
        for v in getattr(matrix, field):
            errors += [f"{field} ({v.label}): {e}" for e in v.plugin.check(matrix)]
    data = None
    if check_data:
        data, data_errors = MatrixData.load(config, matrix.tasks)
        errors += data_errors
    if errors:
        raise ConfigError(errors)
    return dataclasses.replace(matrix, data=data)


def recorded_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config as a manifest recorded it, in today's schema: manifests written before the
    optimizer fields moved to pretrain's top level hold them under ``pretrain.optim`` (the
    keys they make are the same)."""
    pretrain = dict(config.get("pretrain") or {})
    pretrain |= pretrain.pop("optim", None) or {}
    return {**config, "pretrain": pretrain}


def load_config(path: str | Path, overrides: list[str] = ()) -> Matrix:
    return resolve(load_raw(path), overrides)
