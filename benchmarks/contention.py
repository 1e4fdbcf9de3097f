"""Sharing the cores: a training step and a real attack cell, alone and beside other processes,
under each OpenMP wait policy, side by side in one run.

Every measurement is a fresh child process that runs nftbench's own training loop
(``nftbench.train.train``: pre-training batches of 32 x 64 tokens on the default tiny model) or
a real attack cell (``full_ft`` on ``qa_city`` with lm-eval scoring at 4 budget points, through
``AttackContext`` and ``Scorer`` as the harness runs it), with ``--threads`` torch threads. Each
policy is measured three ways:

* alone;
* beside a second nftbench process doing the same (both timed; the table shows their mean);
* beside a plain CPU hog (one Python busy loop).

The processes of one measurement are set up first (imports, loading) and released together, so
that their timed parts overlap.

Policies: the OpenMP runtime's own default (the child imports torch before nftbench, as every
process did before the policy existed), nftbench's default (``GOMP_SPINCOUNT=1000``, set when
nftbench is imported), other spin counts, ``OMP_WAIT_POLICY=PASSIVE``, and one thread per process.
Nothing else should run on the machine meanwhile.

    .venv/bin/python benchmarks/contention.py [--threads 2] [--steps 100] [--cell]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (the parent only: children import nftbench themselves, in the order each policy needs)
from nftbench.threads import MARKER, POLICY_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
# name -> (environment, threads override or None)
POLICIES: dict[str, tuple[dict[str, str], int | None]] = {
    "runtime default (before)": ({}, None),
    "GOMP_SPINCOUNT=100000": ({"GOMP_SPINCOUNT": "100000"}, None),
    "GOMP_SPINCOUNT=10000": ({"GOMP_SPINCOUNT": "10000"}, None),
    "nftbench default (GOMP_SPINCOUNT=1000)": ({}, None),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "1 thread per process": ({}, 1),
}
HOG = "while True: pass"


def wait_for_go(folder: Path) -> None:
    """Start timing only when every process of a measurement is set up (imports and loading
    take longer than the training), so that their timed parts overlap."""
    (folder / f"ready-{os.getpid()}").touch()
    while not (folder / "go").exists():
        time.sleep(0.01)


def child(kind: str, folder: Path, steps: int, threads: int, torch_first: bool) -> dict:
    """One measurement, in this (fresh) process."""
    if torch_first:  # the runtime reads its variables now, before nftbench can set any
        importlib.import_module("torch")
    nftbench = importlib.import_module("nftbench")  # (otherwise first: it sets the policy)
    # isort: split
    import torch

    from nftbench.data import corpus_batches
    from nftbench.models import ModelSpec, init_model, load_release
    from nftbench.train import OptimConfig, train

    torch.set_num_threads(threads)
    policy = dict(nftbench.WAIT_POLICY)
    if torch_first:
        policy["effective"] = False
    if kind == "step":
        tokens = torch.load(folder / "corpus.pt")
        _, tokenizer = load_release(folder / "release", ModelSpec())
        model = init_model(ModelSpec(), tokenizer, seed=0)
        batches = corpus_batches(tokens, 32, seed=0)
        stamps: list[float] = []
        wait_for_go(folder)
        train(model, batches, 5 + steps, OptimConfig(lr=3e-3),
              after_step=lambda _: stamps.append(time.perf_counter()), progress=False)
        # the mean over the timed steps: what a run's wall time feels
        return {"ms": 1e3 * (stamps[-1] - stamps[4]) / (len(stamps) - 5), "policy": policy}
    from nftbench.adversaries.finetune import FullFineTune, FullFineTuneConfig
    from nftbench.api import AttackContext, Release
    from nftbench.evaluation import Evaluator
    from nftbench.plugins import load_plugins
    from nftbench.registry import TASKS
    from nftbench.worker import Scorer, budget_points
    from nftbench.world import World, WorldConfig

    load_plugins()
    world = World(WorldConfig())
    task = TASKS.get("qa_city")()
    evaluator = Evaluator({"qa_city": task}, {"qa_city": task.examples("eval", world)},
                          Path(tempfile.mkdtemp()), 64)
    examples = task.examples("train", world)
    release = Release(folder / "release", ModelSpec())
    wait_for_go(folder)
    start = time.perf_counter()
    ctx = AttackContext(seed=0, evaluate=Scorer(evaluator, ("qa_city",)),
                        budget_points=lambda s: budget_points(4, s), progress=False)
    torch.manual_seed(0)
    FullFineTune(FullFineTuneConfig(steps=steps, lr=3e-4)).attack(release, examples, ctx)
    return {"ms": 1e3 * (time.perf_counter() - start), "policy": policy}


def spawn(kind: str, folder: Path, steps: int, threads: int, policy: str) -> subprocess.Popen:
    env_extra, threads_override = POLICIES[policy]
    env = {k: v for k, v in os.environ.items() if k not in (*POLICY_VARIABLES, MARKER)}
    env.update(env_extra)
    torch_first = policy == "runtime default (before)"
    cmd = [sys.executable, __file__, "--child", kind, str(folder), str(steps),
           str(threads_override or threads), str(int(torch_first))]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def timed(kind: str, folder: Path, steps: int, threads: int, policy: str,
          copies: int) -> list[dict]:
    """``copies`` children at once, released together once all are set up."""
    for f in [*folder.glob("ready-*"), folder / "go"]:
        f.unlink(missing_ok=True)
    procs = [spawn(kind, folder, steps, threads, policy) for _ in range(copies)]
    while len(list(folder.glob("ready-*"))) < copies:
        if any(p.poll() is not None for p in procs):
            return [result(p) for p in procs]  # raises with the failed child's error
        time.sleep(0.05)
    (folder / "go").touch()
    return [result(p) for p in procs]


def measure(kind: str, folder: Path, steps: int, threads: int, policy: str) -> dict:
    alone = timed(kind, folder, steps, threads, policy, 1)[0]
    two = timed(kind, folder, steps, threads, policy, 2)
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        beside_hog = timed(kind, folder, steps, threads, policy, 1)[0]
    finally:
        hog.kill()
        hog.wait()
    return {"policy": policy, "alone": alone["ms"],
            "two at once": statistics.mean(r["ms"] for r in two),
            "beside a CPU hog": beside_hog["ms"],
            "policy in the child": f"{alone['policy']['source']}"
                                   f"{'' if alone['policy']['effective'] else ' (not effective)'}"}


def prepare(folder: Path) -> None:
    """The default world's tokenizer and packed corpus, and a random-init release."""
    import torch

    from nftbench.data import pack_corpus
    from nftbench.models import ModelSpec, init_model, save_release, train_tokenizer
    from nftbench.world import World, WorldConfig

    world = World(WorldConfig(n_documents=4000))
    tokenizer = train_tokenizer(world.documents(), ModelSpec().tiny.vocab_size)
    save_release(init_model(ModelSpec(), tokenizer, seed=0), tokenizer, folder / "release")
    torch.save(pack_corpus(world.documents(), tokenizer, 64), folder / "corpus.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps")
    parser.add_argument("--cell-steps", type=int, default=100, help="steps of the attack cell")
    parser.add_argument("--cell", action="store_true", help="also time a real attack cell")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help="comma-separated subset of: " + ", ".join(POLICIES))
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, folder, steps, threads, torch_first = args.child
        print(json.dumps(child(kind, Path(folder), int(steps), int(threads),
                               bool(int(torch_first)))))
        return

    import pandas as pd

    policies = [p for p in args.policies.split(",") if p]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder)
        kinds = [("step", args.steps)] + ([("cell", args.cell_steps)] if args.cell else [])
        for kind, steps in kinds:
            rows = [measure(kind, folder, steps, args.threads, p) for p in policies]
            t = pd.DataFrame(rows)
            ref = float(t.loc[t.policy == policies[0], "alone"].iloc[0])
            t["alone vs before"] = t["alone"] / ref
            t["two at once / alone"] = t["two at once"] / t["alone"]
            t["beside hog / alone"] = t["beside a CPU hog"] / t["alone"]
            what = (f"training step (ms, mean of {steps})" if kind == "step"
                    else f"full_ft cell, {steps} steps + 4 lm-eval points (ms)")
            print(f"\n{what}; {args.threads} torch threads per process; {os.cpu_count()} cores")
            print(t.to_string(index=False, float_format=lambda x: f"{x:.2f}"))


if __name__ == "__main__":
    main()
