from __future__ import annotations

from pathlib import Path

import pytest

from nftbench.store import Store


def test_key_depends_on_every_field(tmp_path: Path) -> None:
    s = Store(tmp_path)
    a = s.key("attack", {"params": {"lr": 1e-3, "steps": 10}, "seed": 0})
    assert a == s.key("attack", {"seed": 0, "params": {"steps": 10, "lr": 1e-3}})
    assert a != s.key("attack", {"params": {"lr": 1e-2, "steps": 10}, "seed": 0})
    assert a != s.key("defend", {"params": {"lr": 1e-3, "steps": 10}, "seed": 0})


def test_write_is_atomic_and_verified(tmp_path: Path) -> None:
    s = Store(tmp_path)
    key = s.key("x", {"a": 1})
    assert not s.has("x", key)
    with s.write("x", key, {"a": 1}) as tmp:
        (tmp / "out.txt").write_text("hello")
        assert not s.has("x", key)  # nothing visible until the block ends
    assert s.has("x", key)
    assert (s.path("x", key) / "out.txt").read_text() == "hello"
    assert s.meta("x", key)["payload"] == {"a": 1}
    (s.path("x", key) / "out.txt").write_text("tampered")
    assert not s.has("x", key)  # checksum mismatch: treated as missing


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path)
    key = s.key("x", {"a": 2})
    with pytest.raises(RuntimeError), s.write("x", key, {"a": 2}) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert not s.has("x", key)
    assert list((tmp_path / "x").iterdir()) == []


def test_a_corrupt_entry_is_recomputed(tmp_path: Path) -> None:
    s = Store(tmp_path)
    key = s.key("x", {"a": 1})
    with s.write("x", key, {"a": 1}) as tmp:
        (tmp / "out.txt").write_text("hello")
    (s.path("x", key) / "entry.json").write_text("{not json")
    assert not s.has("x", key)
    with s.write("x", key, {"a": 1}) as tmp:  # the rewrite replaces the corrupt entry
        (tmp / "out.txt").write_text("again")
    assert s.has("x", key) and (s.path("x", key) / "out.txt").read_text() == "again"
    assert [p.name for p in (tmp_path / "x").iterdir()] == [key]  # no temporary folder left
