"""Property tests of config validation: malformed YAML, wrong types, out-of-range values and
unknown names always end in exit code 2 with an error that names the field, never in a traceback,
and nothing is written."""

from __future__ import annotations

import copy
import itertools
import math
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_MATRIX
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nftbench.cli import main

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
COUNTER = itertools.count()


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
not_numbers = st.text(min_size=1, max_size=10).filter(lambda t: not is_number(t.strip()))
non_positive = st.floats(max_value=0.0, allow_nan=False) | st.just(math.nan)

# (path into the tiny config, the field name the error must show, values that are invalid there)
INVALID: list[tuple[tuple[Any, ...], str, st.SearchStrategy]] = [
    (("adversaries", 0, "params", "lr"), "lr", non_positive | not_numbers),
    (("adversaries", 0, "params", "steps"), "steps", st.integers(max_value=0) | not_numbers),
    (("adversaries", 0, "params", "batch_size"), "batch_size", st.integers(max_value=0)),
    (("adversaries", 0, "params", "optimizer"), "optimizer", words.filter(
        lambda w: w not in {"sgd", "sgd_momentum", "sgd_nesterov", "adam", "adamw", "rmsprop",
                            "adagrad", "adadelta"})),
    (("defenses", 0), "rho", (st.floats(max_value=0.0, allow_nan=False)
                              | st.floats(min_value=1.0, exclude_min=True, allow_nan=False,
                                          allow_infinity=False)).map(
        lambda r: {"name": "pmp", "params": {"rho": r}})),
    (("seeds",), "seeds", st.just([]) | not_numbers | st.lists(st.just(1), min_size=2)),
    (("pretrain", "steps"), "steps", st.integers(max_value=-1)),
    (("pretrain", "seq_len"), "seq_len", st.integers(max_value=7)),
    (("eval", "budget_points"), "budget_points", st.integers(max_value=1)),
    (("world", "n_entities"), "n_entities", st.integers(max_value=7)),
    (("threads",), "threads", st.integers(max_value=0)),
    (("limits", "cell_timeout_s"), "cell_timeout_s", non_positive),
    (("model", "tiny", "hidden_size"), "hidden_size", st.integers(max_value=7)),
    (("tasks",), "tasks", st.just([]) | st.integers()),
]


def set_path(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = raw
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    node[path[-1]] = value


def run_config(text: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    path = tmp_path / f"fuzz{next(COUNTER)}.yaml"
    path.write_text(text)
    capsys.readouterr()
    code = main(["run", str(path), "--quiet"])
    return code, capsys.readouterr().err


def base(tmp_path: Path) -> dict[str, Any]:
    raw = copy.deepcopy(TINY_MATRIX)
    raw["output_dir"] = str(tmp_path / "never_written")
    return raw


@FUZZ
@given(data=st.data(), which=st.integers(0, len(INVALID) - 1))
def test_invalid_values_name_their_field(data: st.DataObject, which: int, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    path, field, values = INVALID[which]
    raw = base(tmp_path)
    set_path(raw, path, data.draw(values, label=field))
    code, err = run_config(yaml.safe_dump(raw), tmp_path, capsys)
    assert code == 2, err
    assert err.startswith("nftbench: invalid config") and field in err
    assert "Traceback" not in err
    assert not (tmp_path / "never_written").exists()


@FUZZ
@given(kind=st.sampled_from(["defenses", "adversaries", "tasks"]), name=words)
def test_unknown_plugin_names_are_listed_with_the_known_ones(
        kind: str, name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nftbench.registry import REGISTRIES

    if name in REGISTRIES[{"defenses": "defense", "adversaries": "adversary",
                           "tasks": "task"}[kind]]:
        return
    raw = base(tmp_path)
    raw[kind].append(name)
    code, err = run_config(yaml.safe_dump(raw), tmp_path, capsys)
    assert code == 2 and f"{kind}[" in err and repr(name) in err and "known" in err
    assert not (tmp_path / "never_written").exists()


def known_fields(where: tuple[Any, ...]) -> set[str]:
    """The fields a config accepts at ``where`` (Hypothesis draws strings it finds in the
    code, such as real field names: those are not unknown)."""
    from pydantic import BaseModel

    from nftbench.adversaries.finetune import FullFineTuneConfig
    from nftbench.config import MatrixConfig

    if where[:1] == ("adversaries",):
        return set(FullFineTuneConfig.model_fields)  # the tiny config's adversary: full_ft
    model: Any = MatrixConfig
    for part in where:
        annotation = model.model_fields[part].annotation
        model = next(t for t in (annotation, *typing.get_args(annotation))
                     if isinstance(t, type) and issubclass(t, BaseModel))
    return set(model.model_fields)


@FUZZ
@given(key=words, where=st.sampled_from([(), ("adversaries", 0, "params"), ("pretrain",),
                                         ("model", "tiny"), ("eval",), ("world",)]))
@example(key="include_path", where=("eval",))  # a real field: the draw that once failed here
def test_unknown_fields_are_refused(key: str, where: tuple[Any, ...], tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    raw = base(tmp_path)
    node: Any = raw
    for part in where:
        node = node[part] if not isinstance(node, dict) else node.setdefault(part, {})
    if key in node or key in {"name", "label", "params"} or key in known_fields(where):
        return
    node[key] = 1
    code, err = run_config(yaml.safe_dump(raw), tmp_path, capsys)
    assert code == 2 and key in err and "unknown field" in err
    assert not (tmp_path / "never_written").exists()


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12)


@FUZZ
@given(text=st.text(max_size=200) | yaml_values.map(yaml.safe_dump))
@example(text="?")  # {None: None}: a key that is not a string (found by this test in CI)
def test_malformed_yaml_is_a_config_error(text: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative default output_dir would land here
    code, err = run_config(text, tmp_path, capsys)
    assert code == 2 and err.startswith("nftbench:") and "Traceback" not in err
    assert all(p.suffix == ".yaml" for p in tmp_path.iterdir())  # nothing else was written
