"""What `pip install` puts in site-packages: the plugin folders only under ``nftbench``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "nftbench", "defenses", "adversaries", "tasks")


def test_an_installed_nftbench_claims_no_generic_top_level_name(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:  # build from a copy: an in-tree build would leave build/ behind
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(src)], check=True)
    wheel = next((tmp_path / "dist").glob("nftbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if "/" in n}
    assert tops - {"nftbench"} == {n for n in tops if n.endswith(".dist-info")}, tops
    assert {"nftbench/tasks/qa_city.yaml", "nftbench/defenses/sophon.py",
            "nftbench/adversaries/finetune.py"} <= set(names)
    site = tmp_path / "site"  # a pure wheel installs by unpacking
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import importlib.util as u, nftbench.tasks, nftbench.defenses, "
             "nftbench.adversaries\n"
             "print(nftbench.tasks.__file__)\n"
             "print([n for n in ('tasks', 'defenses', 'adversaries') if u.find_spec(n)])")
    # -S: no site-packages, so the development install of this checkout cannot answer
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(site)}).stdout
    where, claimed = out.splitlines()
    assert Path(where).is_relative_to(site) and claimed == "[]"
