"""Task definitions: the world source, the Hugging Face dataset path (offline, local files) and
validation of bad task input."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from nftbench.config import ConfigError, resolve
from nftbench.registry import TASKS
from nftbench.task import lm_eval_yaml, register_task_files
from nftbench.world import World, WorldConfig

WORLD = World(WorldConfig(n_entities=40))


def test_world_tasks_split_entities_disjointly() -> None:
    qa = TASKS.get("qa_city")()
    train = {ex["prompt"] for ex in qa.examples("train", WORLD)}
    evals = qa.examples("eval", WORLD)
    assert len(train) == len(WORLD.task_entities) and len(evals) == len(WORLD.heldout_entities)
    assert len(train) + len(evals) == 40 and len(train) == round(40 / 3)
    assert not train & {ex["prompt"] for ex in evals}
    assert evals[0]["prompt"].startswith("question : where does ")
    assert qa.examples("eval", WORLD) == evals  # deterministic


def test_world_is_deterministic_from_its_seed() -> None:
    a, b = World(WorldConfig(seed=3)), World(WorldConfig(seed=3))
    assert a.facts == b.facts and list(a.documents())[:5] == list(b.documents())[:5]
    assert World(WorldConfig(seed=4)).facts != a.facts


def test_the_world_fingerprint_covers_the_sentence_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage key built on the fingerprint must change when the corpus's wording does."""
    import nftbench.world as world

    before = World(WorldConfig(seed=3)).fingerprint
    assert World(WorldConfig(seed=3)).fingerprint == before
    assert World(WorldConfig(seed=3, qa_fraction=0.3)).fingerprint != before
    monkeypatch.setitem(world.QA_TEMPLATES, "pet", ["question : pet of {e} ? answer : {v} ."])
    assert World(WorldConfig(seed=3)).fingerprint != before


def write_rows(tmp_path: Path) -> dict[str, str]:
    rows = [{"question": f"what is {i} plus 1 ?", "target": str(i + 1)} for i in range(30)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    with (tmp_path / "test.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["question", "target"])
        w.writeheader()
        w.writerows(rows[20:])
    return {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.csv")}


def hf_task(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "qa_city", "label": "arith", "params": {
        "role": "restricted", "kind": "generative",
        "source": {"type": "hf", "path": "json", "data_files": {
            "train": write_rows(tmp_path)["train"], "test": str(tmp_path / "train.jsonl")}},
        "prompt": "{question}", "answer": "{target}", **extra}}


def test_hf_dataset_path_offline(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    files = write_rows(tmp_path)
    # one builder per file type is what datasets wants: read the train split from JSON lines
    tiny_raw["tasks"].append({"name": "qa_city", "label": "arith", "params": {
        "source": {"type": "hf", "path": "json", "data_files": {"train": files["train"],
                                                                "test": files["train"]}},
        "prompt": "{question}", "answer": "{target}", "n_eval": 5}})
    m = resolve(tiny_raw)
    task = next(t for t in m.tasks if t.label == "arith").plugin
    train = task.examples("train", None)
    assert len(train) == 20 and train[3] == {"prompt": "what is 3 plus 1 ?", "answer": "4"}
    assert len(task.examples("eval", None)) == 5


def test_hf_csv_dataset(tmp_path: Path) -> None:
    files = write_rows(tmp_path)
    cls = TASKS.get("qa_city")
    task = cls(cls.Config(source={"type": "hf", "path": "csv", "data_files": {
        "test": files["test"]}}, prompt="{question}", answer="{target}"))
    assert [ex["answer"] for ex in task.examples("eval", None)] == [str(i) for i in range(21, 31)]


def test_template_naming_a_missing_column_fails_validation(
        tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    tiny_raw["tasks"].append(hf_task(tmp_path, answer="{answer_text}"))
    with pytest.raises(ConfigError) as err:
        resolve(tiny_raw)
    assert "missing column(s) ['answer_text']" in str(err.value)
    assert "available: ['question', 'target']" in str(err.value)


def test_empty_split_fails_validation(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    spec = hf_task(tmp_path)
    spec["params"]["source"]["data_files"] = {"train": str(empty), "test": str(empty)}
    tiny_raw["tasks"].append(spec)
    with pytest.raises(ConfigError) as err:
        resolve(tiny_raw)
    assert "tasks (arith), train split: task 'qa_city': cannot load split 'train'" in str(err.value)


def test_task_file_with_unknown_field_is_refused(tmp_path: Path) -> None:
    spec = yaml.safe_load((Path(__file__).parent.parent / "tasks" / "qa_city.yaml").read_text())
    spec.update(name="qa_city_typo", promt="{entity}")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="promt"):
        register_task_files(tmp_path)


def test_lm_eval_configs() -> None:
    qa = TASKS.get("qa_city")()
    gen = lm_eval_yaml(qa, "nft_qa_city", Path("/tmp/x.jsonl"))
    assert gen["output_type"] == "generate_until"
    assert gen["generation_kwargs"]["until"] == ["\n", " ."]
    cls = TASKS.get("qa_city")
    mc = cls(cls.Config(kind="classification", source={"type": "world", "attribute": "color"},
                        prompt="{entity} likes"))
    cfg = lm_eval_yaml(mc, "nft_mc", Path("/tmp/y.jsonl"))
    assert cfg["output_type"] == "multiple_choice" and cfg["doc_to_choice"] == "choices"
    ex = mc.examples("eval", WORLD)[0]
    assert ex["choices"][ex["label"]] == ex["answer"]


def test_lm_eval_reads_the_fields_nftbench_wrote(tmp_path: Path) -> None:
    """The YAML names fields (`prompt`, `choices`, `label`, `answer`) instead of Jinja
    templates; lm-eval must return them as they are, not render a field name as text."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from nftbench.evaluation import lm_eval_name, write_lm_eval_tasks

    tasks = {name: TASKS.get(name)() for name in ("qa_city", "qa_pet")}
    write_lm_eval_tasks(tasks, {k: t.examples("eval", WORLD) for k, t in tasks.items()},
                        tmp_path)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    for label, task in tasks.items():
        name = lm_eval_name(label, task)
        built = get_task_dict([name], manager)[name]
        docs = list(built.test_docs())
        expected = task.examples("eval", WORLD)
        assert len(docs) == len(expected)
        for doc, ex in zip(docs, expected, strict=True):
            assert built.doc_to_text(doc) == ex["prompt"]
            if task.kind == "classification":
                assert built.doc_to_choice(doc) == ex["choices"]
                assert built.doc_to_target(doc) == ex["label"]
            else:
                assert built.doc_to_target(doc) == ex["answer"]


def test_a_yaml_in_a_plugin_folder_that_is_not_a_task_is_skipped(tmp_path: Path,
                                                                   caplog) -> None:
    """A run config kept beside plugins is not a task: it is skipped with a warning that names
    it, and the task files beside it still register."""
    (tmp_path / "my_run.yaml").write_text(yaml.safe_dump(
        {"name": "my_run", "defenses": ["none"], "adversaries": ["full_ft"],
         "tasks": ["qa_city"]}))
    spec = yaml.safe_load((Path(__file__).parent.parent / "tasks" / "qa_city.yaml").read_text())
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(dict(spec, name="qa_city_beside_run")))
    with caplog.at_level("WARNING", logger="nftbench"):
        names = register_task_files(tmp_path)
    assert names == ["qa_city_beside_run"]
    assert "my_run.yaml is not a task definition" in caplog.text
