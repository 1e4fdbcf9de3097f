"""How torch's CPU threads wait for work: a policy set before torch loads its OpenMP runtime.

OpenMP threads spin on their core while they wait for the next parallel region (GNU OpenMP, which
torch's CPU wheels and their MKL use: 300,000 spins by default). Alone, spinning saves a wake-up;
beside another process that spins too, the two runtimes burn each other's cores: an attack cell
on a 2-core machine got 7.5x slower (28x reported on another). A short spin costs a process
alone little and gives the core away when it is shared (``benchmarks/contention.py``
measures both; README, "Sharing the cores").

The runtime reads these variables once, when torch is imported, so :func:`apply_wait_policy` runs
when ``nftbench`` is imported (every entry point imports it before torch: the CLI, spawned pool
workers, Ray actors, the benchmarks and the test suite). A variable the user set is never
changed, and setting any of them is how to choose another policy.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# GNU OpenMP: spins before a waiting thread sleeps (the runtime's default is 300,000). 1,000
# was chosen by benchmarks/contention.py: two 2-thread processes on 2 cores go from 4.5x slower
# each to 1.9x, at a cost alone within the machine's noise; 10,000 still left 4.4x.
WAIT_POLICY: dict[str, str] = {"GOMP_SPINCOUNT": "1000"}
# A user who sets any of these has chosen a policy of their own; nftbench then sets nothing.
# (KMP_BLOCKTIME is Intel OpenMP's, used by torch builds linked against libiomp.)
POLICY_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")
# Set beside the policy, so that a child process, which inherits it, knows whose it is.
MARKER = "NFTBENCH_WAIT_POLICY"


def apply_wait_policy(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Set :data:`WAIT_POLICY` in ``environ`` (default: this process's) unless the user set a
    policy variable; returns what was decided (recorded in the manifest and in every stage's
    log). ``effective`` is False when torch was imported first: its runtime has already read
    the variables, so this process keeps the runtime's default (its children still inherit
    the policy)."""
    env = os.environ if environ is None else environ
    user = {v: env[v] for v in POLICY_VARIABLES if v in env}
    inherited = env.get(MARKER) == "1" and user == WAIT_POLICY
    if user and not inherited:
        return {"source": "user", "variables": user, "effective": True}
    env.update(WAIT_POLICY)
    env[MARKER] = "1"
    return {"source": "nftbench", "variables": dict(WAIT_POLICY),
            "effective": "torch" not in sys.modules}


def openmp_runtime() -> str | None:
    """The OpenMP runtime loaded in this process (``libgomp``, ``libiomp5``, ``libomp``), from
    the shared objects it has mapped (Linux); None where that cannot be read."""
    try:
        with open("/proc/self/maps") as maps:
            names = {line.rsplit("/", 1)[-1].strip() for line in maps if ".so" in line}
    except OSError:
        return None
    for runtime in ("libiomp5", "libgomp", "libomp"):
        if any(name.startswith(runtime) for name in names):
            return runtime
    return None
