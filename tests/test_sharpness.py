"""The sharpness diagnostic: power iteration on Hessian-vector products finds the top eigenvalue
of known Hessians, and measures a real release."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from nftbench.sharpness import release_sharpness, summarize, top_eigenvalue


def test_quadratic_top_eigenvalue_is_exact() -> None:
    """0.5 x'Ax + 0.5 y'By over two parameter tensors: the Hessian is block-diagonal with the
    eigenvalues of A and B, and power iteration must find the largest."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([7.5, 3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)) @ q.T
    b = torch.diag(torch.tensor([4.0, 6.0, 1.0], dtype=torch.float64))
    params = {"x": torch.randn(6, dtype=torch.float64), "y": torch.randn(3, dtype=torch.float64)}

    def loss(p):
        return 0.5 * p["x"] @ a @ p["x"] + 0.5 * p["y"] @ b @ p["y"]

    s = top_eigenvalue(loss, params, iters=500, tol=1e-10)
    assert s.converged
    assert s.eigenvalue == pytest.approx(7.5, rel=1e-6)
    b[1, 1] = 9.0  # now the largest curvature is in the other tensor
    assert top_eigenvalue(loss, params, iters=500, tol=1e-10).eigenvalue == pytest.approx(9.0)


def test_nonlinear_loss_matches_the_explicit_hessian() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(8, 3, generator=gen, dtype=torch.float64)

    def flat_loss(flat):
        return ((torch.tanh(x @ flat.view(4, 3)) - y) ** 2).mean()

    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(flat_loss, w.flatten()))
    top = eig.max()
    s = top_eigenvalue(lambda p: flat_loss(p["w"].flatten()), {"w": w}, iters=2000, tol=1e-12)
    assert s.eigenvalue == pytest.approx(float(top), rel=1e-5)


def test_release_sharpness_on_a_tiny_model() -> None:
    from nftbench.models import ModelSpec, TinyLlamaConfig, init_model, train_tokenizer
    from nftbench.world import World, WorldConfig

    world = World(WorldConfig(n_entities=16, n_documents=200))
    tokenizer = train_tokenizer(world.documents(), 300)
    spec = ModelSpec(tiny=TinyLlamaConfig(hidden_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=32,
                                          vocab_size=300))
    examples = [{"prompt": f"question : where does {r['entity']} live ? answer :",
                 "answer": r["value"]} for r in world.records("city", "train")]
    first = release_sharpness(init_model(spec, tokenizer, 0), tokenizer, examples, iters=100)
    again = release_sharpness(init_model(spec, tokenizer, 0), tokenizer, examples, iters=100)
    assert first.converged and first.eigenvalue > 0
    assert first.eigenvalue == again.eigenvalue  # seeded start, deterministic loss
    table = pd.DataFrame({"defense": ["none"] * 3, "task": ["t"] * 3, "base": [0, 1, 2],
                          "eigenvalue": [1.0, 2.0, 3.0], "converged": [True] * 3})
    row = summarize(table).iloc[0]
    assert row.eigenvalue == 2.0 and row.ci_low < 1.0 and row.ci_high > 3.0
    assert row.stable_sgd_lr == pytest.approx(1.0)


def test_sharpness_command_measures_every_release_beside_the_run(tiny_raw, tmp_path,
                                                                 capsys) -> None:
    import yaml

    from nftbench.cli import main

    tiny_raw["defenses"] = ["none", {"name": "pmp", "params": {"rho": 0.5, "eb_max_steps": 3}}]
    tiny_raw["pretrain"]["seeds"] = [0, 1]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    task = next(t if isinstance(t, str) else t["name"] for t in tiny_raw["tasks"]
                if (t if isinstance(t, str) else t["name"]).startswith("qa_"))
    assert main(["sharpness", str(path), "--task", task, "--iters", "30"]) == 0
    out = capsys.readouterr().out
    assert "stable_sgd_lr" in out
    table = pd.read_csv(tmp_path / "run" / "sharpness" / "sharpness.csv")
    assert sorted(zip(table.defense, table.base, strict=True)) == [
        ("none", 0), ("none", 1), ("pmp", 0), ("pmp", 1)]
    assert (table.task == task).all() and (table.eigenvalue > 0).all()
    assert not (tmp_path / "run" / "results.csv").exists()  # the run's own folder untouched
    assert main(["sharpness", str(path), "--task", "no_such_task"]) == 1


def test_sharpness_against_rg_figure(tmp_path) -> None:
    from nftbench.sharpness import plot_against_rg

    table = pd.DataFrame({"defense": ["none", "none", "pmp", "pmp"], "base": [0, 1, 0, 1],
                          "task": "qa", "eigenvalue": [100.0, 300.0, 50.0, 900.0]})
    board = pd.DataFrame({"defense": ["none", "pmp", "pmp"], "task": "qa",
                          "adversary": ["ft", "ft", "lora"], "rg": [1.0, 0.4, float("nan")],
                          "rg_ci_low": [1.0, 0.1, float("nan")],
                          "rg_ci_high": [1.0, 0.7, float("nan")]})
    paths = plot_against_rg(table, board, tmp_path)
    assert [p.name for p in paths] == ["sharpness_vs_rg_qa.png", "sharpness_vs_rg_qa.pdf",
                                       "sharpness_vs_rg_qa.caption.txt"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_a_larger_negative_eigenvalue_does_not_hide_the_top_one() -> None:
    a = torch.diag(torch.tensor([-10.0, 3.0, 1.0], dtype=torch.float64))
    x = {"x": torch.randn(3, dtype=torch.float64)}
    s = top_eigenvalue(lambda p: 0.5 * p["x"] @ a @ p["x"], x, iters=2000, tol=1e-12)
    assert s.eigenvalue == pytest.approx(3.0, rel=1e-6)
    neg = torch.diag(torch.tensor([-10.0, -3.0], dtype=torch.float64))
    y = {"x": torch.randn(2, dtype=torch.float64)}
    assert top_eigenvalue(lambda p: 0.5 * p["x"] @ neg @ p["x"], y, iters=2000,
                          tol=1e-12).eigenvalue == pytest.approx(-3.0, rel=1e-6)
