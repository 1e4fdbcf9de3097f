"""results/ is what today's code computes: every committed report re-plans, from the config its
manifest recorded, to exactly the stage keys that made it. A change that moves a key (a plugin's
version, a default, what a key covers) fails here until the affected results are rerun, so a
reader's `nftbench run` never recomputes different numbers under a committed report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nftbench.config import recorded_config, resolve
from nftbench.engine import Runner

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "results").rglob("manifest.json"))


def test_there_are_results_to_check() -> None:
    assert len(MANIFESTS) >= 8


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_results_replan_to_their_recorded_keys(manifest: Path, tmp_path: Path) -> None:
    recorded = json.loads(manifest.read_text())
    cfg = resolve(recorded_config(recorded["config"]),
                  [f"store_dir={tmp_path / 'store'}", f"output_dir={tmp_path / 'run'}"])
    planned = {(job.kind, job.label, job.key) for job in Runner(cfg, progress=False).plan}
    made = {(s["kind"], s["label"], s["key"]) for s in recorded["stages"]}
    stale = sorted(made - planned)
    assert not stale, (f"{len(stale)} stages of {manifest.parent.relative_to(ROOT)} have other "
                       f"keys today (rerun its config): {stale[:5]}")
    assert planned == made
