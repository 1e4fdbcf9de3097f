"""Checkpoints inside a stage, so a stage that takes hours survives its process.

The store keeps finished stages; a stage killed halfway (a session that ends, a machine that
reboots) would start again from nothing. A long stage saves its state through a
:class:`Checkpoint` every ``every_s`` seconds into a folder of the store that only the holder
of the stage's claim writes (``<store>/<kind>/.partial/<key>/``), and the next attempt at the
same key resumes from it. The folder is removed when the stage's entry is written.

What a stage saves is its own business (weights, optimizer states, RNG states, how far its
data streams have been read: see :class:`Replayable`); it must be enough that the resumed run
computes what an uninterrupted one would, bit for bit on the same kernel path. Checkpoints are
private: they never enter a release, and they are not results (no cache key covers them).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

STATE_FILE = "state.pt"
T = TypeVar("T")


class Checkpoint:
    """Save and load one stage's resumable state (a dict of tensors and plain Python values).

    ``folder`` None disables it (``due`` is never true, ``load`` finds nothing): a defense
    written against this class runs unchanged where no store is behind it."""

    def __init__(self, folder: str | Path | None, every_s: float = 600.0) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.every_s = every_s
        self._last = time.monotonic()

    @property
    def path(self) -> Path | None:
        return self.folder / STATE_FILE if self.folder is not None else None

    def load(self) -> dict[str, Any] | None:
        """The last saved state, or None if there is none."""
        if self.path is None or not self.path.exists():
            return None
        # weights_only: the state is tensors and plain containers, never arbitrary objects
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def due(self) -> bool:
        """True when ``every_s`` seconds have passed since the last save (or the start)."""
        return self.folder is not None and time.monotonic() - self._last >= self.every_s

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically: a killed save leaves the previous checkpoint intact."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{STATE_FILE}.{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self._last = time.monotonic()

    def clear(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class Replayable(Generic[T]):
    """An iterator that counts what it has yielded, so a resumed stage can rebuild it from its
    seed and skip to the same place (``make`` must give the same sequence every call)."""

    def __init__(self, make: Callable[[], Iterator[T]], skip: int = 0) -> None:
        self._it = make()
        self.drawn = 0
        for _ in range(skip):
            next(self)

    def __iter__(self) -> Replayable[T]:
        return self

    def __next__(self) -> T:
        item = next(self._it)
        self.drawn += 1
        return item
