"""The OpenMP wait policy: set before torch loads in every process nftbench starts, never over
the user's own choice, and recorded (nftbench/threads.py; benchmarks/contention.py measures
why)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nftbench.threads import MARKER, WAIT_POLICY, apply_wait_policy

PROBE = ("import json, os, sys\n{first}\nimport nftbench\n"
         "print(json.dumps([nftbench.WAIT_POLICY, os.environ.get('GOMP_SPINCOUNT')]))")


def probe(env: dict[str, str], torch_first: bool = False) -> tuple[dict, str | None]:
    """What a fresh process that imports nftbench decides, in ``env``."""
    code = PROBE.format(first="import torch" if torch_first else "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    policy, value = json.loads(out.splitlines()[-1])
    return policy, value


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", MARKER)}


def test_a_fresh_process_gets_the_policy_before_torch_loads() -> None:
    policy, value = probe(clean_env())
    assert value == WAIT_POLICY["GOMP_SPINCOUNT"]
    assert policy == {"source": "nftbench", "variables": WAIT_POLICY, "effective": True}


def test_the_users_own_setting_is_kept() -> None:
    for var, val in (("GOMP_SPINCOUNT", "500"), ("OMP_WAIT_POLICY", "PASSIVE")):
        policy, value = probe({**clean_env(), var: val})
        assert policy == {"source": "user", "variables": {var: val}, "effective": True}
        assert value == (val if var == "GOMP_SPINCOUNT" else None)


def test_torch_imported_first_is_reported_as_not_effective() -> None:
    policy, _ = probe(clean_env(), torch_first=True)
    assert policy["source"] == "nftbench" and policy["effective"] is False


def test_a_child_inherits_nftbench_policy_as_nftbench() -> None:
    env: dict[str, str] = {}
    first = apply_wait_policy(env)
    assert first["source"] == "nftbench" and env[MARKER] == "1"
    assert apply_wait_policy(dict(env))["source"] == "nftbench"  # a child's view
    env["GOMP_SPINCOUNT"] = "42"  # changed later by the user: theirs
    assert apply_wait_policy(env) == {"source": "user", "variables": {"GOMP_SPINCOUNT": "42"},
                                      "effective": True}


def test_this_test_process_runs_with_the_policy() -> None:
    import nftbench

    if nftbench.WAIT_POLICY["source"] != "nftbench":
        pytest.skip("the environment sets its own OpenMP wait policy")
    assert nftbench.WAIT_POLICY["effective"], "torch was imported before nftbench in the tests"
