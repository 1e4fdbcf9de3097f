# ruff: noqa: E501  (a table of source lines and their mutations)
"""Break each guarantee of README "What nftbench guarantees" once; its tests must fail.

Each case edits one line of the source, runs the tests that prove the guarantee, reports
whether they failed (they must), and restores the file. Run from the repository root, with
nothing else editing the tree:

    .venv/bin/python tests/mutations.py
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = [
    ("lr > 0", "nftbench/train.py", 'lr: float = Field(1e-3, gt=0,', 'lr: float = Field(1e-3,',
     "tests/test_config_fuzz.py::test_invalid_values_name_their_field"),
    ("finite check", "nftbench/models.py", '    check_finite(model, f"the release at {path}")\n', '',
     "tests/test_guarantees.py -k nan_weights or inf_weights"),
    ("safetensors only", "nftbench/models.py", "    check_safetensors_only(path)\n", "",
     "tests/test_guarantees.py -k pickle_checkpoint"),
    ("public view", "nftbench/worker.py",
     'with public_view(self.entry(a["release"]) / "release") as view:',
     'for view in [self.entry(a["release"]) / "release"]:',
     "tests/test_guarantees.py -k private_artifact"),
    ("narrow scorer", "nftbench/worker.py", 'evaluate=Scorer(self.evaluator, (task,)),',
     'evaluate=lambda m, t: self.evaluator(m, t, [task]),',
     "tests/test_guarantees.py -k private_artifact"),
    ("time limit", "nftbench/worker.py", "            with time_limit(limit):",
     "            with time_limit(None):", "tests/test_guarantees.py -k slow"),
    ("oom reason", "nftbench/worker.py", "    if isinstance(err, torch.OutOfMemoryError | MemoryError):",
     "    if False:", "tests/test_guarantees.py -k oom"),
    ("no partial entry", "nftbench/store.py", "                shutil.rmtree(tmp, ignore_errors=True)",
     "                pass", "tests/test_guarantees.py -k disk_full_while"),
    ("filtering", "nftbench/task.py", "            problem = _unusable_row(self, row, needed)",
     "            problem = None", "tests/test_guarantees.py -k filtering"),
    ("allow-list", "nftbench/worker.py", "        Release(ctx.release_dir, self.cfg.model)  # validates the allow-list",
     "        pass", "tests/test_guarantees.py -k allow_list"),
    ("verified reads", "nftbench/store.py", "        if not verify:", "        if True:",
     "tests/test_engine.py -k corrupt"),
    ("remote code off", "nftbench/models.py",
     "        spec.name_or_path, dtype=spec.torch_dtype(), use_safetensors=True,\n        trust_remote_code=spec.trust_remote_code)",
     "        spec.name_or_path, dtype=spec.torch_dtype(), use_safetensors=True,\n        trust_remote_code=True)",
     "tests/test_guarantees.py -k remote_code"),
    ("worker-death retry", "nftbench/executors.py", "                if deaths[job.id] < 1:",
     "                if False:", "tests/test_guarantees.py -k killed"),
    ("resume/claims", "nftbench/store.py", "        path = self.claim_path(kind, key)\n        path.parent.mkdir(parents=True, exist_ok=True)\n        while True:",
     "        yield True\n        return\n        path = self.claim_path(kind, key)\n        path.parent.mkdir(parents=True, exist_ok=True)\n        while True:",
     "tests/test_engine.py -k concurrent or one_store"),
]
for name, file, old, new, tests in CASES:
    p = ROOT / file
    orig = p.read_text()
    assert old in orig, (name, old)
    p.write_text(orig.replace(old, new, 1))
    try:
        args = tests.split(" -k ")
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:logging", args[0]]
        if len(args) > 1:
            cmd += ["-k", args[1]]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        verdict = "its test fails (good)" if r.returncode == 1 else (
            "its test PASSES (the guarantee is not tested)" if r.returncode == 0
            else f"pytest exit {r.returncode}: not a valid mutation")
        print(f"{name:18s} broken -> {verdict}", flush=True)
    finally:
        p.write_text(orig)
