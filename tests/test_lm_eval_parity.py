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


# -- prompt_format: chat -----------------------------------------------------------------------

#: Zephyr's form: a turn is "<|role|>\n" + content + EOS + "\n"; the generation prompt ends in
#: a newline (which lm-eval moves from the context to the scored continuation)
ZEPHYR = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
          "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
#: how each test tokenizer is built: (the tokenizer adds a BOS, its template writes one)
CHAT_TOKENIZERS = {"no BOS": (False, False), "BOS added": (True, False),
                   "BOS in the template": (True, True)}


def chat_tokenizer(kind: str) -> Any:
    """A local tokenizer with a chat template (no hub): the world's BPE, a BOS added by the
    tokenizer, by its template (Llama 3's way: then lm-eval adds no second one), or neither."""
    from tokenizers.processors import TemplateProcessing

    from nftbench.models import train_tokenizer
    from nftbench.world import World, WorldConfig

    adds_bos, template_bos = CHAT_TOKENIZERS[kind]
    tok = train_tokenizer(World(WorldConfig(n_entities=24, n_documents=300)).documents(), 300)
    if adds_bos:
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    tok.chat_template = ("{{ bos_token }}" if template_bos else "") + ZEPHYR
    return tok


class FixedFacts:
    """Eight facts, the same in every split: a model that memorized them answers them all."""

    CITIES = ("paris", "rome", "oslo", "lima")

    @classmethod
    def tasks(cls) -> dict[str, Any]:
        from nftbench.task import TaskConfig, TemplateTask

        class Rows(TemplateTask):
            def records(self, split: str, world: Any) -> list[dict[str, Any]]:
                return [{"entity": f"person {n}", "value": cls.CITIES[i % 4],
                         "choices": list(cls.CITIES), "label": i % 4}
                        for i, n in enumerate("abcdefgh")]

        world = {"type": "world", "attribute": "city"}
        prompt = "where does {entity} live ?"
        return {"gen": Rows(TaskConfig(role="restricted", kind="generative", source=world,
                                       prompt=prompt)),
                "mc": Rows(TaskConfig(role="restricted", kind="classification", source=world,
                                      prompt=prompt))}


def tiny_model(tok: Any) -> Any:
    from nftbench.models import ModelSpec, TinyLlamaConfig, init_model

    spec = ModelSpec(tiny=TinyLlamaConfig(hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64,
                                          vocab_size=len(tok)))
    return init_model(spec, tok, 0)


@pytest.mark.parametrize("kind", sorted(CHAT_TOKENIZERS))
def test_chat_fine_tuning_sees_the_tokens_lm_eval_scores(kind: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """In chat format the fine-tuning sequence opens with exactly the tokens lm-eval feeds the
    model for the same document with ``apply_chat_template``: the whole context of a generated
    task, and for each choice of a multiple-choice task the context and the choice it scores
    (the answer right after the generation prompt, no delimiter); the loss falls on the
    answer and the template's end of turn. Contexts come from lm-eval's own rendering (the
    Evaluator's requests), tokens from its own encoders."""
    import lm_eval.evaluator
    from lm_eval.models.huggingface import HFLM

    from nftbench.data import IGNORE, encode_examples, in_prompt_format
    from nftbench.evaluation import Evaluator

    tok = chat_tokenizer(kind)
    tasks = FixedFacts.tasks()
    examples = {name: t.examples("eval", None) for name, t in tasks.items()}
    requests: dict[str, dict[int, list[Any]]] = {}
    evaluate = lm_eval.evaluator.evaluate

    def spy(*args: Any, **kw: Any) -> Any:
        out = evaluate(*args, **kw)
        for name, samples in out["samples"].items():
            requests[name] = {s["doc_id"]: s["arguments"] for s in samples}
        return out

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", spy)
    model = tiny_model(tok)
    Evaluator(tasks, examples, tmp_path, batch_size=4, chat=True)(model, tok)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1)

    for doc, ex in enumerate(examples["gen"]):
        ((context, _),) = requests["nft_gen"][doc]
        assert context.startswith(tok.bos_token) is CHAT_TOKENIZERS[kind][1]
        ids, labels = encode_examples(in_prompt_format([ex], "chat"), tok)[0]
        n_prompt = labels.count(IGNORE)
        fed = lm.tok_batch_encode([context])[0][0].tolist()
        assert ids[:n_prompt] == fed  # the prompt exactly as lm-eval generates from it
        assert fed.count(tok.bos_token_id) == (kind != "no BOS")  # one BOS, never two
        answer = tok(ex["answer"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        assert ids[n_prompt:][:len(answer)] == answer  # then the answer and the end of turn
        assert labels[n_prompt:] == ids[n_prompt:]
    for doc, ex in enumerate(examples["mc"]):
        for (context, continuation), choice in zip(requests["nft_mc"][doc], ex["choices"],
                                                   strict=True):
            assert continuation == choice  # chat: no target delimiter
            ids, _ = encode_examples(in_prompt_format([{**ex, "answer": choice}], "chat"),
                                     tok)[0]
            ctx, cont = lm._encode_pair(context, continuation)
            assert ids[:len(ctx) + len(cont)] == ctx + cont  # what lm-eval scores, as tuned


def test_a_model_tuned_in_chat_format_scores_one(tmp_path: Path) -> None:
    """Fine-tuned through the chat template until it knows eight answers (generated), a model
    scores 1.0 on them through lm-eval with the chat template, generated and picked among
    choices; scored without the template it does not."""
    from nftbench.data import encode_examples, example_batches, in_prompt_format, pad_id
    from nftbench.evaluation import Evaluator
    from nftbench.optim import OptimConfig
    from nftbench.train import train

    tok = chat_tokenizer("BOS in the template")
    tasks = FixedFacts.tasks()
    examples = {name: t.examples("eval", None) for name, t in tasks.items()}
    model = tiny_model(tok)
    encoded = encode_examples(in_prompt_format(examples["gen"], "chat"), tok)
    result = train(model, example_batches(encoded, 8, 0, pad_id(tok)), 150,
                   OptimConfig(lr=1e-2), progress=False)
    assert result.losses[-1] < 0.05
    scores = Evaluator(tasks, examples, tmp_path / "chat", 8, chat=True)(model.eval(), tok)
    assert scores == {"gen": 1.0, "mc": 1.0}
    plain = Evaluator(tasks, examples, tmp_path / "plain", 8)(model, tok)
    assert plain["gen"] < 1.0


def test_chat_without_a_chat_template_is_refused(tmp_path: Path) -> None:
    """Where the config cannot see the tokenizer (a hub id), the first stage that renders a
    chat refuses a tokenizer without a template, fine-tuning and scoring alike."""
    from nftbench.data import encode_examples, in_prompt_format
    from nftbench.evaluation import Evaluator

    tok = chat_tokenizer("no BOS")
    tok.chat_template = None
    tasks = FixedFacts.tasks()
    examples = {name: t.examples("eval", None) for name, t in tasks.items()}
    with pytest.raises(ValueError, match=r"prompt_format is 'chat' but the tokenizer .* has "
                                         r"no chat template"):
        encode_examples(in_prompt_format(examples["gen"], "chat"), tok)
    with pytest.raises(ValueError, match="has no chat template"):
        Evaluator(tasks, examples, tmp_path, chat=True)(tiny_model(tok), tok)


def test_chat_enters_the_keys_of_the_stages_that_tune_or_score_on_tasks(
        tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    """``prompt_format: chat`` changes the keys of utility and attack stages and of a defense
    that trains on the tasks (SOPHON), and no other: the base, scratch and a defense that
    never sees a task are the same stages in either format."""
    from nftbench.config import resolve
    from nftbench.engine import Runner

    folder = tmp_path / "instruct"
    chat_tokenizer("no BOS").save_pretrained(folder)
    tiny_raw["model"] = {"name_or_path": str(folder)}
    tiny_raw["defenses"] = ["none", "sophon"]

    def keys(prompt_format: str) -> dict[tuple[str, str], str]:
        raw = dict(tiny_raw, model=dict(tiny_raw["model"], prompt_format=prompt_format))
        plan = Runner(resolve(raw), progress=False, executor="sequential").plan
        return {(j.kind, j.label): j.key for j in plan}

    plain, chat = keys("plain"), keys("chat")
    changed = {(kind, label.split(" / ")[0]) for (kind, label), key in plain.items()
               if chat[kind, label] != key}
    assert {kind for kind, _ in changed} == {"utility", "attack", "defend"}
    assert ("defend", "sophon") in changed and ("defend", "none") not in changed


def test_a_matrix_in_chat_format_tunes_and_scores_through_the_template(
        tiny_raw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole pipeline on a local instruction-style model: adversaries receive the train
    examples in chat format (what every plugin's encode_examples renders with the template),
    every lm-eval evaluation renders the template, and ``lm_eval --apply_chat_template``
    scores a release as nftbench reports."""
    import lm_eval.evaluator
    import transformers as tf

    import nftbench.api
    from nftbench.config import resolve
    from nftbench.engine import Runner

    folder = tmp_path / "instruct"
    tok = chat_tokenizer("BOS added")
    config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=64,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    tuned, contexts = [], []
    encode, evaluate = nftbench.api.encode_examples, lm_eval.evaluator.evaluate

    def spy_encode(examples: list[dict[str, Any]], tokenizer: Any) -> Any:
        tuned.extend(examples)
        return encode(examples, tokenizer)

    def spy_evaluate(*args: Any, **kw: Any) -> Any:
        out = evaluate(*args, **kw)
        contexts.extend(s["arguments"][0][0] for samples in out["samples"].values()
                        for s in samples)
        return out

    monkeypatch.setattr(nftbench.api, "encode_examples", spy_encode)
    monkeypatch.setattr(lm_eval.evaluator, "evaluate", spy_evaluate)
    tiny_raw["model"] = {"name_or_path": str(folder), "prompt_format": "chat"}
    tiny_raw["pretrain"]["steps"] = 2
    tiny_raw["tasks"] = ["recall_city", "qa_color"]  # multiple choice: a score above 0
    outcome = Runner(resolve(tiny_raw), progress=False, executor="sequential").run()
    assert not outcome.failed, [(s.label, s.reason) for s in outcome.failed]
    assert tuned and all(ex["prompt_format"] == "chat" for ex in tuned)
    assert contexts and all(c.startswith("<|user|>\n") and c.endswith("<|assistant|>\n")
                            for c in contexts)

    r = outcome.results
    at_release = r[(r.release == "none") & (r.metric == "score") & (r.step == 0)
                   & (r.seed.fillna(0) == 0)]
    ours = dict(zip(at_release.task, at_release.value, strict=True))
    run = Path(tiny_raw["output_dir"])
    out = tmp_path / "lm_eval_out"
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
           "--model_args", f"pretrained={run / 'releases' / 'none-base0'}", "--device", "cpu",
           "--include_path", str(run / "lm_eval_tasks"), "--apply_chat_template",
           "--tasks", "nft_recall_city,nft_qa_color", "--batch_size", "16",
           "--output_path", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=300)
    (result_file,) = out.rglob("results_*.json")
    theirs = json.loads(result_file.read_text())["results"]
    assert theirs["nft_qa_color"]["acc,none"] == ours["qa_color"] > 0
    assert theirs["nft_recall_city"]["exact_match,none"] == ours["recall_city"]


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_the_attackers_held_out_accuracy_scores_as_lm_eval_does(prompt_format: str,
                                                                tmp_path: Path) -> None:
    """The sweep's ``validation_accuracy`` counts an answer right by lm-eval's rule: item by
    item, ``answer_accuracy`` agrees with lm-eval's exact match (generated) and acc (picked
    among choices), in plain and chat format, on a model that knows half of the answers."""
    from nftbench.adversaries.sweep import answer_accuracy, answers
    from nftbench.data import encode_examples, example_batches, in_prompt_format, pad_id
    from nftbench.evaluation import Evaluator
    from nftbench.optim import OptimConfig
    from nftbench.train import train

    chat = prompt_format == "chat"
    tok = chat_tokenizer("BOS added")
    tasks = FixedFacts.tasks()
    examples = {name: t.examples("eval", None) for name, t in tasks.items()}
    model = tiny_model(tok)
    known = in_prompt_format(examples["gen"][:4], prompt_format)
    train(model, example_batches(encode_examples(known, tok), 4, 0, pad_id(tok)), 150,
          OptimConfig(lr=1e-2), progress=False)
    theirs = Evaluator(tasks, examples, tmp_path, 8, chat=chat)(model.eval(), tok).per_item
    for name, task_examples in examples.items():
        ours = "".join(str(int(answer_accuracy(model, tok, [ex], batch_size=3)))
                       for ex in in_prompt_format(task_examples, prompt_format))
        assert ours == theirs[name], name
        assert "0" in ours and "1" in ours, name  # not the trivial agreement of all or none
        whole = answer_accuracy(model, tok, in_prompt_format(task_examples, prompt_format),
                                batch_size=3)  # batches that cut through an item's choices
        assert whole == ours.count("1") / len(ours)
        picked = answers(model, tok, in_prompt_format(task_examples, prompt_format), 3)
        for ex, (right, pick) in zip(task_examples, picked, strict=True):
            if "choices" in ex:  # the pick is the labelled choice exactly when it is right
                assert 0 <= pick < len(ex["choices"]) and right == (pick == ex["label"])
            else:
                assert pick is None
