"""Step time and memory of full fine-tuning, LoRA and QLoRA on the default tiny model.

Each method runs in a fresh child process (so one method's freed-but-retained heap does not hide
the next one's peak) on the same random-init release of ``ModelSpec()`` (the embedded model at
its defaults), with a BPE tokenizer trained on the default world's documents and batches of a
restricted task's train examples, exactly as an attack sees them. Every method trains through
``nftbench.train.train`` with its adversary's default config, apart from the step count: the
first ``--warmup`` steps are dropped, the next ``--steps`` timed one by one.

Memory: on CUDA, ``torch.cuda.max_memory_allocated``. On CPU, the process's peak resident set
(``VmHWM`` in ``/proc/self/status``, reset through ``/proc/self/clear_refs`` just before the
model is loaded) minus its resident set at that moment: model, optimizer state, activations and
allocator slack, as the operating system sees them. (``tracemalloc`` sees only Python's own
allocator, not torch's tensors, so it would report almost nothing.)

    .venv/bin/python benchmarks/adversary_step_time.py [--steps 30] [--warmup 5] [--threads 1]
"""

from __future__ import annotations

import nftbench  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)

# isort: split
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("full_ft", "lora", "qlora")


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build_release(folder: Path, task: str) -> None:
    """A random-init release of the default tiny model, plus the task's train examples."""
    from nftbench.models import ModelSpec, init_model, save_release, train_tokenizer
    from nftbench.plugins import load_plugins
    from nftbench.registry import TASKS
    from nftbench.world import World, WorldConfig

    load_plugins()
    spec = ModelSpec()
    world = World(WorldConfig())
    tokenizer = train_tokenizer(world.documents(), spec.tiny.vocab_size)
    save_release(init_model(spec, tokenizer, seed=0), tokenizer, folder / "release")
    examples = TASKS.get(task)().examples("train", world)
    (folder / "examples.json").write_text(json.dumps(examples))


def measure(method: str, folder: Path, steps: int, warmup: int) -> dict[str, float | str]:
    """One method, in this (fresh) process."""
    import torch

    from nftbench.api import Release
    from nftbench.data import encode_examples, example_batches, pad_id
    from nftbench.models import ModelSpec
    from nftbench.plugins import load_plugins
    from nftbench.registry import ADVERSARIES
    from nftbench.train import count_matmul_params, train

    load_plugins()
    adversary = ADVERSARIES.get(method)()
    cfg = adversary.config
    release = Release(folder / "release", ModelSpec())
    device = release.spec.torch_device()
    examples = json.loads((folder / "examples.json").read_text())

    import gc

    import bitsandbytes  # noqa: F401  (imported up front by every method: not in its memory)
    import peft  # noqa: F401

    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        base = rss_kib("VmRSS") * 1024
    if method == "full_ft":
        model, tokenizer = release.load()
    else:
        from peft import get_peft_model

        model, tokenizer = adversary.load(release)
        model = get_peft_model(model, cfg.lora())
    loaded = (torch.cuda.memory_allocated(device) if cuda else rss_kib("VmRSS") * 1024) - base

    pad = pad_id(tokenizer)
    batches = example_batches(encode_examples(examples, tokenizer), cfg.batch_size, 0, pad)
    stamps: list[float] = []

    def after_step(step: int) -> None:
        if cuda:
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    torch.manual_seed(0)
    t0 = time.perf_counter()
    result = train(model, batches, warmup + steps, cfg.optim(), after_step=after_step,
                   progress=False)
    times = [b - a for a, b in zip([t0, *stamps], stamps, strict=False)][warmup:]
    peak = (torch.cuda.max_memory_allocated(device) if cuda
            else rss_kib("VmHWM") * 1024) - base
    n_all, _ = count_matmul_params(model)
    return {
        "method": method,
        "step_ms": 1e3 * statistics.mean(times),
        "step_ms_sd": 1e3 * statistics.stdev(times),
        "loaded_mb": loaded / 2**20,
        "peak_mb": peak / 2**20,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "counted_matmul": n_all,
        "reported_gflop_per_step": result.flops / result.steps / 1e9,
        "loss_first": result.losses[0],
        "loss_last": result.losses[-1],
        "memory": "cuda max_memory_allocated" if cuda else "process peak RSS (VmHWM)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steady timings on a shared machine)")
    parser.add_argument("--task", default="qa_city", help="whose train examples make the batches")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        method, folder = args.child
        print(json.dumps(measure(method, Path(folder), args.steps, args.warmup)))
        return

    import pandas as pd

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    rows = []
    with tempfile.TemporaryDirectory(prefix="nftbench-adv-") as tmp:
        build_release(Path(tmp), args.task)
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--child", method, tmp, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                                 cwd=ROOT)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = pd.DataFrame(rows).set_index("method")
    ref = table.loc["full_ft"] if "full_ft" in table.index else table.iloc[0]
    for col in ("step_ms", "peak_mb", "reported_gflop_per_step"):
        table[f"{col} ×"] = table[col] / ref[col]
    print(f"model: ModelSpec() defaults; batches: {args.task} train examples; "
          f"{args.warmup} warm-up + {args.steps} timed steps; torch threads {args.threads}; "
          f"device {torch.device('cuda' if torch.cuda.is_available() else 'cpu')}; "
          f"memory: {table['memory'].iloc[0]}, minus the process's RSS before loading")
    cols = ["step_ms", "step_ms_sd", "step_ms ×", "loaded_mb", "peak_mb", "peak_mb ×",
            "trainable", "counted_matmul", "reported_gflop_per_step",
            "reported_gflop_per_step ×", "loss_first", "loss_last"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[cols].to_string(float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    main()
