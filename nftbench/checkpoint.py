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

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from safetensors.torch import load_file, save_file

TENSORS_FILE = "state.safetensors"
TREE_FILE = "state.json"
T = TypeVar("T")


def flatten(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """A tree of dicts, lists, tuples, tensors and JSON values as (JSON tree, tensors): each
    tensor becomes a named reference, tensors sharing storage are stored once, and dict keys
    and tuples keep their types (an optimizer's state is keyed by int)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}

    def walk(x: Any) -> Any:
        if torch.is_tensor(x):
            x = x.detach()
            ident = (x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape),
                     x.stride(), x.dtype)
            if ident not in seen:
                seen[ident] = f"t{len(seen)}"
                tensors[seen[ident]] = x.cpu().contiguous()
            return {"__tensor__": seen[ident]}
        if isinstance(x, dict):
            return {"__dict__": [[walk(k), walk(v)] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v) for v in x]}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"a checkpoint holds tensors and plain values, not {type(x).__name__}")

    return walk(tree), tensors


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`flatten`."""
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__tuple__" in tree:
            return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
        return {unflatten(k, tensors): unflatten(v, tensors) for k, v in tree["__dict__"]}
    return tree


class Checkpoint:
    """Save and load one stage's resumable state (a dict of tensors and plain Python values).

    ``folder`` None disables it (``due`` is never true, ``load`` finds nothing): a defense
    written against this class runs unchanged where no store is behind it."""

    def __init__(self, folder: str | Path | None, every_s: float = 600.0) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.every_s = every_s
        self._last = time.monotonic()
        self._saves = 0

    def load(self) -> dict[str, Any] | None:
        """The last saved state, or None if there is none."""
        if self.folder is None or not (self.folder / TREE_FILE).exists():
            return None
        # safetensors and JSON: loading a checkpoint runs no code (no pickle anywhere)
        saved = json.loads((self.folder / TREE_FILE).read_text())
        return unflatten(saved["tree"], load_file(self.folder / saved["tensors"]))

    def due(self) -> bool:
        """True when ``every_s`` seconds have passed since the last save (or the start)."""
        return self.folder is not None and time.monotonic() - self._last >= self.every_s

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state``. The tree file is replaced last and names the tensors file it goes
        with, so a save killed halfway leaves the previous checkpoint whole."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tree, tensors = flatten(state)
        self._saves += 1
        name = f"{TENSORS_FILE}.{os.getpid()}.{self._saves}"
        save_file(tensors, self.folder / name)
        tmp = self.folder / f".{TREE_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps({"tensors": name, "tree": tree}))
        os.replace(tmp, self.folder / TREE_FILE)
        for old in self.folder.glob(f"{TENSORS_FILE}.*"):  # earlier saves' tensors
            if old.name != name:
                old.unlink(missing_ok=True)
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
