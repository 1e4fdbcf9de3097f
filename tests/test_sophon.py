"""SOPHON: the losses on known logits, the first-order suppression gradient against its
analytic value, the intactness guard, presets, and a matrix with a held-out restricted task."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from nftbench.api import DefenseContext, Release
from nftbench.checkpoint import Checkpoint
from nftbench.config import ConfigError, PretrainConfig, resolve
from nftbench.data import pack_corpus
from nftbench.defenses.sophon import (
    STATS_FILE,
    Sophon,
    SophonConfig,
    Strategy,
    Suppression,
    suppression_loss,
)
from nftbench.engine import Runner
from nftbench.models import ModelSpec, TinyLlamaConfig, init_model, save_release, train_tokenizer
from nftbench.registry import TASKS
from nftbench.report import combine_runs, write_report
from nftbench.world import World, WorldConfig

SPEC = ModelSpec(tiny=TinyLlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=300))


# -- losses ------------------------------------------------------------------------------------

def test_losses_on_uniform_logits() -> None:
    scores, y = torch.zeros(3, 4), torch.tensor([0, 1, 3])
    assert float(suppression_loss(scores, y, "klu")) == pytest.approx(0.0, abs=1e-6)
    assert float(suppression_loss(scores, y, "entropy")) == pytest.approx(-math.log(4))
    assert float(suppression_loss(scores, y, "ice_paper")) == pytest.approx(-math.log(0.75))
    assert float(suppression_loss(scores, y, "ice_code")) == pytest.approx(math.log(4))


def test_losses_on_known_logits() -> None:
    scores, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    z = [2.0, 0.0, -1.0]
    total = sum(math.exp(v) for v in z)
    p = [math.exp(v) / total for v in z]
    assert float(suppression_loss(scores, y, "klu")) == pytest.approx(
        -sum(math.log(3 * q) for q in p) / 3, rel=1e-5)
    assert float(suppression_loss(scores, y, "ice_paper")) == pytest.approx(
        -math.log(1 - p[0]), rel=1e-5)
    neg = sum(math.exp(-v) for v in z)
    assert float(suppression_loss(scores, y, "ice_code")) == pytest.approx(
        -math.log(math.exp(-2.0) / neg), rel=1e-5)
    assert float(suppression_loss(scores, y, "entropy")) == pytest.approx(
        sum(q * math.log(q) for q in p), rel=1e-5)
    # the paper's and the code's ICE are different numbers on the same logits
    assert abs(float(suppression_loss(scores, y, "ice_paper"))
               - float(suppression_loss(scores, y, "ice_code"))) > 1.0
    # p_y -> 1 stays finite
    assert math.isfinite(float(suppression_loss(torch.tensor([[60.0, 0.0]]), y, "ice_paper")))


# -- the first-order suppression gradient ------------------------------------------------------

class Bigram(torch.nn.Module):
    """logits at position t = W[x_t]: every gradient has a closed form."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.W = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator()
                                                .manual_seed(0)))

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.W[input_ids]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return SimpleNamespace(logits=logits, loss=loss)


class FixedData:
    def __init__(self, support, query) -> None:
        self._support, self._query = support, query

    def support(self, batch_size: int):
        return self._support

    def query(self, n: int):
        return self._query


def analytic_row_grads(W: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, kind: str
                       ) -> torch.Tensor:
    """d/dW of the mean over answer positions: CE (p - onehot) or KLU (p - 1/V), by hand."""
    V = W.shape[0]
    grad = torch.zeros_like(W)
    pairs = [(int(ids[b, t]), int(labels[b, t + 1])) for b in range(ids.shape[0])
             for t in range(ids.shape[1] - 1) if labels[b, t + 1] != -100]
    for x, y in pairs:
        p = torch.softmax(W[x], -1)
        target = F.one_hot(torch.tensor(y), V).float() if kind == "ce" else torch.full((V,),
                                                                                       1 / V)
        grad[x] += (p - target) / len(pairs)
    return grad


def test_first_order_gradient_with_k_1_matches_the_analytic_one() -> None:
    V, lr = 6, 0.5
    model = Bigram(V)
    ids = torch.tensor([[0, 1, 2, 3], [4, 5, 1, 0]])
    labels = torch.tensor([[-100, -100, 2, 3], [-100, 5, 1, 0]])
    q_ids = torch.tensor([[3, 2, 4], [1, 1, 5]])
    q_labels = torch.tensor([[-100, 2, 4], [-100, -100, 5]])
    support = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    query = {"kind": "generative", "input_ids": q_ids, "attention_mask": torch.ones_like(q_ids),
             "labels": q_labels}
    sup = Suppression(model, "klu")
    before = model.W.detach().clone()
    sup.simulate(Strategy(optimizer="sgd", lr=lr, batch_size=2), FixedData(support, query),
                 inner_steps=1, query_batch=2)
    W = model.W.detach()
    assert torch.equal(W, before)  # the real weights did not move
    adapted = W - lr * analytic_row_grads(W, ids, labels, "ce")
    expected = analytic_row_grads(adapted, q_ids, q_labels, "klu")
    assert torch.allclose(model.W.grad, expected, atol=1e-6)  # accumulated in .grad
    # applying it: Adam's first step moves every touched weight by ~lr against the sign
    opt = torch.optim.Adam([model.W], lr=1e-2)
    sup.apply(opt, count=1, grad_clip=1e9)
    moved = (model.W.detach() - before)[expected.abs() > 1e-6]
    assert torch.allclose(moved.abs(), torch.full_like(moved, 1e-2), rtol=1e-3)
    assert model.W.grad is None  # freed for the next outer step


# -- the defense on a tiny model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    world = World(WorldConfig(n_entities=24, n_documents=300))
    tokenizer = train_tokenizer(world.documents(), 300)
    base = tmp_path_factory.mktemp("base") / "release"
    save_release(init_model(SPEC, tokenizer, 0), tokenizer, base)
    corpus = pack_corpus(world.documents(), tokenizer, 32)
    restricted = {name: TASKS.get(name)(TASKS.get(name).Config()).examples("train", world)
                  for name in ("qa_city", "qa_color")}
    return tokenizer, corpus, Release(base, SPEC), restricted


def run_sophon(tiny, tmp_path: Path, capability=None, checkpoint: Checkpoint | None = None,
               **params) -> tuple[Path, dict]:
    tokenizer, corpus, base, restricted = tiny
    ctx = DefenseContext(spec=SPEC, tokenizer=tokenizer, corpus=corpus,
                         pretrain=PretrainConfig(steps=1, batch_size=4, seq_len=32), base=base,
                         restricted=restricted, release_dir=tmp_path / "release",
                         private_dir=tmp_path / "private", progress=False,
                         evaluate_capability=capability,
                         checkpoint=checkpoint or Checkpoint(None))
    ctx.private_dir.mkdir(parents=True)
    defaults = dict(outer_steps=2, inner_steps=2, query_batch=4, ntr_batch=4, lr=1e-3,
                    test_steps=0, strategies=[Strategy(optimizer="adam", lr=1e-3, batch_size=4),
                                              Strategy(optimizer="sgd", lr=1e-2, batch_size=4)])
    Sophon(SophonConfig(**(defaults | params))).defend(ctx)
    return ctx.release_dir, json.loads((ctx.private_dir / STATS_FILE).read_text())


def weights(path: Path) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in Release(path, SPEC).load()[0].named_parameters()}


def test_guard_restores_the_last_weights_that_passed(tiny, tmp_path: Path) -> None:
    calls = []

    def capability(model, tokenizer):  # passes at the start and after step 1, then fails
        calls.append(1)
        return {"recall": 1.0 if len(calls) <= 2 else 0.1}

    release, stats = run_sophon(tiny, tmp_path / "guarded", capability, outer_steps=3,
                                guard=0.5)
    assert stats["stopped_by_guard"] == 2 and stats["outer_steps_done"] == 2
    one_step, _ = run_sophon(tiny, tmp_path / "one", None, outer_steps=1, guard=None)
    guarded, after_one, base = weights(release), weights(one_step), weights(tiny[2].path)
    for name in base:
        assert torch.equal(guarded[name], after_one[name]), name
    assert any(not torch.equal(guarded[n], base[n]) for n in base)  # step 1 did change it
    # the build log the report plots: every guard reading, the one that failed included
    rows = Sophon().build_log(tmp_path / "guarded" / "private")
    readings = [(r["step"], r["value"]) for r in rows if r["metric"] == "capability"]
    assert readings == [(0, 1.0)] + [(e["step"], e["capability"]) for e in stats["log"]
                                     if "capability" in e]
    assert readings[-1] == (2, pytest.approx(0.1))
    assert {r["value"] for r in rows if r["metric"] == "capability:threshold"} == {0.5}
    assert [r["step"] for r in rows if r["metric"] == "suppression_loss"] == [1, 2]
    assert Sophon().build_log(tmp_path / "nowhere") == []


def test_suppression_lowers_its_loss_and_logs_every_outer_step(tiny, tmp_path: Path) -> None:
    _, stats = run_sophon(tiny, tmp_path, None, outer_steps=6, tasks=["qa_city"], lr=3e-3,
                          guard=None, loss="klu")
    log = stats["log"]
    assert [e["step"] for e in log] == list(range(1, 7))
    assert {e["task"] for e in log} == {"qa_city"} and stats["held_out"] == ["qa_color"]
    assert all(len(e["strategies"]) == 2 for e in log)  # the paper preset: N = 2
    assert log[-1]["suppression_loss"] < log[0]["suppression_loss"]
    assert all(e["reinforcement_loss"] > 0 for e in log)


def test_a_killed_run_resumes_from_its_checkpoint_bit_for_bit(tiny, tmp_path: Path,
                                                             monkeypatch) -> None:
    params = dict(outer_steps=5, tasks=["qa_city", "qa_color"], guard=0.0, guard_every=2)
    calls = []

    def capability(model, tokenizer):
        return {"recall": 1.0}

    whole, whole_stats = run_sophon(tiny, tmp_path / "whole", capability, **params)

    def killed(self, optimizer, count, grad_clip):  # the process dies in outer step 4
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return apply(self, optimizer, count, grad_clip)

    apply = Suppression.apply
    monkeypatch.setattr(Suppression, "apply", killed)
    folder = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):  # a checkpoint after every outer step
        run_sophon(tiny, tmp_path / "first", capability, Checkpoint(folder, every_s=0),
                   **params)
    assert Checkpoint(folder).load()["step"] == 3
    monkeypatch.setattr(Suppression, "apply", apply)
    resumed, stats = run_sophon(tiny, tmp_path / "second", capability,
                                Checkpoint(folder, every_s=1e9), **params)
    assert [s["from_step"] for s in stats["segments"]] == [1, 4]
    assert [s["to_step"] for s in stats["segments"]] == [3, 5]
    assert [e["step"] for e in stats["log"]] == list(range(1, 6))
    a, b = weights(whole), weights(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)  # as if never killed
    assert [e["suppression_loss"] for e in stats["log"]] == \
        [e["suppression_loss"] for e in whole_stats["log"]]


def test_classification_query_and_presets(tiny, tmp_path: Path) -> None:
    _, stats = run_sophon(tiny, tmp_path, None, outer_steps=1, tasks=["qa_color"],
                          loss="ice_code", guard=None)
    assert math.isfinite(stats["log"][0]["suppression_loss"])
    code = SophonConfig(preset="code", loss="ice_code")
    assert code.n() == 1 and code.strategy_set()[0] == Strategy(optimizer="sgd", lr=1e-4,
                                                                  batch_size=130)
    assert code.alpha_lr() == pytest.approx(3e-4) and code.beta_lr() == pytest.approx(5e-4)
    assert SophonConfig().n() == 2 and SophonConfig().alpha_lr() == pytest.approx(1e-4)
    with pytest.raises(ValidationError, match="n_strategies"):
        SophonConfig(preset="code", n_strategies=2)


def test_matrix_with_sophon_and_a_held_out_task(tiny_raw, tmp_path: Path) -> None:
    tiny_raw["tasks"] = ["recall_city", "qa_city", "qa_color"]
    tiny_raw["defenses"] = ["none", {"name": "sophon", "params": {
        "tasks": ["qa_city"], "outer_steps": 2, "inner_steps": 1, "query_batch": 4,
        "ntr_batch": 4, "test_every": 1, "test_steps": 1, "guard": 0.0,
        "strategies": [{"optimizer": "sgd", "lr": 1e-3, "batch_size": 4}],
        "n_strategies": 1}}]
    outcome = Runner(resolve(tiny_raw)).run()
    assert not outcome.failed
    r = outcome.results
    assert set(r[r.role == "restricted"].release) == {"none", "sophon", "scratch"}
    stats = next(Path(tiny_raw["output_dir"]).glob("store/defend/*/private/" + STATS_FILE))
    log = json.loads(stats.read_text())["log"]
    assert set(log[0]["test_finetune"]) == {"qa_city", "qa_color"}  # held-out one too
    assert "capability" in log[0]
    # the build log reaches the results table (role defense) and the report
    built = r[r.role == "defense"]
    assert set(built.release) == {"sophon"}
    assert set(built.metric) == {"capability", "capability:threshold", "suppression_loss",
                                 "probe_score"}
    assert set(built[built.metric == "probe_score"].task) == {"qa_city", "qa_color"}
    assert sorted(built[built.metric == "suppression_loss"].step) == [1, 2]
    run = Path(tiny_raw["output_dir"])
    write_report(run)
    report = run / "report"
    assert (report / "build_log.png").exists() and (report / "build_log.caption.txt").exists()
    assert len(pd.read_csv(report / "build_log.csv")) == len(built)
    assert "build_log" in (report / "figures.tex").read_text()
    combined, _ = combine_runs([run, run])  # the same release's log appears once
    assert len(combined[combined.role == "defense"]) == len(built)
    bad = dict(tiny_raw, defenses=[{"name": "sophon", "params": {"tasks": ["qa_pet"]}}],
               output_dir=str(tmp_path / "bad"))
    with pytest.raises(ConfigError, match=r"defenses \(sophon\): params.tasks names \['qa_pet'\]"):
        resolve(bad)  # refused before anything runs


def test_the_engine_resumes_a_stage_that_died_halfway(tiny_raw, monkeypatch) -> None:
    """A SOPHON stage that dies in outer step 3 leaves its checkpoint in the store; the next run
    resumes it there, and the entry written, the checkpoint is gone."""
    tiny_raw["tasks"] = ["recall_city", "qa_city"]
    tiny_raw["adversaries"] = [{"name": "full_ft", "params": {"steps": 1, "batch_size": 4}}]
    tiny_raw["seeds"] = [0]
    tiny_raw["checkpoint_every_s"] = 0
    tiny_raw["defenses"] = [{"name": "sophon", "params": {
        "outer_steps": 4, "inner_steps": 1, "query_batch": 4, "ntr_batch": 4, "test_steps": 0,
        "guard": None, "n_strategies": 1,
        "strategies": [{"optimizer": "sgd", "lr": 1e-3, "batch_size": 4}]}}]
    apply, calls = Suppression.apply, []

    def dies(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return apply(self, *args)

    monkeypatch.setattr(Suppression, "apply", dies)
    first = Runner(resolve(tiny_raw), progress=False, executor="sequential").run()
    assert [s.label for s in first.failed if s.kind == "defend"] == ["sophon / base 0"]
    store = Path(tiny_raw["output_dir"]) / "store" / "defend"
    assert len(list((store / ".partial").iterdir())) == 1
    monkeypatch.setattr(Suppression, "apply", apply)
    second = Runner(resolve(tiny_raw), progress=False, executor="sequential",
                    retry_failed=True).run()
    assert not second.failed
    stats = json.loads(next(store.glob("*/private/" + STATS_FILE)).read_text())
    assert [(s["from_step"], s["to_step"]) for s in stats["segments"]] == [(1, 2), (3, 4)]
    assert not any((store / ".partial").iterdir())
