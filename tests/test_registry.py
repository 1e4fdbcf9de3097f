from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nftbench import plugins, registry
from nftbench.cli import main
from nftbench.plugins import load_plugins
from nftbench.registry import ADVERSARIES, DEFENSES, TASKS, UnknownPluginError


def test_builtins_are_registered() -> None:
    assert "none" in DEFENSES
    assert "full_ft" in ADVERSARIES
    assert {"qa_city", "recall_city"} <= set(TASKS.names())


def test_unknown_plugin_lists_known_ones() -> None:
    with pytest.raises(UnknownPluginError) as err:
        DEFENSES.get("nonee")
    msg = str(err.value)
    assert msg.startswith("unknown defense 'nonee'; known defenses:") and "none" in msg
    with pytest.raises(UnknownPluginError) as err:
        ADVERSARIES.get("full_fft")
    assert str(err.value).startswith("unknown adversary 'full_fft'; known adversaries:")


def test_two_classes_under_one_name_is_an_error() -> None:
    class A(registry.Plugin):
        pass

    class B(registry.Plugin):
        pass

    reg = registry.Registry("thing")
    reg.register("x")(A)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(B)


def test_plugin_folder_outside_repo(tmp_path: Path) -> None:
    folder = tmp_path / "my_plugins"
    folder.mkdir()
    (folder / "shout.py").write_text(textwrap.dedent('''
        from pydantic import Field
        from nftbench.api import Adversary
        from nftbench.registry import PluginConfig, register_adversary

        @register_adversary("outside_attack", version="3")
        class OutsideAttack(Adversary):
            """An attack defined outside the repository."""
            class Config(PluginConfig):
                lr: float = Field(0.5, description="a documented field")
    '''))
    load_plugins([folder])
    cls = ADVERSARIES.get("outside_attack")
    assert cls.version == "3" and cls.Config().lr == 0.5


def test_entry_point_plugins_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = []

    class FakeEntryPoint:
        def load(self) -> None:
            loaded.append(True)

    def entry_points(group: str) -> list[FakeEntryPoint]:
        return [FakeEntryPoint()] if group == plugins.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", entry_points)
    load_plugins()
    assert loaded == [True]


def test_missing_plugin_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_plugins([tmp_path / "nope"])


def test_list_shows_every_plugin_with_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "full_ft (v1)" in out and "lr: float = 0.001  # peak learning rate" in out
    assert "qa_city (v1)  [restricted, generative]" in out
    assert "none (v1)" in out


def test_the_public_surface_is_one_import() -> None:
    import nftbench

    assert set(nftbench.__all__) == set(nftbench._EXPORTS)
    for name in nftbench.__all__:  # each resolves to the object its home module defines
        assert getattr(nftbench, name) is getattr(
            __import__(nftbench._EXPORTS[name], fromlist=[name]), name), name
    assert issubclass(nftbench.Defense, registry.Plugin)
    with pytest.raises(AttributeError):
        nftbench.not_a_name  # noqa: B018


def test_a_plugin_names_its_config_once() -> None:
    from nftbench import Adversary, PluginConfig

    class Cfg(PluginConfig):
        lr: float = 0.5

    class Attack(Adversary[Cfg]):
        pass

    class Child(Attack):  # names none: inherits its parent's
        pass

    assert Attack.Config is Cfg and Child.Config is Cfg and Attack().config.lr == 0.5
    assert Adversary.Config is PluginConfig  # a still-generic base: its bound
    assert DEFENSES.get("sophon").Config.__name__ == "SophonConfig"
    assert ADVERSARIES.get("sophon_paper").Config().lr == 1e-4  # a subclass of full_ft
