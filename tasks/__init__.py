"""Built-in tasks. Each ``*.yaml`` here is a declarative task (see ``nftbench.task``); Python
modules here may register task classes with ``@register_task``."""

from __future__ import annotations

from pathlib import Path

import yaml

from nftbench.registry import TASKS
from nftbench.task import define_task


def register_task_files(folder: str | Path) -> list[str]:
    """Register every ``*.yaml`` task definition in ``folder``; returns the names."""
    names = []
    for path in sorted(Path(folder).glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: a task file must hold a mapping")
        if spec.get("name") in TASKS:
            names.append(spec["name"])
            continue
        try:
            names.append(define_task(spec, origin=str(path)).name)
        except Exception as err:
            raise ValueError(f"{path}: {err}") from err
    return names


register_task_files(Path(__file__).parent)
