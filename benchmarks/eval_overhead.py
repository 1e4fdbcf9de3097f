"""Share of an attack cell's wall time spent in evaluation, and the time per curve point.

Runs the matrix (finished stages come from the store; their recorded times are those of the run
that computed them) and prints one row per restricted task from every attack cell's record:
the whole cell (loading, training, evaluation, saving), training alone, evaluation alone.

    .venv/bin/python benchmarks/eval_overhead.py configs/default.yaml
    .venv/bin/python benchmarks/eval_overhead.py configs/default.yaml --templates 5

``--templates N`` also times one evaluation of each restricted task on the first release, N
times each way, alternating: the task YAML as nftbench writes it (fields by name) against the
same YAML with Jinja templates (``{{prompt}}``, ``{{choices}}``, ...), which lm-eval compiles
anew for every document.
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import contextlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from nftbench.config import load_config
from nftbench.engine import Runner
from nftbench.plugins import load_plugins


def templated(config: dict) -> dict:
    """The same lm-eval task with Jinja templates where nftbench names fields."""
    out = dict(config)
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target"):
        if key in out:
            out[key] = "{{" + out[key] + "}}"
    return out


def time_templates(runner: Runner, matrix, repeats: int) -> pd.DataFrame:
    """Seconds per evaluation of each restricted task, fields by name against templates."""
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    from nftbench.evaluation import lm_eval_name, metric_key
    from nftbench.models import load_release
    from nftbench.task import lm_eval_yaml

    job = next(j for j in runner.plan if j.kind == "defend")
    model, tokenizer = load_release(runner.store.path(job.kind, job.key) / "release",
                                    matrix.config.model)
    torch.set_num_threads(matrix.config.threads or 1)
    source = runner.run_dir / "lm_eval_tasks"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dicts = {}
        for way in ("fields", "templates"):
            folder = Path(tmp) / way
            folder.mkdir()
            for t in matrix.restricted_tasks:
                name = lm_eval_name(t.label, t.plugin)
                config = lm_eval_yaml(t.plugin, f"{name}_{way}", source / f"{name}.jsonl")
                config = templated(config) if way == "templates" else config
                (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))
                manager = TaskManager(include_path=str(folder), include_defaults=False)
                dicts[way, t.label] = get_task_dict([f"{name}_{way}"], manager)
        with contextlib.redirect_stderr(io.StringIO()):
            lm = HFLM(pretrained=model, tokenizer=tokenizer,
                      batch_size=matrix.config.eval.batch_size)
            times: dict[tuple[str, str], list[float]] = {k: [] for k in dicts}
            scores: dict[tuple[str, str], dict] = {}
            for _ in range(repeats):
                for key, task_dict in dicts.items():
                    start = time.perf_counter()
                    scores[key] = evaluate(lm, task_dict, bootstrap_iters=0,
                                           log_samples=False)["results"]
                    times[key].append(time.perf_counter() - start)
    for t in matrix.restricted_tasks:
        fields, jinja = (min(times[w, t.label]) for w in ("fields", "templates"))
        metric = metric_key(t.plugin)
        same = all(len(scores[w, t.label]) == 1 for w in ("fields", "templates")) and (
            next(iter(scores["fields", t.label].values()))[metric]
            == next(iter(scores["templates", t.label].values()))[metric])
        rows.append({"task": t.label, "fields_s": fields, "templates_s": jinja,
                     "templates / fields": jinja / fields, "same_scores": same})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/default.yaml")
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--templates", type=int, default=0, metavar="N",
                        help="also time fields by name against Jinja templates, N repeats")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_plugins()
    matrix = load_config(args.config, args.override)
    runner = Runner(matrix, progress=False)
    runner.run()
    kinds = {t.label: t.plugin.kind for t in matrix.tasks}
    rows = []
    for stage in runner.stages:
        if stage.kind != "attack" or stage.status != "ok":
            continue
        path = runner.store.path("attack", stage.key)
        meta = json.loads((path / "entry.json").read_text())
        curve = json.loads((path / "curve.json").read_text())
        task = meta["payload"]["task"]
        rows.append({"task": task, "kind": kinds[task], "cell_s": meta["wall_s"],
                     "train_s": curve["wall_s"], "eval_s": curve["eval_s"],
                     "points": len(curve["points"])})
    df = pd.DataFrame(rows)
    per_task = df.groupby(["task", "kind"]).agg(
        cells=("cell_s", "size"), cell_s=("cell_s", "mean"), train_s=("train_s", "mean"),
        eval_s=("eval_s", "mean"), points=("points", "mean")).reset_index()
    per_task["eval_share"] = per_task.eval_s / per_task.cell_s
    per_task["s_per_point"] = per_task.eval_s / per_task.points
    # the rest: loading the release, the capability check of the attacked model, saving
    per_task["not_training_share"] = 1 - per_task.train_s / per_task.cell_s
    total = df[["cell_s", "eval_s", "train_s"]].sum()
    print(f"config: {args.config}  (means over cells; times in seconds)")
    print(per_task.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"all cells: curve evaluation is {total.eval_s / total.cell_s:.1%} of attack wall "
          f"time; everything but training {1 - total.train_s / total.cell_s:.1%}")
    if args.templates:
        table = time_templates(runner, matrix, args.templates)
        print(f"one evaluation of each restricted task on the first release (best of "
              f"{args.templates}, alternating):")
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
