"""The positive control (pre-training data filtering) and external releases."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from nftbench.cli import main
from nftbench.config import ConfigError, resolve
from nftbench.defenses.external import folder_fingerprint
from nftbench.world import ATTRIBUTE_VALUES, World, WorldConfig

COLORS = set(ATTRIBUTE_VALUES["color"])


def sentences(doc: str) -> list[str]:
    return [s.strip() for s in re.findall(r"[^.]*\.", doc)]


def test_the_filtered_corpus_holds_no_fact_of_the_attribute_and_everything_else() -> None:
    world = World(WorldConfig(n_entities=40, n_documents=600, qa_fraction=0.2))
    full = list(world.documents())
    filtered = list(world.documents(without=["color"]))
    assert not any(COLORS & set(doc.split()) for doc in filtered)
    # the full corpus with its color sentences taken out, documents left empty dropped
    expected = [" ".join(s for s in sentences(doc) if not COLORS & set(s.split()))
                for doc in full]
    assert filtered == [doc for doc in expected if doc]
    assert sum(bool(COLORS & set(doc.split())) for doc in full) > 300  # it did filter
    with pytest.raises(KeyError, match="unknown world attributes"):
        list(world.documents(without=["shoe"]))


def run(raw: dict[str, Any], path: Path) -> pd.DataFrame:
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--quiet"]) == 0
    return pd.read_parquet(Path(raw["output_dir"]) / "results.parquet")


def test_filtered_runs_in_a_matrix_and_checks_its_attributes(tiny_raw: dict[str, Any],
                                                             tmp_path: Path) -> None:
    tiny_raw["defenses"] = ["none", {"name": "filtered", "params": {"attributes": ["city"]}}]
    results = run(tiny_raw, tmp_path / "m.yaml")
    cells = results[(results.release == "filtered") & (results.metric == "score")]
    assert len(cells) and (cells.status == "ok").all() and set(cells.base) == {0}
    bad = dict(tiny_raw, defenses=[{"name": "filtered", "params": {"attributes": ["shoe"]}}])
    with pytest.raises(ConfigError, match="world attributes are"):
        resolve(bad)


def test_an_external_release_is_benchmarked_like_a_defense(tiny_raw: dict[str, Any],
                                                          tmp_path: Path) -> None:
    first = run(tiny_raw, tmp_path / "a.yaml")
    releases = Path(tiny_raw["output_dir"]) / "releases"
    # the undefended releases, brought back as external ones: the same numbers
    again = dict(tiny_raw, output_dir=str(tmp_path / "b"), defenses=[
        "none", {"name": "external", "label": "mine",
                 "params": {"path": str(releases / "none-base{base}")}}])
    second = run(again, tmp_path / "b.yaml")
    score = ["task", "seed", "step", "value"]
    none = first[(first.release == "none") & (first.metric == "score")][score]
    mine = second[(second.release == "mine") & (second.metric == "score")][score]
    pd.testing.assert_frame_equal(none.reset_index(drop=True), mine.reset_index(drop=True))
    # new bytes at the same path are a new key, never a stale cache hit
    copy = tmp_path / "copy" / "base0"
    copy.mkdir(parents=True)
    for f in (releases / "none-base0").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    before = folder_fingerprint(str(tmp_path / "copy" / "base{base}"))
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert folder_fingerprint(str(tmp_path / "copy" / "base{base}")) != before
    missing = dict(tiny_raw, defenses=[{"name": "external",
                                        "params": {"path": str(tmp_path / "nowhere")}}])
    with pytest.raises(ConfigError, match="no release folder"):
        resolve(missing)
