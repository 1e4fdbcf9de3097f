"""The lm-eval bridge: nftbench scores models exactly as lm-eval's own command line would.

For every task it writes the eval split as JSONL and an lm-eval task YAML into one folder, so::

    lm_eval --model hf --model_args pretrained=RELEASE_DIR \\
            --include_path RUN_DIR/lm_eval_tasks --tasks nft_qa_city

reproduces the score nftbench reports (add ``--include_path`` for each of the config's
``eval.include_path``, the user's own lm-eval task folders, and ``--apply_chat_template`` for a
model prompted in chat format, ``model.prompt_format: chat``). Task objects are built once per
run; each evaluation wraps the in-memory model in lm-eval's ``HFLM`` (no save/reload) and calls
``lm_eval.evaluator.evaluate``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from nftbench.models import require_chat_template
from nftbench.store import write_text_atomic
from nftbench.task import Task, lm_eval_yaml

LM_EVAL_PREFIX = "nft_"
#: what an evaluation stage stores; enters the key of every stage that stores scores, so a
#: change of format recomputes them instead of mixing formats (2: per-item outcomes kept)
EVAL_FORMAT = 2
#: the few-shot sampler's seed of lm-eval's command line and simple_evaluate
#: (lm_eval.defaults.DEFAULT_OTHER_SEED)
FEWSHOT_SEED = 1234


class Scores(dict[str, float]):
    """Task label -> score, and ``per_item``: label -> the outcome of every eval item in
    lm-eval's document order, as a string of ``0``/``1`` (absent for a metric that is not
    0/1 per item). Paired intervals need them: two models scored on the same items."""

    def __init__(self, *args: Any, per_item: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.per_item: dict[str, str] = dict(per_item or {})


def item_outcomes(samples: list[dict[str, Any]], key: str) -> str | None:
    """The per-item outcomes of lm-eval's logged ``samples`` for the metric ``key``
    (``metric,filter``), in document order; None where an item's value is not 0 or 1."""
    metric, _, filt = key.partition(",")
    rows = sorted((s for s in samples if s.get("filter", "none") == (filt or "none")),
                  key=lambda s: s["doc_id"])
    values = [s.get(metric) for s in rows]
    if not values or any(v not in (0, 1, 0.0, 1.0, True, False) for v in values):
        return None
    return "".join("1" if v else "0" for v in values)


def lm_eval_name(label: str, task: Task) -> str:
    """The lm-eval task that scores the task variant ``label``: its named lm-eval task, or the
    generated ``nft_<label>`` (non-identifier characters of a variant name become ``_``)."""
    return task.config.lm_eval_task or LM_EVAL_PREFIX + re.sub(r"\W+", "_", label).strip("_")


def metric_key(task: Task) -> str:
    if task.config.lm_eval_task:  # "acc_norm" or, with a filter, "exact_match,strict-match"
        metric = task.config.lm_eval_metric
        return metric if "," in metric else f"{metric},none"
    return "acc,none" if task.kind == "classification" else "exact_match,none"


def write_lm_eval_tasks(tasks: dict[str, Task], eval_examples: dict[str, list[dict[str, Any]]],
                        folder: Path) -> Path:
    """Write each generated task's eval data (``eval_examples``, by label) and lm-eval YAML
    under ``folder``. Each file is replaced atomically: concurrent workers of one run write the
    same content side by side."""
    folder.mkdir(parents=True, exist_ok=True)
    for label, task in tasks.items():
        if task.config.lm_eval_task:
            continue
        name = lm_eval_name(label, task)
        data_file = folder / f"{name}.jsonl"
        lines = "".join(json.dumps(ex) + "\n" for ex in eval_examples[label])
        write_text_atomic(data_file, lines)
        config = lm_eval_yaml(task, name, data_file)
        write_text_atomic(folder / f"{name}.yaml", yaml.safe_dump(config, sort_keys=False))
    return folder


def include_fingerprint(folders: Sequence[str | Path]) -> str | None:
    """Content hash of the user's lm-eval task folders: every file's path (relative to its
    folder) and bytes, YAML, data and Python helpers alike (what lm-eval reads of them);
    caches and hidden files excluded. None for no folder."""
    if not folders:
        return None
    digest = hashlib.sha256()
    for i, folder in enumerate(folders):
        root = Path(folder).expanduser()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            digest.update(f"{i}/{rel.as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _task_objects(task_dict: dict[Any, Any]) -> Iterator[Any]:
    """The lm-eval Task objects of a (possibly nested, for groups) task dict."""
    for value in task_dict.values():
        if isinstance(value, dict):
            yield from _task_objects(value)
        elif hasattr(value, "set_fewshot_seed"):
            yield value


class Evaluator:
    """Scores in-memory models on a fixed set of tasks through lm-eval. ``include_path``: the
    user's lm-eval task folders, searched for the tasks named by ``lm_eval_task``; ``chat``:
    prompts go through the tokenizer's chat template (lm-eval's ``apply_chat_template``)."""

    def __init__(self, tasks: dict[str, Task], eval_examples: dict[str, list[dict[str, Any]]],
                 folder: Path, batch_size: int = 64,
                 include_path: Sequence[str | Path] = (), chat: bool = False) -> None:
        from lm_eval.tasks import TaskManager, get_task_dict

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        write_lm_eval_tasks(tasks, eval_examples, folder)
        # nftbench's folder last: lm-eval lets a later folder's task override an earlier one's
        paths = [str(Path(p).expanduser().resolve()) for p in include_path] + [str(folder)]
        named = {t.config.lm_eval_task for t in tasks.values() if t.config.lm_eval_task}
        manager = TaskManager(include_path=paths, include_defaults=False)
        if not named <= set(manager.all_tasks):  # lm-eval's own tasks too (indexing: ~6 s)
            manager = TaskManager(include_path=paths, include_defaults=True)
        self.tasks = dict(tasks)
        self.batch_size = batch_size
        self.chat = chat
        # Built once, reused for every evaluation of every model in the run.
        self._task_dicts = {label: get_task_dict([lm_eval_name(label, t)], manager)
                            for label, t in tasks.items()}

    def __call__(self, model: Any, tokenizer: Any, names: list[str] | None = None
                 ) -> Scores:
        """Score ``model`` on the tasks ``names`` (labels; default: all) -> label -> score,
        with every item's outcome."""
        from lm_eval.evaluator import evaluate
        from lm_eval.models.huggingface import HFLM

        if self.chat:
            require_chat_template(tokenizer)
        scores = Scores()
        # lm-eval draws a progress bar per request batch and warns that it got a model object;
        # both would bury nftbench's own per-cell bars, so its stderr is kept for errors only.
        with contextlib.redirect_stderr(io.StringIO()):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
            for name in names or list(self.tasks):
                task = self.tasks[name]
                # A few-shot task draws its shots with a generator that lm-eval's command
                # line seeds before it evaluates; these task objects serve every evaluation of
                # the run, so it is seeded before each: every model sees the command line's
                # shots (unseeded, each evaluation drew others at random).
                for task_obj in _task_objects(self._task_dicts[name]):
                    task_obj.set_fewshot_seed(seed=FEWSHOT_SEED)
                # with a chat template, shots as turns: lm-eval's command line's default
                out = evaluate(lm, self._task_dicts[name], bootstrap_iters=0, log_samples=True,
                               apply_chat_template=self.chat, fewshot_as_multiturn=self.chat)
                lm_name, key = lm_eval_name(name, task), metric_key(task)
                scores[name] = float(out["results"][lm_name][key])
                items = item_outcomes(out.get("samples", {}).get(lm_name, []), key)
                if items is not None:
                    scores.per_item[name] = items
        return scores
