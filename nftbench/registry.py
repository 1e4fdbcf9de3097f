"""Plugin registries: defenses, adversaries and tasks.

A plugin is a class with a typed ``Config`` (a pydantic model whose field defaults are the
papers' settings, each documented at the field) registered by a decorator::

    @register_adversary("my_attack", version="1")
    class MyAttack(Adversary):
        class Config(PluginConfig):
            lr: float = Field(1e-4, gt=0, description="learning rate")

Built-in plugins live in the top-level packages ``defenses/``, ``adversaries/`` and ``tasks/``;
third-party ones are found through the ``nftbench.plugins`` entry-point group or a folder of
Python files given with ``--plugins DIR``. The registry name and ``version`` enter every cache
key, so bumping a plugin's version invalidates its stored results.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

ENTRY_POINT_GROUP = "nftbench.plugins"
BUILTIN_PACKAGES = ("defenses", "adversaries", "tasks")


class PluginConfig(BaseModel):
    """Base of every plugin config: unknown fields are errors; configs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin:
    """Base class of defenses, adversaries and tasks."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def check(self, matrix: Any) -> list[str]:
        """Errors this plugin finds in the matrix it is part of (e.g. a task it names that the
        matrix lacks), reported with the config's other errors before anything runs."""
        return []

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


class UnknownPluginError(KeyError):
    """A plugin name that no registry holds; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


P = TypeVar("P", bound=type[Plugin])


class Registry:
    """Name -> plugin class for one kind of plugin."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[Plugin]] = {}

    def register(self, name: str, *, version: str = "1") -> Callable[[P], P]:
        def decorator(cls: P) -> P:
            existing = self._entries.get(name)
            # Re-importing the same module (a plugin folder scanned twice) is harmless; two
            # different classes under one name would silently shadow results, so it is an error.
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by "
                    f"{existing.__module__}.{existing.__qualname__}"
                )
            if not (isinstance(cls.Config, type) and issubclass(cls.Config, PluginConfig)):
                raise TypeError(f"{self.kind} {name!r}: Config must subclass PluginConfig")
            cls.name = name
            cls.version = version
            self._entries[name] = cls
            return cls

        return decorator

    def get(self, name: str) -> type[Plugin]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {known}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, type[Plugin]]]:
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries


DEFENSES = Registry("defense")
ADVERSARIES = Registry("adversary")
TASKS = Registry("task")
REGISTRIES = {"defense": DEFENSES, "adversary": ADVERSARIES, "task": TASKS}


def register_defense(name: str, *, version: str = "1") -> Callable[[P], P]:
    return DEFENSES.register(name, version=version)


def register_adversary(name: str, *, version: str = "1") -> Callable[[P], P]:
    return ADVERSARIES.register(name, version=version)


def register_task(name: str, *, version: str = "1") -> Callable[[P], P]:
    return TASKS.register(name, version=version)


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
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
    for folder in plugin_dirs:
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"--plugins: {folder} is not a directory")
        for path in sorted(folder.glob("*.py")):
            _import_file(path)
        from tasks import register_task_files  # declarative tasks may live beside the code

        register_task_files(folder)


def type_repr(annotation: Any) -> str:
    """A short readable type: ``adamw|sgd`` for literals, ``int | None`` for unions."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_repr(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(map(type_repr, args))}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def describe_config(config_cls: type[BaseModel]) -> list[dict[str, Any]]:
    """Fields of a config class as rows: name, type, default, description."""
    rows = []
    for field_name, field in config_cls.model_fields.items():
        type_name = type_repr(field.annotation)
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump()
        rows.append(
            {
                "field": field_name,
                "type": type_name,
                "default": default,
                "description": field.description or "",
            }
        )
    return rows
