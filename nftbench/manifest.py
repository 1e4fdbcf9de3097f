"""The reproducibility manifest written by every run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import nftbench
from nftbench.store import content_key
from nftbench.threads import openmp_runtime

if TYPE_CHECKING:
    from nftbench.config import Matrix
    from nftbench.records import RunOutcome

PACKAGES = ("nftbench", "torch", "transformers", "tokenizers", "peft", "bitsandbytes", "datasets",
            "lm_eval", "pandas", "matplotlib", "safetensors", "pydantic")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=root, capture_output=True, text=True, timeout=10,
                                    check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                    "KMP_BLOCKTIME", "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE")


def _cpuinfo(field: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what platform says)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def kernel_path(threads: int | None = None) -> dict[str, Any]:
    """What decides which float kernels a run takes: two runs with the same values (and the
    same packages) give bit-identical numbers; any difference makes them agree only
    statistically (README, "Reproducing results")."""
    parallel = torch.__config__.parallel_info().splitlines()
    mkl = next((line.split("Version", 1)[1].split(" for ")[0].strip() for line in parallel
                if "Math Kernel Library Version" in line), None)
    flags = set((_cpuinfo("flags") or "").split())
    return {"cpu_model": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "amx": any(f.startswith("amx") for f in flags),
            "torch": torch.__version__,
            "mkl": mkl,
            "parallel_backend": next((line.split(":", 1)[1].strip() for line in parallel
                                      if line.startswith("ATen parallel backend")), None),
            "threads": threads if threads is not None else torch.get_num_threads(),
            "environment": {v: os.environ[v] for v in THREAD_VARIABLES if v in os.environ},
            "openmp_runtime": openmp_runtime(),
            "wait_policy": nftbench.WAIT_POLICY}


def hardware(threads: int | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "kernel_path": kernel_path(threads),
                            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def build_manifest(matrix: Matrix, outcome: RunOutcome, data: dict[str, Any],
                   execution: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run folder's ``manifest.json`` holds (:class:`nftbench.run_folder.RunFolder`
    writes it)."""
    config = matrix.config.model_dump(mode="json")
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "config_hash": content_key(config),
        "variants": {kind: {v.label: {"plugin": v.name, "version": v.version, "params": v.params}
                            for v in getattr(matrix, kind)}
                     for kind in ("defenses", "adversaries", "tasks")},
        "trust_remote_code": matrix.config.model.trust_remote_code,
        "packages": package_versions(),
        "git": git_commit(),
        "hardware": hardware(matrix.config.threads),
        "data_fingerprints": data,
        "execution": execution or {"executor": "sequential"},
        "wall_s": round(outcome.wall_s, 3),
        "stages": [asdict(s) for s in outcome.stages],
    }
    return manifest
