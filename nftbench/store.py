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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENTRY_FILE = "entry.json"
log = logging.getLogger("nftbench")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(payload: Any) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:24]


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
        return content_key({"kind": kind, **payload})

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

    @contextmanager
    def write(self, kind: str, key: str, payload: dict[str, Any]) -> Iterator[Path]:
        """Yield a temporary folder; on normal exit it becomes the entry ``kind/key``."""
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
            (tmp / ENTRY_FILE).write_text(json.dumps(meta, indent=1, default=str))
            if final.exists():  # a stale or corrupt entry under the same key
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
