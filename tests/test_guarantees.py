"""What nftbench guarantees (README "What nftbench guarantees"), each proved by a test here:
untrusted artifacts, the private/public boundary, resource faults and numerical faults. The
config-input guarantees are property-tested in test_config_fuzz.py."""

from __future__ import annotations

import ast
import errno
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from nftbench.adversaries.finetune import FullFineTune
from nftbench.api import Defense, Release
from nftbench.cli import main
from nftbench.config import resolve
from nftbench.engine import Runner, run_status
from nftbench.models import (
    ModelSpec,
    NonFiniteWeights,
    TinyLlamaConfig,
    UntrustedCheckpoint,
    init_model,
    load_pretrained,
    load_release,
    save_release,
    train_tokenizer,
)
from nftbench.registry import PluginConfig, register_adversary, register_defense
from nftbench.store import Store
from nftbench.world import World, WorldConfig

ROOT = Path(__file__).resolve().parent.parent
SPEC = ModelSpec(tiny=TinyLlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=300))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(World(WorldConfig(n_entities=16, n_documents=300)).documents(), 300)


def run(raw: dict[str, Any], tmp_path: Path, *args: str) -> tuple[int, pd.DataFrame]:
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["run", str(path), "--quiet", *args])
    out = Path(raw["output_dir"])
    return code, pd.read_parquet(out / "results.parquet")


def reason(raw: dict[str, Any], kind: str, label: str) -> str:
    status = run_status(raw["output_dir"]).set_index(["kind", "label"])
    return status.loc[(kind, label), "reason"]


def failed_cells(results: pd.DataFrame) -> pd.DataFrame:
    return results[(results.role == "restricted") & (results.status == "failed")]


# -- untrusted artifacts --------------------------------------------------------------------


class Payload:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_no_code_path_unpickles_or_trusts_remote_code() -> None:
    """A static scan of every module that runs in a benchmark: no pickle loading, no
    torch.load, no weights_only=False, no allow_pickle, no literal trust_remote_code=True."""
    banned_calls = {"load", "loads", "Unpickler"}
    offenders = []
    for package in ("nftbench", "defenses", "adversaries", "tasks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    owner = node.func.value
                    name = owner.id if isinstance(owner, ast.Name) else ""
                    if name in ("pickle", "cPickle", "dill", "joblib", "torch") and \
                            node.func.attr in banned_calls:
                        offenders.append(f"{path.name}:{node.lineno} {name}.{node.func.attr}")
                unsafe = {"weights_only": False, "allow_pickle": True, "trust_remote_code": True}
                if isinstance(node, ast.keyword) and node.arg in unsafe and \
                        isinstance(node.value, ast.Constant) and \
                        node.value.value is unsafe[node.arg]:
                    offenders.append(f"{path.name}:{node.lineno} {node.arg}={node.value.value}")
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                    if any(n.split(".")[0] in ("pickle", "dill", "joblib") for n in names):
                        offenders.append(f"{path.name}:{node.lineno} imports a pickle library")
    assert offenders == []


def test_a_pickle_checkpoint_is_refused_and_never_executed(tokenizer, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    # a hub-style local folder whose weights are a pickle
    folder = tmp_path / "pickled_model"
    init_model(SPEC, tokenizer, 0).config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UntrustedCheckpoint, match=r"never as pickles.*pytorch_model\.bin|"
                                                  r"pytorch_model\.bin.*never as pickles"):
        load_pretrained(ModelSpec(name_or_path=str(folder)))
    # a release whose model.safetensors is really a pickle
    release = save_release(init_model(SPEC, tokenizer, 0), tokenizer, tmp_path / "release")
    (release / "model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UntrustedCheckpoint, match="not a valid safetensors file"):
        load_release(release, SPEC)
    # a pickle beside the weights: not a release at all
    good = save_release(init_model(SPEC, tokenizer, 0), tokenizer, tmp_path / "good")
    (good / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match="is not a release"):
        Release(good, SPEC)
    assert not marker.exists()


def test_remote_code_runs_only_when_the_config_says_so(tokenizer, tmp_path: Path) -> None:
    folder = save_release(init_model(SPEC, tokenizer, 0), tokenizer, tmp_path / "custom")
    marker = tmp_path / "remote_code_ran"
    (folder / "custom_model.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "nftbench_custom"  # not a transformers architecture
    config["auto_map"] = {"AutoConfig": "custom_model.CustomConfig",
                          "AutoModelForCausalLM": "custom_model.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_pretrained(ModelSpec(name_or_path=str(folder)))
    assert not marker.exists()


def test_the_manifest_records_trust_remote_code(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    tiny_raw["model"]["trust_remote_code"] = True
    code, _ = run(tiny_raw, tmp_path)
    assert code == 0
    manifest = json.loads((Path(tiny_raw["output_dir"]) / "manifest.json").read_text())
    assert manifest["trust_remote_code"] is True
    log = (Path(tiny_raw["output_dir"]) / "run.log").read_text()
    assert "trust_remote_code is on" in log


# -- the private/public boundary -------------------------------------------------------------


REACHED: list[dict[str, Any]] = []


def reachable_paths(root: Any, max_depth: int = 8) -> set[str]:
    """Every path-like string reachable from ``root`` through attributes, containers, closures
    and bound methods (not through modules or classes, which reach everything)."""
    seen: set[int] = set()
    found: set[str] = set()
    stack = [(root, 0)]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen or depth > max_depth:
            continue
        seen.add(id(obj))
        if isinstance(obj, str | Path | os.PathLike):
            text = os.fspath(obj)
            if "/" in text:
                found.add(text)
            continue
        if isinstance(obj, type | type(os) | torch.Tensor | int | float | bool | bytes) or \
                obj is None:
            continue
        children: list[Any] = []
        if isinstance(obj, dict):
            children += list(obj.keys()) + list(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            children += list(obj)
        if callable(obj):
            children += [c.cell_contents for c in (getattr(obj, "__closure__", None) or ())
                         if _has_contents(c)]
            children += [getattr(obj, "__self__", None), getattr(obj, "func", None),
                         getattr(obj, "args", None), getattr(obj, "keywords", None),
                         getattr(obj, "__defaults__", None)]
        if hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
            children += list(vars(obj).values())
        for slot in getattr(type(obj), "__slots__", ()):
            children.append(getattr(obj, slot, None))
        stack += [(c, depth + 1) for c in children]
    return found


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


@register_adversary("test_boundary_probe", version="1")
class BoundaryProbe(FullFineTune):
    """Test-only: records every path it can reach before fine-tuning."""

    owner_recipe = False

    def attack(self, release, examples, ctx):
        REACHED.append({
            "from_inputs": reachable_paths((release, examples, ctx, self)),
            "release_files": sorted(p.name for p in release.path.iterdir()),
            "beside_release": sorted(p.name for p in release.path.parent.iterdir()),
            "environment": dict(os.environ),
            "authorization": ctx.authorization})
        return super().attack(release, examples, ctx)


def test_no_private_artifact_is_reachable_from_an_adversary(tiny_raw: dict[str, Any],
                                                            tmp_path: Path) -> None:
    tiny_raw["defenses"] = ["none", {"name": "pmp", "params": {"rho": 0.3, "eb_max_steps": 3}}]
    tiny_raw["adversaries"] = [{"name": "test_boundary_probe",
                                "params": {"steps": 1, "batch_size": 4}}]
    REACHED.clear()
    code, _ = run(tiny_raw, tmp_path)
    assert code == 0
    store = (Path(tiny_raw["output_dir"]) / "store").resolve()
    private = sorted(str(p) for p in store.glob("defend/*/private/*"))
    assert private  # pmp wrote its mask there
    assert len(REACHED) == 3  # none, pmp, scratch
    for seen in REACHED:
        assert seen["authorization"] is None
        leaks = {p for p in seen["from_inputs"]
                 if str(store) in os.path.abspath(p) or "private" in Path(p).parts}
        assert leaks == set()
        assert seen["release_files"] == ["config.json", "generation_config.json",
                                         "model.safetensors", "tokenizer.json",
                                         "tokenizer_config.json"]
        assert seen["beside_release"] == ["release"]  # the folder holds nothing else
        assert not any(str(store) in v for v in seen["environment"].values())


@register_defense("test_faulty_defense", version="1")
class FaultyDefense(Defense):
    """Test-only: releases the base with a fault: a private artifact beside the weights
    (``leak``) or an inf weight (``inf``)."""

    class Config(PluginConfig):
        fault: str = "leak"

    def defend(self, ctx):
        model, tok = ctx.base.load()
        if self.config.fault == "inf":
            with torch.no_grad():
                model.lm_head.weight[0, 0] = float("inf")
        save_release(model, tok, ctx.release_dir)
        if self.config.fault == "leak":
            (ctx.release_dir / "mask.safetensors").write_bytes(b"secret")


def faulty(fault: str, label: str) -> dict[str, Any]:
    return {"name": "test_faulty_defense", "label": label, "params": {"fault": fault}}


def test_a_release_outside_the_allow_list_is_refused_on_save(tiny_raw: dict[str, Any],
                                                            tmp_path: Path) -> None:
    tiny_raw["defenses"] = ["none", faulty("leak", "test_leaky_defense")]
    code, results = run(tiny_raw, tmp_path)
    assert code == 3
    assert "mask.safetensors" in reason(tiny_raw, "defend", "test_leaky_defense / base 0")
    assert not list((Path(tiny_raw["output_dir"]) / "store" / "defend").glob(
        "*/release/mask.safetensors"))  # nothing of it was stored
    assert set(failed_cells(results).release) == {"test_leaky_defense"}


# -- resource faults -------------------------------------------------------------------------


@register_adversary("test_fault", version="1")
class Fault(FullFineTune):
    """Test-only: fails in a chosen way."""

    class Config(FullFineTune.Config):
        fault: str = "none"

    def attack(self, release, examples, ctx):
        if self.config.fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if self.config.fault == "slow":
            time.sleep(30)
        if self.config.fault == "disk_full":
            raise OSError(errno.ENOSPC, "No space left on device", "/store/attack/x")
        return super().attack(release, examples, ctx)


@pytest.mark.parametrize(("fault", "reason"), [
    ("oom", "out of memory (OutOfMemoryError)"),
    ("slow", "time limit of 3 s exceeded"),
    ("disk_full", "disk full while writing (/store/attack/x)")])
def test_a_resource_fault_fails_its_cell_with_the_reason_and_the_matrix_goes_on(
        tiny_raw: dict[str, Any], tmp_path: Path, fault: str, reason: str) -> None:
    tiny_raw["adversaries"].append({"name": "test_fault", "params": {
        "steps": 2, "batch_size": 4, "fault": fault}})
    tiny_raw["limits"] = {"cell_timeout_s": 3}  # the other cells take well under a second
    start = time.perf_counter()
    code, results = run(tiny_raw, tmp_path)
    assert code == 3 and time.perf_counter() - start < 25
    failed = failed_cells(results)
    assert set(failed.adversary) == {"test_fault"} and len(failed) == 2  # none and scratch
    assert set(failed.reason) == {reason}
    ok = results[(results.adversary == "full_ft") & (results.metric == "score")]
    assert set(ok.status) == {"ok"} and len(ok) == 4  # the other cells finished
    store = Path(tiny_raw["output_dir"]) / "store" / "attack"
    assert len([p for p in store.iterdir() if p.name.startswith(".")
                and p.name != ".claims"]) == 0  # no partial entry
    assert len(list((store / ".claims").iterdir())) == 0


KILLED_WORKER = '''
import os
import signal

from nftbench.adversaries.finetune import FullFineTune
from nftbench.registry import register_adversary


@register_adversary("test_killed_worker", version="1")
class KilledWorker(FullFineTune):
    """Test-only: its process is killed mid-cell, as the kernel's OOM killer would."""

    def attack(self, release, examples, ctx):
        os.kill(os.getpid(), signal.SIGKILL)
'''


def test_a_worker_killed_mid_cell_fails_only_its_cells(tiny_raw: dict[str, Any],
                                                       tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "killed_worker.py").write_text(KILLED_WORKER)
    tiny_raw["adversaries"].append({"name": "test_killed_worker",
                                    "params": {"steps": 2, "batch_size": 4}})
    code, results = run(tiny_raw, tmp_path, "--workers", "2", "--plugins", str(plugins))
    assert code == 3
    failed = failed_cells(results)
    assert set(failed.adversary) == {"test_killed_worker"} and len(failed) == 2
    assert set(failed.reason) == {"worker process died (killed, or out of memory)"}
    ok = results[(results.adversary == "full_ft") & (results.metric == "score")]
    assert set(ok.status) == {"ok"} and len(ok) == 4  # cells beside it were run again


def test_disk_full_while_writing_an_entry_leaves_no_partial_entry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nftbench.store as store_module

    store = Store(tmp_path)

    def full(*args: Any, **kw: Any) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "file_sha256", full)  # fails while writing entry.json
    with pytest.raises(OSError), store.write("x", "k", {}) as tmp:
        (tmp / "weights.safetensors").write_bytes(b"\0" * 1024)
    assert not store.has("x", "k") and list((tmp_path / "x").iterdir()) == []


# -- numerical faults ------------------------------------------------------------------------


def test_a_base_model_with_nan_weights_is_a_recorded_failure(tokenizer, tiny_raw: dict[str, Any],
                                                            tmp_path: Path) -> None:
    model = init_model(SPEC, tokenizer, 0)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, :3] = float("nan")
    folder = tmp_path / "nan_model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tiny_raw["model"] = {"name_or_path": str(folder)}
    tiny_raw["pretrain"]["steps"] = 0
    code, results = run(tiny_raw, tmp_path)
    assert code == 3
    assert "non-finite weights in 1 tensors (model.layers.0.mlp.up_proj.weight: 3 NaN, 0 inf)" \
        in reason(tiny_raw, "pretrain", "base 0")
    cells = failed_cells(results)
    assert len(cells[cells.release == "none"]) == 1
    (why,) = set(cells[cells.release == "none"].reason)  # the root cause, two stages up
    assert why.startswith("input pretrain 'base 0' failed: NonFiniteWeights")


def test_a_release_with_inf_weights_is_a_recorded_failure(tiny_raw: dict[str, Any],
                                                          tmp_path: Path) -> None:
    tiny_raw["defenses"] = ["none", faulty("inf", "test_inf_defense")]
    code, results = run(tiny_raw, tmp_path)
    assert code == 3
    why = reason(tiny_raw, "defend", "test_inf_defense / base 0")
    assert "NonFiniteWeights" in why and "lm_head.weight: 0 NaN, 1 inf" in why
    (why,) = set(failed_cells(results).reason)
    assert why.startswith("input defend 'test_inf_defense / base 0' failed: NonFiniteWeights")


def test_check_finite_names_the_tensors(tokenizer) -> None:
    model = init_model(SPEC, tokenizer, 0)
    with torch.no_grad():
        model.model.norm.weight[1] = float("-inf")
    with pytest.raises(NonFiniteWeights, match=r"model\.norm\.weight: 0 NaN, 1 inf"):
        save_release(model, tokenizer, "/nonexistent/never/written")


def test_a_task_empty_after_filtering_is_a_config_error(tiny_raw: dict[str, Any],
                                                        tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "target": None if i % 2 else ""} for i in range(6)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tiny_raw["tasks"].append({"name": "qa_city", "label": "holes", "params": {
        "source": {"type": "hf", "path": "json", "data_files": {"train": str(data),
                                                                "test": str(data)}},
        "prompt": "{question}", "answer": "{target}"}})
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert main(["run", str(path), "--quiet"]) == 2
    assert not Path(tiny_raw["output_dir"]).exists()  # nothing written


def test_filtering_drops_unusable_records_and_says_why(tmp_path: Path) -> None:
    from nftbench.registry import TASKS

    rows = [{"q": "a", "choices": ["x", "y"], "label": 1},
            {"q": "b", "choices": ["x", "y"], "label": 5},
            {"q": None, "choices": ["x", "y"], "label": 0}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cls = TASKS.get("qa_color")
    task = cls(cls.Config(source={"type": "hf", "path": "json", "data_files": {
        "test": str(data)}}, prompt="{q}"))
    assert [ex["prompt"] for ex in task.examples("eval", None)] == ["a"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
    task = cls(cls.Config(source={"type": "hf", "path": "json", "data_files": {
        "test": str(data)}}, prompt="{q}"))
    with pytest.raises(ValueError, match=r"empty after filtering: all 2 records were dropped "
                                         r"\(1 with a label outside their choices, 1 without "
                                         r"'q'\)|empty after filtering: all 2 records were "
                                         r"dropped \(1 without 'q', 1 with a label outside"):
        task.examples("eval", None)


@register_defense("test_what_a_defense_sees", version="1")
class WhatADefenseSees(Defense[PluginConfig]):
    """Test-only: writes down which task data and scorers it was given (the base is released)."""

    def defend(self, ctx):
        seen = {"restricted": sorted(ctx.restricted), "evaluate": ctx.evaluate is not None,
                "capability": ctx.evaluate_capability is not None}
        (ctx.private_dir / "seen.json").write_text(json.dumps(seen))
        ctx.save_release(ctx.base.load()[0])


@register_defense("test_what_a_reading_defense_sees", version="1")
class WhatAReadingDefenseSees(WhatADefenseSees):
    """Test-only: the same, declaring that it trains on restricted data."""

    uses_restricted_data = True


def test_only_a_defense_that_declares_task_data_receives_it(tiny_raw: dict[str, Any]) -> None:
    """A defense's key covers the restricted tasks only if it declares uses_restricted_data;
    without the flag it gets no task data and no scorer, so it cannot depend on what its key
    does not name."""
    tiny_raw["defenses"] = ["test_what_a_defense_sees", "test_what_a_reading_defense_sees"]
    outcome = Runner(resolve(tiny_raw), progress=False, executor="sequential").run()
    assert not [s for s in outcome.failed if s.kind == "defend"]
    seen = {}
    for entry in (Path(tiny_raw["output_dir"]) / "store" / "defend").glob("*/entry.json"):
        payload = json.loads(entry.read_text())["payload"]
        seen[payload["defense"]] = (json.loads((entry.parent / "private/seen.json").read_text()),
                                    "restricted" in payload)
    blind, blind_keyed = seen["test_what_a_defense_sees"]
    reader, reader_keyed = seen["test_what_a_reading_defense_sees"]
    assert blind == {"restricted": [], "evaluate": False, "capability": False}
    assert not blind_keyed and reader_keyed
    assert reader["restricted"] and reader["evaluate"] and reader["capability"]
