"""Checkpoints inside a stage: what is saved comes back exactly, and a save killed halfway
leaves the previous checkpoint whole. (That a resumed SOPHON run equals an uninterrupted one
is tested in test_sophon.py.)"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from nftbench.checkpoint import Checkpoint, Replayable, flatten


def adam_state() -> tuple[torch.nn.Module, dict]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[1].weight = torch.nn.Parameter(model[1].weight)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return model, opt.state_dict()


def test_a_state_comes_back_exactly(tmp_path: Path) -> None:
    model, opt = adam_state()
    rng = random.Random(3)
    rng.random()
    shared = torch.arange(6.0)
    state = {"step": 7, "model": model.state_dict(), "opt": opt, "rng": rng.getstate(),
             "torch_rng": torch.get_rng_state(), "log": [{"loss": 0.1, "x": None}],
             "twice": [shared, shared], "nan": float("nan")}
    ckpt = Checkpoint(tmp_path, every_s=0)
    ckpt.save(state)
    back = Checkpoint(tmp_path).load()
    assert back["step"] == 7 and back["log"] == [{"loss": 0.1, "x": None}]
    assert back["rng"] == rng.getstate()  # tuples stay tuples: setstate takes it as is
    assert set(back["opt"]["state"]) == {0, 1, 2, 3}  # int keys stay ints
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.99)
    for name, t in model.state_dict().items():
        assert torch.equal(back["model"][name], t)
    assert torch.equal(back["torch_rng"], torch.get_rng_state())
    assert back["twice"][0].data_ptr() == back["twice"][1].data_ptr()  # stored once
    assert back["nan"] != back["nan"]
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back["opt"])  # an optimizer takes it back


def test_a_killed_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    ckpt = Checkpoint(tmp_path, every_s=0)
    ckpt.save({"step": 1, "w": torch.ones(3)})
    real = Path.write_text

    def dies(self, *args, **kwargs):  # the tensors are written, then the process dies
        if self.name.startswith(".state.json"):
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", dies)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save({"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    back = Checkpoint(tmp_path).load()
    assert back["step"] == 1 and torch.equal(back["w"], torch.ones(3))
    ckpt.save({"step": 3, "w": torch.zeros(3)})  # the next save cleans up after both
    assert len(list(tmp_path.glob("state.safetensors.*"))) == 1


def test_no_folder_no_checkpoint_and_objects_are_refused(tmp_path: Path) -> None:
    off = Checkpoint(None, every_s=0)
    assert not off.due() and off.load() is None
    off.save({"step": 1})
    with pytest.raises(TypeError, match="plain values"):
        flatten({"f": object()})


def test_a_replayable_stream_skips_to_where_it_was() -> None:
    def make():
        return iter(range(100))

    first = Replayable(make)
    seen = [next(first) for _ in range(7)]
    again = Replayable(make, skip=first.drawn)
    assert seen == list(range(7)) and next(again) == 7 and again.drawn == 8
