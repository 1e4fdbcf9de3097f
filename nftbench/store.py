"""The content-addressed store shared by every stage.

An entry is a directory ``ROOT/<kind>/<key>/`` whose key is a hash of everything the stage's
output depends on: the stage kind, its resolved config, the keys of its inputs, data
fingerprints and plugin versions (the caller builds that payload). A changed config therefore
gets a new key and never reuses a stale result.

Writes are atomic: a stage writes into a private temporary folder, an ``entry.json`` with a
SHA-256 of every file is written last, and the folder is renamed into place. A run killed at any
moment leaves at most an orphaned temporary folder, never a half-written entry; entries whose
files no longer match their checksums (or whose ``entry.json`` does not parse) are treated as
missing, with a warning, and recomputed.

Claims make a store safe to share between workers (processes of one run, two runs, Ray workers
on a shared filesystem): a stage is computed under an exclusive ``flock`` on
``ROOT/<kind>/.claims/<key>.lock``, so a second worker that wants the same entry waits for the
first and then reads its result. The kernel drops the lock when its holder dies, even by SIGKILL,
so a claim never outlives a killed run; ``running(kind, key)`` asks whether one is held now.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENTRY_FILE = "entry.json"
CLAIMS = ".claims"
PARTIAL = ".partial"  # checkpoints of stages under way, one folder per key
log = logging.getLogger("nftbench")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(payload: Any) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:24]


def stage_key(kind: str, payload: dict[str, Any]) -> str:
    """The key of a stage's entry: the content hash of its kind and payload."""
    return content_key({"kind": kind, **payload})


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """Directory-backed, content-addressed, atomic."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def key(self, kind: str, payload: dict[str, Any]) -> str:
        return stage_key(kind, payload)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def has(self, kind: str, key: str, verify: bool = True) -> bool:
        entry = self.path(kind, key) / ENTRY_FILE
        if not entry.exists():
            return False
        if not verify:
            return True
        try:
            files = json.loads(entry.read_text())["files"]
        except (json.JSONDecodeError, KeyError):
            files = None
        base = entry.parent
        if files is not None and all((base / name).exists()
                                     and file_sha256(base / name) == digest
                                     for name, digest in files.items()):
            return True
        log.warning("store: %s/%s does not match its checksums; it will be recomputed",
                    kind, key)
        return False

    def meta(self, kind: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(kind, key) / ENTRY_FILE).read_text())

    def partial_path(self, kind: str, key: str) -> Path:
        """Where a long stage keeps its checkpoint until its entry is written (see
        :mod:`nftbench.checkpoint`); only the holder of the claim on ``kind/key`` writes it."""
        return self.root / kind / PARTIAL / key

    def claim_path(self, kind: str, key: str) -> Path:
        return self.root / kind / CLAIMS / f"{key}.lock"

    @contextmanager
    def claim(self, kind: str, key: str, wait: bool = True) -> Iterator[bool]:
        """Hold the exclusive claim on ``kind/key`` for the block; yields False (without
        waiting) if ``wait`` is off and another worker holds it. On entry, temporary folders
        that a killed writer of this key left behind are removed (only the holder writes them).
        """
        path = self.claim_path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    yield False
                    return
                log.info("store: %s/%s is being computed by %s; waiting for it", kind, key,
                         _read_holder(path))
                fcntl.flock(fd, fcntl.LOCK_EX)
            # The holder before us may have unlinked the file after we opened it: then our lock
            # is on a dead inode and a third worker may hold the live one. Retry on the path.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.time()}).encode())
            for orphan in path.parent.parent.glob(f".{key}.*"):
                shutil.rmtree(orphan, ignore_errors=True)
            yield True
        finally:
            path.unlink(missing_ok=True)  # before the unlock, see above
            os.close(fd)

    def running(self, kind: str, key: str) -> dict[str, Any] | None:
        """Who holds the claim on ``kind/key`` now ({pid, host, since}), or None."""
        path = self.claim_path(kind, key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path) or {}
        else:
            return None  # a file left by a killed holder: nobody holds it
        finally:
            os.close(fd)

    @contextmanager
    def write(self, kind: str, key: str, payload: dict[str, Any],
              measure: Callable[[], dict[str, Any]] | None = None) -> Iterator[Path]:
        """Yield a temporary folder; on normal exit it becomes the entry ``kind/key``, its
        meta holding what ``measure()`` then returns (e.g. the stage's peak memory)."""
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        start = time.time()
        try:
            yield tmp
            files = {str(p.relative_to(tmp)): file_sha256(p)
                     for p in sorted(tmp.rglob("*")) if p.is_file()}
            meta = {"kind": kind, "key": key, "payload": payload, "files": files,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "wall_s": round(time.time() - start, 3)}
            meta |= measure() if measure is not None else {}
            (tmp / ENTRY_FILE).write_text(json.dumps(meta, indent=1, default=str))
            if final.exists():  # a stale or corrupt entry under the same key
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
