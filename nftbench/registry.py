"""Plugin registries: defenses, adversaries and tasks.

A plugin is a class with a typed ``Config`` (a pydantic model whose field defaults are the
papers' settings, each documented at the field) registered by a decorator::

    @register_adversary("my_attack", version="1")
    class MyAttack(Adversary):
        class Config(PluginConfig):
            lr: float = Field(1e-4, gt=0, description="learning rate")

Built-in plugins live in the folders ``defenses/``, ``adversaries/`` and ``tasks/`` (installed
as ``nftbench.defenses`` and so on); :func:`nftbench.plugins.load_plugins` imports them, the
``nftbench.plugins`` entry-point group and any ``--plugins DIR``. Importing this module
registers nothing. The registry name and ``version`` enter every cache key, so bumping a
plugin's version invalidates its stored results.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict


class PluginConfig(BaseModel):
    """Base of every plugin config: unknown fields are errors; configs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ConfigT = TypeVar("ConfigT", bound=PluginConfig)


class Plugin(Generic[ConfigT]):
    """Base class of defenses, adversaries and tasks, generic in its config class.

    A plugin names its config once, as the type parameter: ``class MyAttack(Adversary[MyConfig])``
    sets ``MyAttack.Config = MyConfig`` (what the registry validates ``params`` with) and types
    ``self.config`` as ``MyConfig``. A subclass that names none inherits its parent's."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    config: ConfigT

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__:  # set explicitly in the class body
            return
        for base in cls.__dict__.get("__orig_bases__", ()):
            for arg in typing.get_args(base):
                if isinstance(arg, TypeVar):  # still generic: its bound (Defense[ConfigT])
                    arg = arg.__bound__
                if isinstance(arg, type) and issubclass(arg, PluginConfig):
                    cls.Config = arg
                    return

    def __init__(self, config: ConfigT | None = None) -> None:
        self.config = config if config is not None else self.Config()  # type: ignore[assignment]

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


E = TypeVar("E")


class Table(Generic[E]):
    """Name -> entry for one kind of registered thing, with the errors a config shows. Adding
    the same thing twice (a module imported again) is harmless; another thing under a taken
    name would silently shadow results, so it is an error."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, E] = {}
        self._origins: dict[str, str] = {}
        self._wheres: dict[str, str] = {}

    def add(self, name: str, entry: E, origin: str, where: str | None = None) -> None:
        """Register ``entry`` under ``name``. ``origin`` identifies it (the same origin again is
        a re-import); ``where`` says where it was defined, for the error (default: origin)."""
        if name in self._entries and self._origins[name] != origin:
            raise ValueError(f"{self.kind} {name!r} is already registered by "
                             f"{self._wheres[name]}")
        self._entries[name] = entry
        self._origins[name] = origin
        self._wheres[name] = where or origin

    def get(self, name: str) -> E:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}; known {self.plural}: {known}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, E]]:
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries


class Registry(Table[type[Plugin]]):
    """Name -> plugin class for one kind of plugin."""

    def register(self, name: str, *, version: str = "1") -> Callable[[P], P]:
        def decorator(cls: P) -> P:
            if not (isinstance(cls.Config, type) and issubclass(cls.Config, PluginConfig)):
                raise TypeError(f"{self.kind} {name!r}: Config must subclass PluginConfig")
            # the same class name from a module imported twice (a plugin folder scanned again)
            self.add(name, cls, cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}")
            cls.name = name
            cls.version = version
            return cls

        return decorator


DEFENSES = Registry("defense")
ADVERSARIES = Registry("adversary", "adversaries")
TASKS = Registry("task")
REGISTRIES = {"defense": DEFENSES, "adversary": ADVERSARIES, "task": TASKS}


def register_defense(name: str, *, version: str = "1") -> Callable[[P], P]:
    return DEFENSES.register(name, version=version)


def register_adversary(name: str, *, version: str = "1") -> Callable[[P], P]:
    return ADVERSARIES.register(name, version=version)


def register_task(name: str, *, version: str = "1") -> Callable[[P], P]:
    return TASKS.register(name, version=version)


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
