"""lm-eval's own command line scores a saved release exactly as nftbench reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
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
