"""lm-eval's own command line scores a saved release exactly as nftbench reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import EXAMPLE_PLUGINS

from nftbench.cli import main


def test_lm_eval_cli_gives_the_reported_scores(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    # qa_color is multiple choice: a barely trained model scores well above 0 by log-likelihood,
    # so agreement is not the trivial 0 == 0; recall_city checks the generate_until path.
    tiny_raw["tasks"] = ["recall_city", "qa_city", "qa_color"]
    tiny_raw["world"]["n_entities"] = 64
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(path), "--quiet", "--plugins", str(EXAMPLE_PLUGINS)]) == 0
    run = Path(tiny_raw["output_dir"])
    results = pd.read_parquet(run / "results.parquet")
    at_release = results[(results.release == "none") & (results.metric == "score")
                         & (results.step == 0) & (results.seed.fillna(0) == 0)]
    ours = dict(zip(at_release.task, at_release.value, strict=True))

    out = tmp_path / "lm_eval_out"
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
           "--model_args", f"pretrained={run / 'releases' / 'none-base0'}", "--device", "cpu",
           "--include_path", str(run / "lm_eval_tasks"),
           "--tasks", "nft_recall_city,nft_qa_city,nft_qa_color", "--batch_size", "16",
           "--output_path", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=300)
    (result_file,) = out.rglob("results_*.json")
    theirs = json.loads(result_file.read_text())["results"]
    assert theirs["nft_qa_color"]["acc,none"] == ours["qa_color"]
    assert ours["qa_color"] > 0
    assert theirs["nft_qa_city"]["exact_match,none"] == ours["qa_city"]
    assert theirs["nft_recall_city"]["exact_match,none"] == ours["recall_city"]


def test_fine_tuning_sees_the_tokens_lm_eval_scores() -> None:
    """For a tokenizer that adds a BOS (as Llama's, Mistral's and Gemma's do), the fine-tuning
    sequence is BOS + prompt + answer, as lm-eval encodes the prompt and the whole string when
    it scores; and for one that adds nothing, it is unchanged."""
    from lm_eval.models.huggingface import HFLM
    from tokenizers.processors import TemplateProcessing

    from nftbench.data import encode_examples
    from nftbench.models import ModelSpec, TinyLlamaConfig, init_model, train_tokenizer
    from nftbench.world import World, WorldConfig

    plain = train_tokenizer(World(WorldConfig(n_entities=16, n_documents=200)).documents(), 300)
    with_bos = train_tokenizer(World(WorldConfig(n_entities=16, n_documents=200)).documents(),
                               300)
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", with_bos.bos_token_id)])
    example = {"prompt": "question : where does anna live ? answer :", "answer": "paris"}
    spec = ModelSpec(tiny=TinyLlamaConfig(hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=64,
                                          vocab_size=300))
    for tok, bos in ((plain, False), (with_bos, True)):
        ids, labels = encode_examples([example], tok)[0]
        lm = HFLM(pretrained=init_model(spec, tok, 0), tokenizer=tok, batch_size=1)
        context, continuation = lm._encode_pair(example["prompt"], " " + example["answer"])
        assert (ids[0] == tok.bos_token_id) is bos
        n_prompt = sum(label == -100 for label in labels)
        assert ids[:n_prompt] == context  # the prompt exactly as lm-eval scores it
        assert ids[n_prompt:][:len(continuation)] == continuation


def user_task_folder(folder: Path, world: dict[str, Any]) -> Path:
    """A folder of the user's own lm-eval tasks, as ``lm_eval --include_path`` reads it: one
    few-shot multiple-choice task over local JSONL files (the world's colors)."""
    from nftbench.world import World, WorldConfig

    folder.mkdir()
    w = World(WorldConfig(**world))
    files = {}
    for split, ours in (("train", "train"), ("test", "eval")):
        files[split] = folder / f"colors_{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in w.records("color", ours)))
    (folder / "my_color.yaml").write_text(yaml.safe_dump({
        "task": "my_color_mc", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {k: str(v) for k, v in files.items()}},
        "training_split": "train", "test_split": "test", "fewshot_split": "train",
        "num_fewshot": 2, "output_type": "multiple_choice",
        "doc_to_text": "question : which color does {{entity}} like ? answer :",
        "doc_to_choice": "choices", "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0}}))
    return folder


def test_a_task_from_the_users_include_path_scores_as_lm_eval_does(
        tiny_raw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A capability task named by ``lm_eval_task`` and defined in the user's own folder
    (``eval.include_path``): nftbench reports what ``lm_eval --include_path`` scores, item by
    item. The task is few-shot: every evaluation of the run (the releases' utility, each
    attack's capability_after) shows the model the shots the command line shows it."""
    import lm_eval.evaluator

    contexts: list[dict[int, Any]] = []  # per evaluation of the task: doc -> its requests
    evaluate = lm_eval.evaluator.evaluate

    def spy(*args: Any, **kw: Any) -> Any:
        out = evaluate(*args, **kw)
        if "my_color_mc" in out["samples"]:
            contexts.append({s["doc_id"]: [list(a) for a in s["arguments"]]
                             for s in out["samples"]["my_color_mc"]})
        return out

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", spy)
    folder = user_task_folder(tmp_path / "my_tasks", tiny_raw["world"])
    tiny_raw["tasks"] = ["qa_city", {"name": "lm_eval_capability", "label": "my_color",
                                         "params": {"lm_eval_task": "my_color_mc",
                                                    "lm_eval_metric": "acc"}}]
    tiny_raw["eval"]["include_path"] = [str(folder)]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(path), "--quiet"]) == 0
    run = Path(tiny_raw["output_dir"])
    results = pd.read_parquet(run / "results.parquet")
    (ours,) = results[(results.release == "none") & (results.task == "my_color")
                      & (results.metric == "score")].itertuples()

    out = tmp_path / "lm_eval_out"
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
           "--model_args", f"pretrained={run / 'releases' / 'none-base0'}", "--device", "cpu",
           "--include_path", str(folder), "--tasks", "my_color_mc", "--batch_size", "16",
           "--output_path", str(out), "--log_samples"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=300)
    (result_file,) = out.rglob("results_*.json")
    theirs = json.loads(result_file.read_text())["results"]["my_color_mc"]["acc,none"]
    (samples_file,) = out.rglob("samples_my_color_mc_*.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()),
                     key=lambda s: s["doc_id"])
    assert ours.value == theirs
    assert 0 < ours.value < 1  # not the trivial agreement of 0 == 0
    assert ours.items == "".join(str(int(s["acc"])) for s in samples)
    shots = {s["doc_id"]: [[a["arg_0"], a["arg_1"]] for a in s["arguments"].values()]
             for s in samples}
    assert len(contexts) == 4  # none's and scratch's utility, each attack's capability_after
    assert all(c == shots for c in contexts)


def test_the_users_task_folder_enters_the_keys_of_the_stages_that_score_it(
        tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    """The folder's content (not its path) enters the fingerprint of a task scored by an
    lm-eval task by name, so the stages that score it (utility, and every attack's
    capability_after) get new keys when a file in it changes; pre-training, the defenses and
    the fingerprints of nftbench's own tasks do not depend on it."""
    from nftbench.config import resolve
    from nftbench.engine import Runner

    folder = user_task_folder(tmp_path / "my_tasks", tiny_raw["world"])
    tiny_raw["tasks"] = ["qa_city", {"name": "lm_eval_capability", "label": "my_color",
                                         "params": {"lm_eval_task": "my_color_mc"}}]

    def keys(include: list[str]) -> dict[tuple[str, str], str]:
        raw = dict(tiny_raw, eval=dict(tiny_raw["eval"], include_path=include))
        plan = Runner(resolve(raw), progress=False, executor="sequential").plan
        return {(j.kind, j.label): j.key for j in plan}

    without, first = keys([]), keys([str(folder)])
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder, copy)
    assert keys([str(copy)]) == first  # the content decides, not where it lies
    (folder / "my_color.yaml").write_text((folder / "my_color.yaml").read_text()
                                          .replace("num_fewshot: 2", "num_fewshot: 1"))
    edited = keys([str(folder)])
    for a, b in ((without, first), (first, edited)):
        changed = {kind for (kind, label), key in a.items() if b[kind, label] != key}
        assert changed == {"utility", "attack"}
