"""Tasks: a train split an adversary fine-tunes on, an eval split scored through lm-eval, a
role (``capability`` or ``restricted``) and a kind (``generative`` or ``classification``).

Most tasks are declarative: a YAML file in ``tasks/`` (or a plugin folder) names a data source
(the embedded world or any Hugging Face dataset), prompt and answer templates, a role and a kind,
and becomes a registered :class:`TemplateTask`. A Python task subclasses :class:`TemplateTask`
and overrides :meth:`TemplateTask.records`.

Text format, shared by fine-tuning and lm-eval so that both see the same strings:
``prompt + " " + answer + "\\n"``. lm-eval's ``generate_until`` gets ``prompt`` as context and
stops at ``until``; ``multiple_choice`` scores ``" " + choice`` after ``prompt`` by
log-likelihood (lm-eval's default target delimiter is one space). A model prompted in chat
format (``model.prompt_format: chat``) sees both through its chat template instead
(:func:`nftbench.data.chat_text`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from nftbench.registry import TASKS, Plugin, PluginConfig
from nftbench.world import World

log = logging.getLogger("nftbench")

Split = Literal["train", "eval"]


class WorldSource(BaseModel):
    """Records drawn from the embedded world (one per entity of the split)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["world"] = "world"
    attribute: str = Field(description="world attribute the task asks about (city, color, ...)")


class HFSource(BaseModel):
    """Records from any Hugging Face dataset, loaded with ``datasets.load_dataset``.

    ``path`` is a hub id, a local dataset folder, or a builder name such as ``json``/``csv`` with
    ``data_files``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["hf"] = "hf"
    path: str = Field(description="dataset id, local folder, or builder (json, csv, parquet)")
    name: str | None = Field(None, description="dataset configuration name")
    data_files: dict[str, str] | None = Field(None, description="split -> local file")
    train_split: str = Field("train", description="split the adversary fine-tunes on")
    eval_split: str = Field("test", description="split that is scored")

    @model_validator(mode="after")
    def _files_exist(self) -> HFSource:
        for split, file in (self.data_files or {}).items():
            if "://" not in file and not Path(file).expanduser().exists():
                raise ValueError(f"data_files.{split}: file not found: {file}")
        return self


Source = Annotated[WorldSource | HFSource, Field(discriminator="type")]


class TaskConfig(PluginConfig):
    """A declarative task."""

    role: Literal["capability", "restricted"] = Field(
        description="capability: the release must keep it; restricted: what an attacker wants")
    kind: Literal["generative", "classification"] = Field(
        description="generative: exact match of generated text; classification: the answer is one "
        "of a few label strings, scored by log-likelihood")
    source: Source | None = Field(
        None, description="where the records come from (optional for a capability task scored "
        "by lm_eval_task alone)")
    prompt: str = Field(description="prompt template; {field} names a record field")
    answer: str = Field("{value}", description="answer template (generative), or the label "
                        "string of the gold choice (classification)")
    choices: str = Field("choices", description="(classification) record field holding the list "
                         "of label strings")
    label: str = Field("label", description="(classification) record field holding the gold index")
    until: tuple[str, ...] = Field(("\n", " ."), description="(generative) stop strings")
    max_gen_toks: int = Field(8, ge=1, description="(generative) generation budget in tokens")
    n_train: int | None = Field(None, ge=1, description="cap on train examples (null: all)")
    n_eval: int | None = Field(None, ge=1, description="cap on eval examples (null: all)")
    lm_eval_task: str | None = Field(
        None, description="score with this lm-eval task by name instead of the generated one")
    lm_eval_metric: str = Field("acc", description="metric read from lm_eval_task's results")
    description: str = Field("", description="one line shown by `nftbench list`")

    @model_validator(mode="after")
    def _templates_parse(self) -> TaskConfig:
        if self.source is None and not self.lm_eval_task:
            raise ValueError("source: a task needs a data source or an lm_eval_task")
        if self.source is None and self.role == "restricted":
            raise ValueError("source: a restricted task needs a data source to fine-tune on")
        for field_name in ("prompt", "answer"):
            try:
                template_fields(getattr(self, field_name))
            except ValueError as err:
                raise ValueError(f"{field_name}: bad template: {err}") from None
        return self


def template_fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


class Task(Plugin[TaskConfig]):
    """Base of tasks. Subclasses provide :meth:`examples`."""

    @property
    def role(self) -> str:
        return self.config.role

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def splits(self) -> tuple[Split, ...]:
        """The splits nftbench reads: none of lm-eval's own tasks, no train split without data."""
        out: list[Split] = []
        if self.config.source is not None:
            out.append("train")
            if not self.config.lm_eval_task:
                out.append("eval")
        return tuple(out)

    def examples(self, split: Split, world: World | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def fingerprint(self, world: World | None) -> str:
        """Content hash of the data nftbench reads (and of the lm-eval task it names): enters
        every cache key that depends on this task."""
        return self.fingerprint_of({split: self.examples(split, world) for split in self.splits})

    def fingerprint_of(self, examples: dict[str, list[dict[str, Any]]],
                       include: str | None = None) -> str:
        """:meth:`fingerprint` of examples already read (split -> examples). ``include``: the
        fingerprint of the user's lm-eval task folders, where the lm-eval task named by
        ``lm_eval_task`` may be defined (None: there are none)."""
        data = [examples[split] for split in self.splits]
        parts: list[Any] = [data, self.config.lm_eval_task]
        if include is not None and self.config.lm_eval_task:
            # appended only when there are folders, so every key without them stays as it was
            parts.append(include)
        payload = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class TemplateTask(Task):
    """A task whose examples are templates filled from records of a data source."""

    def records(self, split: Split, world: World | None) -> list[dict[str, Any]]:
        src = self.config.source
        if src is None:
            raise ValueError(f"task {self.name!r} has no data source; it is scored by lm-eval "
                             f"task {self.config.lm_eval_task!r}")
        if isinstance(src, WorldSource):
            if world is None:
                raise ValueError(f"task {self.name!r} needs the embedded world (world: ...)")
            return world.records(src.attribute, split)
        import datasets  # heavy import: only for tasks that use it

        split_name = src.train_split if split == "train" else src.eval_split
        try:
            ds = datasets.load_dataset(src.path, src.name, data_files=src.data_files,
                                       split=split_name)
        except Exception as err:  # datasets raises many types, some with empty messages
            raise ValueError(f"task {self.name!r}: cannot load split {split_name!r} of "
                             f"{src.path!r}: {type(err).__name__}: {err}") from err
        return [dict(row) for row in ds]

    def examples(self, split: Split, world: World | None) -> list[dict[str, Any]]:
        """The split's examples: records that lack a field the templates need (None or empty)
        or, for classification, carry a label outside their choices are dropped; an error
        says so if none is left."""
        cfg = self.config
        rows = self.records(split, world)
        if not rows:
            raise ValueError(f"task {self.name!r}: the {split} split is empty")
        needed = template_fields(cfg.prompt)
        if cfg.kind == "classification":
            needed |= {cfg.choices, cfg.label}
        else:
            needed |= template_fields(cfg.answer)
        missing = needed - set(rows[0])
        if missing:
            raise ValueError(f"task {self.name!r}: template names missing column(s) "
                             f"{sorted(missing)}; available: {sorted(rows[0])}")
        usable, dropped = [], Counter()
        for row in rows:
            problem = _unusable_row(self, row, needed)
            if problem:
                dropped[problem] += 1
            else:
                usable.append(row)
        if not usable:
            why = ", ".join(f"{n} {p}" for p, n in dropped.most_common())
            raise ValueError(f"task {self.name!r}: the {split} split is empty after filtering: "
                             f"all {len(rows)} records were dropped ({why})")
        cap = cfg.n_train if split == "train" else cfg.n_eval
        rows = usable[:cap] if cap else usable
        out = []
        for row in rows:
            ex: dict[str, Any] = {"prompt": cfg.prompt.format(**row)}
            if cfg.kind == "classification":
                choices = [str(c) for c in row[cfg.choices]]
                ex["choices"], ex["label"] = choices, int(row[cfg.label])
                ex["answer"] = choices[ex["label"]]
            else:
                ex["answer"] = cfg.answer.format(**row)
            out.append(ex)
        return out


def _unusable_row(task: TemplateTask, row: dict[str, Any], needed: set[str]) -> str | None:
    for name in sorted(needed):
        if row.get(name) is None or row.get(name) == "":
            return f"without {name!r}"
    if task.config.kind == "classification":
        try:
            label = int(row[task.config.label])
        except (TypeError, ValueError):
            return "with a label that is not an integer"
        if not 0 <= label < len(row[task.config.choices]):
            return "with a label outside their choices"
    return None


def training_text(example: dict[str, Any]) -> tuple[str, str]:
    """(prompt, completion) of one example, in the format lm-eval scores."""
    return example["prompt"], " " + example["answer"] + "\n"


def lm_eval_yaml(task: Task, lm_eval_name: str, data_file: Path) -> dict[str, Any]:
    """The lm-eval task config that scores ``task``'s eval split stored at ``data_file``."""
    cfg = task.config
    # Fields by name, not Jinja templates ("{{prompt}}"): lm-eval returns a named field as is,
    # while a template is compiled anew for every document, which was half of the cost of an
    # evaluation here. The strings are the same either way (tests/test_lm_eval_parity.py).
    common = {
        "task": lm_eval_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "doc_to_text": "prompt",
        "metadata": {"version": 1.0},
    }
    if cfg.kind == "classification":
        return {**common, "output_type": "multiple_choice", "doc_to_choice": "choices",
                "doc_to_target": "label",
                "metric_list": [{"metric": "acc", "aggregation": "mean",
                                 "higher_is_better": True}]}
    return {**common, "output_type": "generate_until", "doc_to_target": "answer",
            "generation_kwargs": {"until": list(cfg.until), "max_gen_toks": cfg.max_gen_toks,
                                  "do_sample": False},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                             "higher_is_better": True,
                             "regexes_to_ignore": [r"^\s+", r"\s+$"]}]}


def define_task(spec: dict[str, Any], origin: str = "") -> type[TemplateTask]:
    """Register a declarative task from a dict (a parsed YAML file). The YAML's values become the
    defaults of the task's config, so a matrix can still override any field."""
    spec = dict(spec)
    try:
        name = spec.pop("name")
    except KeyError:
        raise ValueError(f"{origin}: a task definition needs a 'name'") from None
    validated = TaskConfig(**spec)  # raises a ValidationError naming the bad field
    fields: dict[str, Any] = {
        key: (TaskConfig.model_fields[key].annotation,
              Field(getattr(validated, key), description=TaskConfig.model_fields[key].description))
        for key in spec
    }
    config_cls = create_model(f"{name}_config", __base__=TaskConfig, **fields)
    doc = validated.description or f"{validated.role} {validated.kind} task"
    cls = type(name, (TemplateTask,), {"Config": config_cls, "__doc__": doc, "__qualname__": name,
                                        "__module__": f"nftbench.tasks.{name}"})
    return TASKS.register(name)(cls)


#: top-level keys of a run config that no task definition has (a config kept beside plugins)
RUN_CONFIG_KEYS = frozenset({"defenses", "adversaries", "tasks", "seeds", "pretrain"})


def register_task_files(folder: str | Path) -> list[str]:
    """Register every ``*.yaml`` task definition in ``folder``; returns the names. A YAML file
    that is not a task definition (a run config kept beside plugins) is skipped with a
    warning that names it."""
    names = []
    for path in sorted(Path(folder).glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if not isinstance(spec, dict) or "name" not in spec or RUN_CONFIG_KEYS & spec.keys():
            log.warning("%s is not a task definition (a task file is a mapping with a 'name' and "
                        "no %s); skipped", path, "/".join(sorted(RUN_CONFIG_KEYS)))
            continue
        if spec["name"] in TASKS:
            names.append(spec["name"])
            continue
        try:
            names.append(define_task(spec, origin=str(path)).name)
        except Exception as err:
            raise ValueError(f"{path}: {err}") from err
    return names
