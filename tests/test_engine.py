"""The matrix engine: the DAG schedule, claims, status, retrying failures, resuming after SIGKILL,
and the process-pool and Ray executors (each against the sequential table)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from nftbench.adversaries.finetune import FullFineTune
from nftbench.cli import main
from nftbench.config import ConfigError, resolve
from nftbench.engine import Runner, run_status
from nftbench.executors import schedule
from nftbench.records import Job, StageLog
from nftbench.registry import register_adversary
from nftbench.store import Store
from nftbench.threads import MARKER, POLICY_VARIABLES, WAIT_POLICY

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = ["wall_s", "peak_mem_mb"]  # measured, not computed: they differ between runs


def write_config(raw: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def results(raw: dict[str, Any]) -> pd.DataFrame:
    table = pd.read_parquet(Path(raw["output_dir"]) / "results.parquet").drop(columns=VOLATILE)
    return table.sort_values(["release", "adversary", "task", "seed", "metric", "step"],
                             ignore_index=True)


def manifest(raw: dict[str, Any]) -> dict[str, Any]:
    return json.loads((Path(raw["output_dir"]) / "manifest.json").read_text())


def two_cells_per_release(raw: dict[str, Any]) -> dict[str, Any]:
    raw["seeds"] = [0, 1]
    return raw


# -- the scheduler ------------------------------------------------------------------------------


class ThreadExecutor:
    """A fake executor: jobs sleep in threads; it records what ran beside what."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.pool = cf.ThreadPoolExecutor(slots)
        self.active: set[str] = set()
        self.overlaps: list[tuple[str, frozenset[str]]] = []
        self.lock = threading.Lock()

    def submit(self, job: Job) -> cf.Future[StageLog]:
        def work() -> StageLog:
            with self.lock:
                self.active.add(job.label)
                self.overlaps.append((job.label, frozenset(self.active)))
            time.sleep(0.05)
            with self.lock:
                self.active.discard(job.label)
            status = "failed" if job.label == "bad" else "ok"
            return StageLog(job.kind, job.label, job.key, cached=False, wall_s=0.05,
                            status=status, error="boom" if status == "failed" else None)

        return self.pool.submit(work)

    def close(self) -> None:
        self.pool.shutdown()


def job(label: str, *deps: str) -> Job:
    return Job("attack", label, label, {}, deps=tuple(f"attack:{d}" for d in deps))


def test_schedule_respects_inputs_and_failures() -> None:
    jobs = [job("tok"), job("base", "tok"), job("side", "tok"),
            job("rel_a", "base"), job("rel_b", "base"), job("bad", "base"),
            job("cell_a", "rel_a"), job("cell_b", "rel_b"), job("after_bad", "bad"),
            job("after_after", "after_bad")]
    executor = ThreadExecutor(slots=2)
    order: list[str] = []
    logs = schedule(jobs, executor, on_start=lambda j: order.append(j.label))
    executor.close()
    for j in jobs:  # every job starts after its inputs
        for d in j.deps:
            if j.label in order:
                assert order.index(d.split(":")[1]) < order.index(j.label)
    assert max(len(active) for _, active in executor.overlaps) == 2  # two slots were used
    assert logs["attack:bad"].status == "failed"
    for downstream in ("after_bad", "after_after"):  # not run, failed with the reason
        assert downstream not in order
        assert logs[f"attack:{downstream}"].status == "failed"
    assert "'bad' failed" in logs["attack:after_bad"].error
    assert all(logs[f"attack:{j}"].status == "ok" for j in ("cell_a", "cell_b", "side"))


def test_schedule_leaves_a_stage_another_run_holds_for_last() -> None:
    # a, b and c are ready; another run holds a until c is done: this run takes b and c first
    # instead of waiting on a, then a (whose worker would wait on the claim if still held)
    jobs = [job("a"), job("b"), job("c"), job("d", "a")]
    executor = ThreadExecutor(slots=1)
    order: list[str] = []
    schedule(jobs, executor, on_start=lambda j: order.append(j.label),
             busy=lambda j: j.label == "a" and "c" not in order)
    assert order == ["b", "c", "a", "d"]
    # every ready job held elsewhere, nothing of ours running: take the first anyway
    order.clear()
    schedule(jobs, executor, on_start=lambda j: order.append(j.label), busy=lambda j: True)
    executor.close()
    assert order == ["a", "b", "c", "d"]


# -- claims --------------------------------------------------------------------------------------


def _claim_and_build(root: str, log_file: str, barrier: Any) -> bool:
    """Build entry x/k under its claim, as a worker does; append our pid if we computed it."""
    store = Store(root)
    barrier.wait()
    if store.has("x", "k"):
        return False
    with store.claim("x", "k"):
        if store.has("x", "k"):
            return False
        with store.write("x", "k", {}) as tmp:
            time.sleep(0.3)  # long enough for the other worker to arrive and wait
            (tmp / "out.txt").write_text(str(os.getpid()))
        with open(log_file, "a") as f:
            f.write(f"{os.getpid()}\n")
    return True


def test_two_concurrent_workers_never_compute_one_stage_twice(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    log_file = tmp_path / "computed.txt"
    with cf.ProcessPoolExecutor(4, mp_context=ctx) as pool:
        barrier = ctx.Manager().Barrier(4)
        outs = list(pool.map(_claim_and_build, [str(tmp_path / "store")] * 4,
                             [str(log_file)] * 4, [barrier] * 4))
    assert sum(outs) == 1 and len(log_file.read_text().split()) == 1
    assert Store(tmp_path / "store").has("x", "k")


def test_a_claim_is_visible_while_held_and_dies_with_its_holder(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.claim("x", "k"):
        holder = store.running("x", "k")
        assert holder is not None and holder["pid"] == os.getpid()
        with store.claim("x", "k", wait=False) as got:  # a second claimant does not get it
            assert got is False
    assert store.running("x", "k") is None
    # a holder killed with SIGKILL: the kernel drops its lock, nothing is left "running"
    code = ("import sys, time; from nftbench.store import Store; s = Store(sys.argv[1]);\n"
            "with s.claim('x', 'k2'):\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    assert store.running("x", "k2") is not None
    (tmp_path / "x" / ".k2.half").mkdir()  # what a writer killed mid-stage leaves
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert store.running("x", "k2") is None
    with store.claim("x", "k2") as got:  # the next claimant gets it and sweeps the orphan
        assert got is True and not (tmp_path / "x" / ".k2.half").exists()


# -- status, recorded failures, --retry-failed -------------------------------------------------


@register_adversary("test_flaky", version="1")
class Flaky(FullFineTune):
    """Test-only: full fine-tuning that fails while its marker file exists."""

    class Config(FullFineTune.Config):
        marker: str = ""

    def attack(self, release, examples, ctx):
        if Path(self.config.marker).exists():
            raise RuntimeError("flaky: failing while the marker exists")
        return super().attack(release, examples, ctx)


def test_status_and_retry_failed(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    marker = tmp_path / "fail-now"
    marker.touch()
    tiny_raw["adversaries"].append({"name": "test_flaky", "params": {
        "steps": 2, "batch_size": 4, "marker": str(marker)}})
    config = write_config(tiny_raw, tmp_path / "m.yaml")
    run_dir = Path(tiny_raw["output_dir"])
    assert main(["run", str(config), "--quiet"]) == 3
    status = run_status(run_dir).set_index("label")
    assert status.loc["test_flaky > none / base 0 / qa_city / seed 0", "state"] == "failed"
    assert "flaky" in status.loc["test_flaky > none / base 0 / qa_city / seed 0", "reason"]
    assert (status.state == "failed").sum() == 2 and (status.state == "pending").sum() == 0
    assert (status.state == "done").sum() == len(status) - 2

    # a plain rerun keeps the recorded failure: nothing runs again
    marker.unlink()
    assert main(["run", str(config), "--quiet"]) == 3
    failed = [s for s in manifest(tiny_raw)["stages"] if s["status"] == "failed"]
    assert len(failed) == 2 and all(s["error"].startswith("recorded failure") for s in failed)
    assert all(s["cached"] for s in manifest(tiny_raw)["stages"] if s["status"] == "ok")

    # --retry-failed reruns exactly the failed cells
    assert main(["run", str(config), "--quiet", "--retry-failed"]) == 0
    computed = [s["label"] for s in manifest(tiny_raw)["stages"] if not s["cached"]]
    assert sorted(computed) == ["test_flaky > none / base 0 / qa_city / seed 0",
                                "test_flaky > scratch / qa_city / seed 0"]
    assert set(run_status(run_dir).state) == {"done"}
    assert json.loads((run_dir / "failures.json").read_text()) == {}
    assert main(["status", str(run_dir)]) == 0


# -- SIGKILL and corruption ------------------------------------------------------------------


def run_cli(config: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "nftbench.cli", "run", str(config), "--quiet",
                             *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_a_run_killed_mid_matrix_resumes_to_the_same_table(tiny_raw: dict[str, Any],
                                                           tmp_path: Path) -> None:
    raw = two_cells_per_release(tiny_raw)
    raw["adversaries"][0]["params"]["steps"] = 12
    raw["store_dir"] = str(tmp_path / "store")
    config = write_config(raw, tmp_path / "m.yaml")
    proc = run_cli(config)
    attacks = tmp_path / "store" / "attack"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if attacks.exists() and len([p for p in attacks.iterdir()
                                     if not p.name.startswith(".")]) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name for p in attacks.iterdir() if not p.name.startswith(".")}
    status = run_status(raw["output_dir"])
    assert "running" not in set(status.state)  # the killed worker holds nothing
    assert (status.state == "pending").sum() >= 1 and (status.state == "done").sum() >= 1

    assert main(["run", str(config), "--quiet"]) == 0
    stages = manifest(raw)["stages"]
    recomputed = {s["key"] for s in stages if s["kind"] == "attack" and not s["cached"]}
    assert not finished & recomputed  # no finished stage was computed again
    assert len(recomputed) == 4 - len(finished)

    clean = dict(raw, output_dir=str(tmp_path / "clean"), store_dir=str(tmp_path / "clean_store"))
    assert main(["run", str(write_config(clean, tmp_path / "clean.yaml")), "--quiet"]) == 0
    pd.testing.assert_frame_equal(results(raw), results(clean))


def test_a_corrupt_entry_is_recomputed_with_a_warning(tiny_raw: dict[str, Any],
                                                      tmp_path: Path) -> None:
    config = write_config(tiny_raw, tmp_path / "m.yaml")
    run_dir = Path(tiny_raw["output_dir"])
    assert main(["run", str(config), "--quiet"]) == 0
    before = results(tiny_raw)
    cell = next(s for s in manifest(tiny_raw)["stages"] if s["kind"] == "attack")
    entry = run_dir / "store" / "attack" / cell["key"]
    (entry / "curve.json").write_text('{"points": []}')  # a bit flipped on disk, say
    assert main(["run", str(config), "--quiet"]) == 0
    warnings = [line for line in (run_dir / "run.log").read_text().splitlines()
                if "WARN" in line and cell["key"] in line]
    assert warnings and "checksums" in warnings[0]
    computed = [s["key"] for s in manifest(tiny_raw)["stages"] if not s["cached"]]
    assert computed == [cell["key"]]
    pd.testing.assert_frame_equal(results(tiny_raw), before)


# -- executors ---------------------------------------------------------------------------------


def test_two_runs_on_one_store_compute_each_stage_once(tiny_raw: dict[str, Any],
                                                      tmp_path: Path) -> None:
    raw = two_cells_per_release(tiny_raw)
    raw["store_dir"] = str(tmp_path / "store")
    configs = []
    for name in ("a", "b"):
        raw_n = dict(raw, output_dir=str(tmp_path / name))
        configs.append((raw_n, write_config(raw_n, tmp_path / f"{name}.yaml")))
    procs = [run_cli(path) for _, path in configs]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    computed = [s["key"] for raw_n, _ in configs for s in manifest(raw_n)["stages"]
                if not s["cached"]]
    assert len(computed) == len(set(computed)) == len(manifest(configs[0][0])["stages"])
    pd.testing.assert_frame_equal(results(configs[0][0]), results(configs[1][0]))


def test_a_run_computes_what_nobody_holds_before_waiting_on_another_runs_stage(
        tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    """Two runs on one store share the work: a cell whose claim another run holds is left for
    last, not waited on in plan order while every other cell waits behind it."""
    raw = two_cells_per_release(tiny_raw)
    raw["store_dir"] = str(tmp_path / "store")
    path = write_config(raw, tmp_path / "m.yaml")
    plan = Runner(resolve(raw), progress=False).plan
    held = next(j for j in plan if j.kind == "attack")  # the first cell in plan order
    others = [j for j in plan if j.kind == "attack" and j is not held]
    store = Store(raw["store_dir"])
    claimed = threading.Event()

    def other_run() -> None:  # holds the claim until this run has done every other cell
        with store.claim(held.kind, held.key):
            claimed.set()
            deadline = time.monotonic() + 120
            while (not all(store.has(j.kind, j.key, verify=False) for j in others)
                   and time.monotonic() < deadline):
                time.sleep(0.05)

    thread = threading.Thread(target=other_run)
    thread.start()
    assert claimed.wait(10)
    assert main(["run", str(path), "--quiet"]) == 0
    thread.join()
    stages = {s["key"]: s for s in manifest(raw)["stages"]}
    cells = [stages[j.key] for j in others]
    assert all(not c["cached"] for c in cells)
    # the held cell was computed after the claim was released, and after every other cell
    assert not stages[held.key]["cached"]
    assert stages[held.key]["started"] >= max(c["finished"] for c in cells)


def ran_with(raw: dict[str, Any]) -> set[int]:
    """The torch thread counts the stages of a run ran with."""
    return {s["threads"] for s in manifest(raw)["stages"] if not s["cached"]}


def wait_policies(raw: dict[str, Any]) -> set[tuple[str, str, bool]]:
    """(source, GOMP_SPINCOUNT, effective) of the OpenMP wait policy of every stage's worker."""
    return {(s["wait_policy"]["source"], s["wait_policy"]["variables"].get("GOMP_SPINCOUNT"),
             s["wait_policy"]["effective"]) for s in manifest(raw)["stages"]}


def test_process_pool_gives_the_sequential_table(tiny_raw: dict[str, Any], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    raw = two_cells_per_release(tiny_raw)
    raw["threads"] = 2  # the config's count, whichever executor runs the stage
    seq = write_config(raw, tmp_path / "seq.yaml")
    assert main(["run", str(seq), "--quiet"]) == 0
    assert ran_with(raw) == {2}
    # spawned workers set the wait policy themselves, before torch loads...
    for var in (*POLICY_VARIABLES, MARKER):
        monkeypatch.delenv(var, raising=False)
    pooled = dict(raw, output_dir=str(tmp_path / "pool"))
    assert main(["run", str(write_config(pooled, tmp_path / "pool.yaml")), "--quiet",
                 "--workers", "2"]) == 0
    m = manifest(pooled)
    assert m["execution"]["executor"] == "pool" and m["execution"]["workers"] == 2
    assert not any(s["cached"] for s in m["stages"])
    assert ran_with(pooled) == {2}
    assert wait_policies(pooled) == {("nftbench", WAIT_POLICY["GOMP_SPINCOUNT"], True)}
    assert {s["nice"] for s in m["stages"]} == {os.nice(0)}
    pd.testing.assert_frame_equal(results(raw), results(pooled))
    # ... and keep the user's own
    monkeypatch.setenv("GOMP_SPINCOUNT", "500")
    mine = dict(raw, output_dir=str(tmp_path / "mine"))
    assert main(["run", str(write_config(mine, tmp_path / "mine.yaml")), "--quiet",
                 "--workers", "2"]) == 0
    assert wait_policies(mine) == {("user", "500", True)}
    assert manifest(mine)["hardware"]["kernel_path"]["environment"]["GOMP_SPINCOUNT"] == "500"


def test_ray_executor_runs_a_small_matrix_on_a_local_instance(tiny_raw: dict[str, Any],
                                                              tmp_path: Path) -> None:
    pytest.importorskip("ray")
    raw = two_cells_per_release(tiny_raw)
    raw["threads"] = 2
    seq = write_config(raw, tmp_path / "seq.yaml")
    assert main(["run", str(seq), "--quiet"]) == 0
    on_ray = dict(raw, output_dir=str(tmp_path / "ray"))
    proc = run_cli(write_config(on_ray, tmp_path / "ray.yaml"), "--executor", "ray",
                   "--workers", "2")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    m = manifest(on_ray)
    assert m["execution"]["executor"] == "ray"
    pids = {int(s["worker"].split(":")[1]) for s in m["stages"]}
    assert proc.pid not in pids and len(pids) >= 1  # every stage ran in an actor
    assert ran_with(on_ray) == {2}
    assert wait_policies(on_ray) == {("nftbench", WAIT_POLICY["GOMP_SPINCOUNT"], True)}
    # at Ray's default niceness (15) any busy process on the machine starved the actors
    assert {s["nice"] for s in m["stages"]} == {os.nice(0)}
    pd.testing.assert_frame_equal(results(raw), results(on_ray))


@pytest.mark.parametrize("args", [["--workers", "0"], ["--executor", "sequential",
                                                        "--workers", "2"]])
def test_bad_executor_arguments_are_refused_before_anything_is_written(
        tiny_raw: dict[str, Any], tmp_path: Path, args: list[str]) -> None:
    config = write_config(tiny_raw, tmp_path / "m.yaml")
    assert main(["run", str(config), "--quiet", *args]) == 2
    assert not Path(tiny_raw["output_dir"]).exists()


# -- bases -----------------------------------------------------------------------------------


def test_bases_are_an_axis_with_stable_keys(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    """Every defense on every base; scratch once per seed; adding a base changes no key of
    the first base's stages, and a rerun with the new base computes only its stages."""
    one = write_config(tiny_raw, tmp_path / "one.yaml")
    assert main(["run", str(one), "--quiet"]) == 0
    first = {s["key"] for s in manifest(tiny_raw)["stages"]}
    two = dict(tiny_raw, pretrain=dict(tiny_raw["pretrain"], seeds=[0, 1]))
    assert main(["run", str(write_config(two, tmp_path / "two.yaml")), "--quiet"]) == 0
    stages = manifest(two)["stages"]
    assert first <= {s["key"] for s in stages}
    computed = sorted(s["label"] for s in stages if not s["cached"])
    assert computed == ["base 1", "full_ft > none / base 1 / qa_city / seed 0",
                        "none / base 1", "none / base 1"]  # pretrain, attack, defend, utility
    table = results(two)
    assert set(table[table.release == "none"].base) == {0, 1}
    assert table[table.release == "scratch"].base.isna().all()
    status = run_status(two["output_dir"]).set_index("label")
    assert status.loc["base 1", "state"] == "done"
    assert sorted(p.name for p in (Path(two["output_dir"]) / "releases").iterdir()) == [
        "none-base0", "none-base1", "scratch-seed0"]


def test_a_hub_model_used_as_is_has_one_base(tiny_raw: dict[str, Any]) -> None:
    raw = dict(tiny_raw, pretrain=dict(tiny_raw["pretrain"], steps=0, seeds=[0, 1]))
    with pytest.raises(ConfigError, match="one base"):
        resolve(raw)
    raw["pretrain"]["seeds"] = [0, 0]
    with pytest.raises(ConfigError, match="repeat"):
        resolve(raw)
