"""Bring your own release: weights a method outside nftbench produced, benchmarked like any
defense.

``path`` is a release folder (safetensors weights, config, tokenizer), or a template with
``{base}`` naming one folder per base (``my_method/base{base}``, made from nftbench's bases in
``RUN/releases/none-base<seed>``, or from the user's own pre-training runs). The folders'
contents are hashed into the config (``fingerprint``), so new weights at the same path are a new
stage key and never a stale cache hit. ``benchmarks/power.py`` uses it for releases of known
strength.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Any

from pydantic import Field, computed_field

from nftbench.api import Defense, DefenseContext, Release
from nftbench.registry import PluginConfig, register_defense


def folder_fingerprint(pattern: str) -> str:
    """sha256 over the names and bytes of every file in the folders ``pattern`` names
    (``{base}`` matches any base)."""
    digest = hashlib.sha256()
    for folder in sorted(glob.glob(pattern.replace("{base}", "*"))):
        for file in sorted(Path(folder).rglob("*")):
            if file.is_file():
                digest.update(str(file.relative_to(folder)).encode())
                with file.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
    return digest.hexdigest()[:16]


class ExternalConfig(PluginConfig):
    path: str = Field(description="release folder, or a template with {base} (the base's "
                      "pre-training seed)")

    @computed_field(description="content hash of the folders (enters the stage key)")
    @property
    def fingerprint(self) -> str:
        return folder_fingerprint(self.path)


@register_defense("external", version="1")
class ExternalRelease(Defense[ExternalConfig]):
    """A release made elsewhere: a folder, or one per base (path with {base})."""

    def folder(self, base: int) -> Path:
        return Path(self.config.path.format(base=base))

    def check(self, matrix: Any) -> list[str]:
        missing = [str(self.folder(b)) for b in matrix.config.pretrain.bases
                   if not (self.folder(b) / "config.json").exists()]
        return [f"params.path: no release folder at {', '.join(missing)}"] if missing else []

    def defend(self, ctx: DefenseContext) -> None:
        model, _ = Release(self.folder(ctx.pretrain.seed), ctx.spec).load()
        ctx.save_release(model)
