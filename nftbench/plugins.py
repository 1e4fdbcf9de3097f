"""Loading plugins: the built-in ones, the ``nftbench.plugins`` entry-point group, and folders
given with ``--plugins DIR`` (``*.py`` modules and ``*.yaml`` task definitions).

Task definitions register here, and plugin modules when this module imports them: importing
an engine module registers nothing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from collections.abc import Iterable
from pathlib import Path

from nftbench.task import register_task_files

ENTRY_POINT_GROUP = "nftbench.plugins"
BUILTIN_PACKAGES = ("nftbench.defenses", "nftbench.adversaries", "nftbench.tasks")


def _import_package_modules(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
        importlib.import_module(info.name)


def _import_file(path: Path) -> None:
    module_name = f"nftbench_plugin_{path.parent.name}_{path.stem}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[module_name]
        raise


def load_plugins(plugin_dirs: Iterable[str | Path] = ()) -> None:
    """Import built-in plugins, entry-point plugins, and every ``*.py`` (and task ``*.yaml``) in
    each plugin folder. Safe to call more than once."""
    for package in BUILTIN_PACKAGES:
        _import_package_modules(package)
    register_task_files(Path(importlib.import_module("nftbench.tasks").__file__).parent)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
    for folder in plugin_dirs:
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"--plugins: {folder} is not a directory")
        for path in sorted(folder.glob("*.py")):
            _import_file(path)
        register_task_files(folder)  # declarative tasks may live beside the code
