from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nftbench.cli import EXIT_CONFIG, main
from nftbench.config import ConfigError, resolve


def errors_of(raw: dict[str, Any], overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as err:
        resolve(raw, overrides)
    return str(err.value)


def test_valid_config_resolves(tiny_raw: dict[str, Any]) -> None:
    m = resolve(tiny_raw)
    assert [d.label for d in m.defenses] == ["none"]
    assert [t.label for t in m.restricted_tasks] == ["qa_city"]
    assert [t.label for t in m.capability_tasks] == ["recall_city"]
    assert m.adversaries[0].params["steps"] == 4


def test_misspelled_field_names_field_and_allowed(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["adversaries"][0]["params"]["lrr"] = 0.1
    msg = errors_of(tiny_raw)
    assert "adversaries[0].params.lrr: unknown field (value 0.1)" in msg
    assert "allowed:" in msg and "lr," in msg


def test_misspelled_top_level_field(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["seed"] = [1]
    msg = errors_of(tiny_raw)
    assert "seed: unknown field" in msg and "seeds" in msg


def test_unknown_defense_lists_known(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["defenses"] = ["pmpp"]
    msg = errors_of(tiny_raw)
    assert "defenses[0].name = 'pmpp'" in msg and "known defenses: external, filtered, none" in msg


def test_wrong_type_names_value(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["adversaries"][0]["params"]["lr"] = "fast"
    msg = errors_of(tiny_raw)
    assert "adversaries[0].params.lr = 'fast'" in msg and "number" in msg


def test_out_of_range_and_literal(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["adversaries"][0]["params"].update(lr=-1, optimizer="lion")
    msg = errors_of(tiny_raw)
    assert "params.lr = -1: Input should be greater than 0" in msg
    assert "params.optimizer = 'lion': unknown optimizer 'lion'; known optimizers: " in msg
    assert "adamw" in msg


def test_every_error_is_reported_at_once(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["defenses"] = ["nope"]
    tiny_raw["adversaries"][0]["params"]["steps"] = 0
    with pytest.raises(ConfigError) as err:
        resolve(tiny_raw)
    assert len(err.value.errors) == 2


def test_missing_data_file_is_a_config_error(tiny_raw: dict[str, Any], tmp_path: Path) -> None:
    tiny_raw["tasks"].append({"name": "qa_city", "label": "qa_local", "params": {
        "source": {"type": "hf", "path": "json",
                   "data_files": {"train": str(tmp_path / "missing.jsonl")}}}})
    msg = errors_of(tiny_raw)
    assert "data_files.train: file not found" in msg and "missing.jsonl" in msg


def test_missing_include_path_folder_is_a_config_error(tiny_raw: dict[str, Any],
                                                       tmp_path: Path) -> None:
    tiny_raw["eval"]["include_path"] = [str(tmp_path), str(tmp_path / "my_tasks")]
    msg = errors_of(tiny_raw)
    assert "eval.include_path" in msg and f"folder(s) not found: {tmp_path / 'my_tasks'}" in msg


def test_chat_format_needs_a_tokenizer_with_a_chat_template(tiny_raw: dict[str, Any],
                                                             tmp_path: Path) -> None:
    from nftbench.models import train_tokenizer
    from nftbench.world import World, WorldConfig

    tiny_raw["model"]["prompt_format"] = "chat"
    assert "model = {...}: prompt_format: 'chat' needs a tokenizer with a chat template; the " \
        "embedded model's has none" in errors_of(tiny_raw)
    tok = train_tokenizer(World(WorldConfig(n_entities=8, n_documents=50)).documents(), 300)
    tok.save_pretrained(tmp_path / "base")
    tiny_raw["model"] = {"name_or_path": str(tmp_path / "base"), "prompt_format": "chat"}
    assert f"{tmp_path / 'base'} has none" in errors_of(tiny_raw)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(tmp_path / "instruct")
    tiny_raw["model"]["name_or_path"] = str(tmp_path / "instruct")
    assert resolve(tiny_raw).config.model.prompt_format == "chat"


def test_list_expands_into_named_variants(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["adversaries"][0]["params"].update(lr=[1e-4, 1e-3], optimizer=["sgd", "adam"])
    labels = [a.label for a in resolve(tiny_raw).adversaries]
    assert labels == ["full_ft[lr=0.0001,optimizer=sgd]", "full_ft[lr=0.0001,optimizer=adam]",
                      "full_ft[lr=0.001,optimizer=sgd]", "full_ft[lr=0.001,optimizer=adam]"]


def test_list_typed_field_is_a_value_not_a_sweep(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["adversaries"][0]["params"]["betas"] = [0.8, 0.9]
    m = resolve(tiny_raw)
    assert len(m.adversaries) == 1 and m.adversaries[0].params["betas"] == [0.8, 0.9]
    tiny_raw["adversaries"][0]["params"]["betas"] = [[0.8, 0.9], [0.9, 0.99]]
    assert [a.label for a in resolve(tiny_raw).adversaries] == [
        "full_ft[betas=0.8+0.9]", "full_ft[betas=0.9+0.99]"]


def test_repeated_variant_names_are_refused(tiny_raw: dict[str, Any]) -> None:
    tiny_raw["adversaries"].append({"name": "full_ft", "params": {"lr": 0.1}})
    assert "variant names repeat (full_ft)" in errors_of(tiny_raw)
    tiny_raw["adversaries"][1]["label"] = "hot"
    assert [a.label for a in resolve(tiny_raw).adversaries] == ["full_ft", "hot"]


def test_overrides_by_index_and_by_name(tiny_raw: dict[str, Any]) -> None:
    m = resolve(tiny_raw, ["adversaries.full_ft.params.lr=0.01", "seeds=[3, 4]",
                           "pretrain.lr=1e-2", "adversaries.0.params.steps=7"])
    assert m.adversaries[0].params["lr"] == 0.01 and m.adversaries[0].params["steps"] == 7
    assert m.config.seeds == [3, 4] and m.config.pretrain.lr == 0.01
    assert "0 list items named 'x'" in errors_of(tiny_raw, ["adversaries.x.params.lr=1"])


def test_cli_config_errors_exit_nonzero_and_write_nothing(
        tiny_raw: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = dict(tiny_raw, defenses=["nope"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["run", str(path)]) == EXIT_CONFIG
    assert "known defenses" in capsys.readouterr().err
    assert not Path(tiny_raw["output_dir"]).exists()
    assert main(["run", str(tmp_path / "absent.yaml")]) == EXIT_CONFIG
    path.write_text("name: [unclosed")
    assert main(["run", str(path)]) == EXIT_CONFIG
    assert "not valid YAML" in capsys.readouterr().err
    assert not Path(tiny_raw["output_dir"]).exists()


def test_shipped_configs_validate() -> None:
    """Every config in configs/ resolves; hub configs without their data (no hub here), which is
    the one check they skip."""
    root = Path(__file__).resolve().parent.parent / "configs"
    matrices = {}
    for path in sorted(root.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        hub = raw.get("model", {}).get("name_or_path", "tiny") != "tiny"
        matrices[path.name] = m = resolve(raw, check_data=not hub)
        assert m.defenses and m.adversaries and m.restricted_tasks, path.name
    assert {"default.yaml", "smoke.yaml", "gpu_qwen2.5-0.5b.yaml",
            "gpu_llama3.1-8b.yaml"} <= matrices.keys()
    gpu = matrices["gpu_qwen2.5-0.5b.yaml"].config
    assert gpu.model.device == "auto" and gpu.pretrain.steps == 0
    assert gpu.pretrain.bases == [0]  # a hub model is one base
    for name in ("gpu_qwen2.5-0.5b.yaml", "gpu_llama3.1-8b.yaml"):  # the GPU-ready loop's options
        compute = matrices[name].config.compute
        assert compute.precision == "bf16" and compute.micro_batch_size
        assert compute.gradient_checkpointing
    with pytest.raises(ConfigError, match="sciq"):  # the data check is what needs the hub
        resolve(yaml.safe_load((root / "gpu_qwen2.5-0.5b.yaml").read_text()))


def test_optimizer_fields_are_flat_everywhere(tiny_raw: dict[str, Any]) -> None:
    """One convention: pre-training's optimizer fields sit at its top level, as in every
    adversary's params; the former nested form is refused with the flat form to write."""
    tiny_raw["pretrain"]["optim"] = {"lr": 0.01, "schedule": "constant"}
    msg = errors_of(tiny_raw)
    assert "pretrain.optim is gone" in msg and "pretrain: {lr: 0.01, schedule: constant}" in msg
    del tiny_raw["pretrain"]["optim"]
    tiny_raw["pretrain"].update(lr=0.01, schedule="constant")
    pre = resolve(tiny_raw).config.pretrain
    assert pre.optim().lr == 0.01 and pre.optim().schedule == "constant"
    # the key keeps the optimizer nested, where it was when keys were first published
    assert pre.key_payload(0)["optim"]["lr"] == 0.01 and "lr" not in pre.key_payload(0)
