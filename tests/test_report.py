"""Leaderboard metrics on a hand-made results table with known answers, and every report file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nftbench.cli import main
from nftbench.metrics import area_under_curve, cell_table, relative_gain, steps_ratio
from nftbench.records import RESULT_COLUMNS, row
from nftbench.report import (
    RG_LIMITS,
    PrintWarning,
    ReportConfig,
    authorized_table,
    leaderboard,
    pdf_width_in,
    plot_sweeps,
    rg_table,
    save_figure,
    worst_case,
)

STEPS = [0, 10, 20]


def curve(release: str, task: str, seed: int, scores: list[float], adversary: str = "ft",
          status: str = "ok") -> list[dict]:
    return [row(release=release, adversary=adversary, task=task, role="restricted", seed=seed,
                step=s, tokens=100 * s, flops=1e6 * s, metric="score", value=v, status=status)
            for s, v in zip(STEPS, scores, strict=True)]


def table() -> pd.DataFrame:
    rows = []
    for seed, (u, d) in enumerate([(0.80, 0.40), (0.90, 0.50), (0.85, 0.45)]):
        rows += curve("none", "qa", seed, [0.0, 0.8, u])
        rows += curve("def[s=1]", "qa", seed, [0.0, 0.2, d])
        rows += curve("def[s=2]", "qa", seed, [0.0, 0.1, d / 2])
        rows += curve("scratch", "qa", seed, [0.0, 0.1, 0.1])
        # qb: pre-training does not help (none == scratch): RG is undefined
        rows += curve("none", "qb", seed, [0.0, 0.1, 0.1])
        rows += curve("scratch", "qb", seed, [0.0, 0.1, 0.1],
                      status="diverged" if seed == 1 else "ok")
        if seed == 2:
            rows.append(row(release="def[s=1]", adversary="ft", task="qb", role="restricted",
                            seed=2, metric="score", value=None, status="failed"))
        else:
            rows += curve("def[s=1]", "qb", seed, [0.0, 0.1, 0.1])
    for release, cap in (("none", 0.9), ("def[s=1]", 0.45), ("def[s=2]", 0.3),
                         ("scratch", 0.0)):
        rows.append(row(release=release, adversary="-", task="cap", role="capability",
                        step=0, metric="score", value=cap))
        if release != "scratch":  # capability of the attacked models
            rows.append(row(release=release, adversary="ft", task="qa", role="restricted",
                            seed=0, step=20, metric="capability_after/cap", value=cap - 0.01))
    for trial, best in ((1, 0.3), (2, 0.6)):
        rows.append(row(release="none", adversary="ft", task="qa", role="restricted", seed=0,
                        trial=trial, flops=1e6 * trial, metric="effort_best", value=best))
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def test_relative_gain_known_answer() -> None:
    cells = cell_table(table())
    rg = relative_gain(cells, "def[s=1]", "ft", "qa")
    assert rg.mean == pytest.approx((0.45 - 0.1) / (0.85 - 0.1))
    assert rg.ci_low <= rg.mean <= rg.ci_high and rg.n_seeds == 3 and not rg.undefined
    none = relative_gain(cells, "none", "ft", "qa")
    assert none.mean == pytest.approx(1.0)


def test_undefined_denominator_carries_its_reason() -> None:
    rg = relative_gain(cell_table(table()), "def[s=1]", "ft", "qb")
    assert np.isnan(rg.mean) and "under the minimum gap" in rg.undefined
    assert "none - scratch = 0.000" in rg.undefined


def test_area_under_curve_and_steps_ratio() -> None:
    assert area_under_curve(np.array([0, 10, 20.0]), np.array([0, 0.8, 0.8])) == \
        pytest.approx(0.6)
    cells = cell_table(table())
    ratio, censored = steps_ratio(cells, "def[s=1]", "ft", "qa", fraction=0.9)
    # none reaches 0.9 * 0.85 at step 10 in every seed; def never does: censored at 20
    assert (ratio.mean, censored, ratio.undefined) == (2.0, 3, "")


def test_leaderboard_counts_failed_and_diverged_apart() -> None:
    board = leaderboard(table()).set_index(["defense", "task"])
    qa = board.loc[("def[s=1]", "qa")]
    assert qa.utility_retention == pytest.approx(0.5)
    assert qa.delta_vs_none == pytest.approx(0.45 - 0.85)
    assert qa.gain == pytest.approx(0.45)
    assert qa.capability_drop == pytest.approx(0.01)
    qb = board.loc[("def[s=1]", "qb")]
    assert (qb.n_seeds, qb.n_failed, qb.n_diverged) == (2, 1, 0)
    assert qb.rg_undefined and np.isnan(qb.rg)  # never counted as resisted
    assert "scratch" not in board.index.get_level_values("defense")


def test_worst_case_and_epsilon_bound() -> None:
    board = leaderboard(table())
    hot = board[(board.defense == "def[s=1]") & (board.task == "qa")]
    board = pd.concat([board, hot.assign(adversary="hot", rg=0.9, capability_drop=0.3)])
    worst = worst_case(board, epsilon=0.05).set_index(["defense", "task"])
    assert worst.loc[("def[s=1]", "qa"), "worst_adversary"] == "hot"
    assert worst.loc[("def[s=1]", "qa"), "eps_adversary"] == "ft"  # hot costs 0.3 capability
    assert worst.loc[("def[s=1]", "qb"), "worst_adversary"] == ""  # every RG undefined


def legend_overlaps(fig) -> list[str]:
    """Plotted markers that fall inside a legend's box, in display coordinates."""
    import numpy as np

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    boxes = [leg.get_window_extent(renderer) for leg in legends + list(fig.legends)]
    hits = []
    for ax in fig.axes:
        points = [line.get_xydata() for line in ax.get_lines() if line.get_marker() not in
                  (None, "None", "", " ")]
        points += [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
        for xy in points:
            xy = np.asarray(xy, dtype=float)
            xy = xy[np.isfinite(xy).all(axis=1)]
            if not len(xy):
                continue
            for x, y in ax.transData.transform(xy):
                hits += [f"{ax.get_title()}: ({x:.0f}, {y:.0f})" for box in boxes
                         if box.contains(x, y)]
    return hits


def test_report_writes_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nftbench import report as report_module

    save = report_module.save_figure
    overlaps: dict[str, list[str]] = {}
    texts: dict[str, list[str]] = {}

    def checked(fig, folder, name, *args, **kwargs):  # no legend over a plotted marker
        overlaps[name] = legend_overlaps(fig)
        texts[name] = [t.get_text() for ax in fig.axes for t in ax.texts]
        return save(fig, folder, name, *args, **kwargs)

    monkeypatch.setattr(report_module, "save_figure", checked)
    table().to_parquet(tmp_path / "results.parquet")
    variants = {"none": {"plugin": "none", "params": {}},
                "def[s=1]": {"plugin": "def", "params": {"s": 1}},
                "def[s=2]": {"plugin": "def", "params": {"s": 2}}}
    (tmp_path / "manifest.json").write_text(json.dumps({"variants": {"defenses": variants}}))
    assert main(["report", str(tmp_path), "--x", "flops"]) == 0
    report = tmp_path / "report"
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "worst_case.csv"):
        assert (report / name).stat().st_size > 0
    for fig in ("curves_qa", "curves_qb", "rg_steps_qa", "heatmap_rg", "pareto",
                "sweep_def_s_qa", "variance_qa", "effort"):
        for ext in ("png", "pdf"):
            assert (report / f"{fig}.{ext}").stat().st_size > 1000, fig
    md = (report / "leaderboard.md").read_text()
    assert "| def[s=1]" in md and "undefined" in md and "under the minimum gap" in md
    tex = (report / "leaderboard.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert main(["report", str(tmp_path / "nope")]) == 2
    check_print_ready(report)
    assert {"curves_qa", "pareto", "sweep_def_s_qa", "variance_qa", "effort"} <= set(overlaps)
    assert not any(overlaps.values()), overlaps
    # none's RG is 1 by definition: the heatmap writes it without a zero-width interval, and
    # every other value with its interval
    cells = texts["heatmap_rg"]
    assert "1.00" in cells and not any(t.startswith("[1.00") for t in cells)
    assert sum(t.startswith("[") for t in cells) == sum(
        not t.startswith("[") and t not in ("1.00", "n/a") for t in cells)


def check_print_ready(report: Path) -> None:
    """Every PDF embeds TrueType (Type 42) fonts and no Type 3 font and is one column or two
    wide; every figure has a caption; figures.tex holds one well-formed figure per captioned
    PDF; index.html carries the leaderboard's rows and every figure inline, and loads nothing
    from outside."""
    pdfs = sorted(report.glob("*.pdf"))
    assert pdfs
    for pdf in pdfs:
        raw = pdf.read_bytes()
        assert b"/Type3" not in raw, pdf.name
        assert b"/TrueType" in raw or b"/CIDFontType2" in raw, pdf.name
        assert pdf_width_in(pdf) in (pytest.approx(3.25), pytest.approx(6.75)), pdf.name
        caption = report / f"{pdf.stem}.caption.txt"
        assert len(caption.read_text().split()) > 10, pdf.name
    tex = (report / "figures.tex").read_text()
    body = re.sub(r"\\[{}%&$#_]", "", tex)  # escaped specials are not structure
    assert body.count("{") == body.count("}")
    opened = re.findall(r"\\begin\{(figure\*?)\}", tex)
    assert opened == re.findall(r"\\end\{(figure\*?)\}", tex) and len(opened) == len(pdfs)
    for pdf in pdfs:  # a double-column figure spans the page (figure*), a single one does not
        env = "figure" if pdf_width_in(pdf) < 4 else "figure*"
        assert re.search(rf"\\begin\{{{re.escape(env)}\}}\[t\]\s*\\centering\s*"
                         rf"\\includegraphics\[[^]]*\]\{{{re.escape(pdf.name)}\}}", tex), pdf
    included = re.findall(r"\\includegraphics\[[^]]*\]\{([^}]*)\}", tex)
    assert sorted(included) == [p.name for p in pdfs]
    labels = re.findall(r"\\label\{([^}]*)\}", tex)
    assert len(set(labels)) == len(labels) == len(pdfs)
    page = (report / "index.html").read_text()
    data = json.loads(re.search(r'id="leaderboard-data">(.*?)</script>', page, re.S).group(1))
    board = pd.read_csv(report / "leaderboard.csv")
    assert len(data["rows"]) == len(board)
    assert [r["cells"][0] for r in data["rows"]] == board.defense.tolist()
    assert page.count("data:image/png;base64,") == len(list(report.glob("*.png")))
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # works offline


def page_order(report: Path, sort: str, desc: bool) -> list[list[str]]:
    """The leaderboard's rows as headless Chromium shows them, sorted by ``sort``."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    url = (report / "index.html").resolve().as_uri() + f"#sort={sort}&desc={int(desc)}"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    body = re.search(r"<tbody>(.*?)</tbody>", dom, re.S).group(1)
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs headless Chromium (Debian package chromium)")
def test_the_report_page_sorts_in_a_browser(tmp_path: Path) -> None:
    table().to_parquet(tmp_path / "results.parquet")
    assert main(["report", str(tmp_path)]) == 0
    report = tmp_path / "report"
    board = pd.read_csv(report / "leaderboard.csv")
    columns = json.loads(re.search(r'id="leaderboard-data">(.*?)</script>',
                                   (report / "index.html").read_text(), re.S).group(1))["columns"]
    rg = columns.index("RG final")
    for desc in (False, True):
        rows = page_order(report, "RG final", desc)
        assert len(rows) == len(board)
        values = [float(r[rg].split()[0]) for r in rows if not r[rg].startswith("undefined")]
        assert values == sorted(values, reverse=desc)  # undefined RG last, both ways
        assert all(r[rg].startswith("undefined") for r in rows[len(values):])


def test_report_config_defaults() -> None:
    cfg = ReportConfig()
    assert (cfg.level, cfg.threshold, cfg.epsilon) == (0.95, 0.9, 0.05)


def test_rg_table_lays_out_the_leaderboard() -> None:
    board = leaderboard(table())
    wide = rg_table(board)
    assert list(wide.columns) == ["defense", "utility", "ft / qa", "ft / qb"]
    assert wide.defense.tolist() == ["def[s=1]", "def[s=2]"]
    first = wide.set_index("defense").loc["def[s=1]"]
    assert first["utility"] == "0.50" and first["ft / qa"].startswith("0.47 [")
    assert first["ft / qb"] == "undefined"


def test_owner_rows_stay_out_of_attack_metrics() -> None:
    rows = table()
    owner = pd.DataFrame([dict(r, authorized=True, value=0.8 if r["step"] == 20 else r["value"])
                          for r in curve("def[s=1]", "qa", 0, [0.0, 0.5, 0.8])]
                         + [dict(r, authorized=True) for r in curve("def[s=1]", "qa", 1,
                                                                    [0.0, 0.5, 0.7])]
                         + [dict(r, authorized=True) for r in curve("def[s=1]", "qa", 2,
                                                                    [0.0, 0.5, 0.9])],
                         columns=RESULT_COLUMNS)
    both = pd.concat([rows, owner], ignore_index=True)
    before = leaderboard(rows).set_index(["defense", "task"]).final_score
    after = leaderboard(both).set_index(["defense", "task"]).final_score
    assert after.equals(before)
    auth = authorized_table(both).iloc[0]
    assert auth["owner final"].startswith("0.80 [") and auth["attacker final"].startswith(
        "0.45 [")
    assert auth["owner RG"].startswith(f"{(0.8 - 0.1) / (0.85 - 0.1):.2f} [")


def test_a_report_of_two_runs_is_the_report_of_one_run_holding_both(
        tiny_raw: dict, tmp_path: Path) -> None:
    """Papers sweep in separate runs: `nftbench report A B -o OUT` equals the report of the run
    whose matrix holds both (same store, so the same stages); rows both runs hold (scratch's)
    appear once; and runs that mean different things by one row name are refused."""
    import copy

    import yaml

    def run(name: str, defenses: list, **changes: object) -> Path:
        raw = copy.deepcopy(tiny_raw)
        raw |= {"name": name, "output_dir": str(tmp_path / name),
                "store_dir": str(tmp_path / "store"), "defenses": defenses, **changes}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["run", str(path), "--quiet"]) == 0
        return tmp_path / name

    a = run("a", ["none"])
    b = run("b", [{"name": "filtered", "params": {"attributes": ["city"]}}])
    both = run("both", ["none", {"name": "filtered", "params": {"attributes": ["city"]}}])
    out = tmp_path / "combined"
    assert main(["report", str(a), str(b), "-o", str(out)]) == 0

    def board(folder: Path) -> pd.DataFrame:
        frame = pd.read_csv(folder / "leaderboard.csv")
        return frame.sort_values(list(frame.columns[:3])).reset_index(drop=True)

    combined, single = board(out), board(both / "report")
    assert set(combined.defense) == {"none", "filtered"}
    pd.testing.assert_frame_equal(combined, single)
    merged = pd.read_csv(out / "results.csv")
    whole = pd.read_parquet(both / "results.parquet")
    assert len(merged) == len(whole)  # scratch's rows, in both runs, counted once
    assert {p.name for p in (both / "report").iterdir()} <= {p.name for p in out.iterdir()}

    other_world = run("c", ["none"], world={**tiny_raw["world"], "seed": 7})
    with pytest.raises(Exception, match="means a different stage"):
        from nftbench.report import combine_runs
        combine_runs([a, other_world])
    assert main(["report", str(a), str(other_world), "-o", str(tmp_path / "x")]) == 2
    assert main(["report", str(a), str(b)]) == 2  # several runs need -o


def test_shards_by_base_combine_into_the_report_of_the_whole_matrix(
        tiny_raw: dict, tmp_path: Path) -> None:
    """A matrix run base by base (in separate sessions, or machines) and a published report
    folder (results.csv and manifest.json only, as in results/) combine into the report of the
    whole matrix, with a manifest that re-plans like a run's; a published folder whose keys
    today's code no longer plans is refused, with the reason."""
    import copy
    import json
    import shutil

    import yaml

    from nftbench.run_folder import RunFolder

    def run(name: str, bases: list[int]) -> Path:
        raw = copy.deepcopy(tiny_raw)
        raw |= {"name": "t", "output_dir": str(tmp_path / name),
                "store_dir": str(tmp_path / "store")}
        raw["pretrain"] = raw["pretrain"] | {"seeds": bases}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["run", str(path), "--quiet"]) == 0
        return tmp_path / name

    first, second, whole = run("b0", [0]), run("b1", [1]), run("all", [0, 1])
    published = tmp_path / "results" / "b0"
    published.mkdir(parents=True)
    for name in ("results.csv", "manifest.json"):
        shutil.copy(first / name, published / name)
    out = tmp_path / "combined"
    assert main(["report", str(published), str(second), "-o", str(out)]) == 0

    def board(folder: Path) -> pd.DataFrame:
        frame = pd.read_csv(folder / "leaderboard.csv")
        return frame.sort_values(list(frame.columns[:3])).reset_index(drop=True)

    pd.testing.assert_frame_equal(board(out), board(whole / "report"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["pretrain"]["seeds"] == [0, 1]
    assert [m["run"] for m in manifest["combined_from"]] == [str(published), str(second)]
    made = {(s["kind"], s["label"], s["key"]) for s in manifest["stages"]}
    whole_made = {(s["kind"], s["label"], s["key"]) for s in
                  json.loads((whole / "manifest.json").read_text())["stages"]}
    assert made == whole_made  # the same stages as the one run of both bases
    assert len(RunFolder(out).stage_plan()["jobs"]) == len(made)  # and it re-plans

    # a published folder re-rendered in place keeps its own results table and manifest
    kept = {name: (published / name).read_bytes() for name in ("results.csv", "manifest.json")}
    assert main(["report", str(published), "-o", str(published)]) == 0
    assert {name: (published / name).read_bytes() for name in kept} == kept
    pd.testing.assert_frame_equal(board(published), board(first / "report"))

    recorded = json.loads((published / "manifest.json").read_text())
    recorded["stages"][-1]["key"] = "0" * 24  # a stage today's code would key otherwise
    (published / "manifest.json").write_text(json.dumps(recorded))
    with pytest.raises(Exception, match="other keys with today's code"):
        from nftbench.report import combine_runs
        combine_runs([published, second])


def test_a_sweep_line_joins_only_one_variant_family(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Variants sharing the swept value but differing in another parameter are two lines, never
    one zig-zag; an outlier is drawn at the axis' edge with its value, not allowed to set it."""
    from nftbench import report as report_module

    figures = {}

    def keep(fig, folder, name, *args, **kwargs):
        fig.canvas.draw()
        figures[name] = [(ax.get_title(), line.get_gid(), line.get_xydata().copy())
                         for ax in fig.axes
                         for line in ax.get_lines()  # the data lines, not the bars' caps
                         if line.get_gid() and line.get_linestyle() not in ("None", "")]
        figures[name + " ylim"] = [ax.get_ylim() for ax in fig.axes[:-1]]
        figures[name + " texts"] = [t.get_text() for ax in fig.axes for t in ax.texts]
        return save_figure(fig, folder, name, *args, **kwargs)

    monkeypatch.setattr(report_module, "save_figure", keep)
    rg = {("frozen", 0.5): 0.2, ("frozen", 0.9): 0.4, ("projected", 0.5): 0.9,
          ("projected", 0.9): 4.2}  # 4.2: a small denominator's outlier
    variants, rows = {}, []
    for (complement, rho), value in rg.items():
        label = f"pmp[complement={complement},rho={rho}]"
        variants[label] = {"plugin": "pmp", "params": {"rho": rho, "complement": complement}}
        for adversary in ("full_ft", "lora"):
            rows.append({"defense": label, "adversary": adversary, "task": "qa", "rg": value,
                         "rg_ci_low": value - 0.1, "rg_ci_high": value + 0.1,
                         "utility_retention": 1 - rho / 2, "utility_ci_low": 0.5 - rho / 2,
                         "utility_ci_high": 1.0, "n_bases": 3, "n_seeds": 2})
    paths = plot_sweeps(pd.DataFrame(rows), {"variants": {"defenses": variants}}, tmp_path)
    assert tmp_path / "sweep_pmp_rho_qa.pdf" in paths
    lines = figures["sweep_pmp_rho_qa"]
    assert len(lines) == 2 * 3  # two families on two adversary panels and the utility panel
    assert sorted({panel for panel, _, _ in lines}) == ["full_ft", "lora", "utility retention"]
    for panel, family, xy in lines:
        complement = family.removeprefix("complement=")
        assert complement in ("frozen", "projected")
        assert np.all(np.diff(xy[:, 0]) > 0) and len(xy) == 2  # one point per rho, in order
        if panel != "utility retention":  # the family's own RGs, the outlier at the edge
            expected = [min(rg[(complement, rho)], RG_LIMITS[1]) for rho in (0.5, 0.9)]
            assert xy[:, 1].tolist() == pytest.approx(expected)
    assert all(lim == pytest.approx(RG_LIMITS) for lim in figures["sweep_pmp_rho_qa ylim"])
    assert "4.2" in figures["sweep_pmp_rho_qa texts"]  # the clipped value is written beside


def test_a_figure_that_would_not_print_is_flagged(tmp_path: Path) -> None:
    """Written all the same, with a PrintWarning naming what is wrong (an error in this suite:
    pyproject's filterwarnings)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))  # neither column
    with pytest.warns(PrintWarning, match="neither column"):
        save_figure(fig, tmp_path, "wide")
    fig, ax = plt.subplots(figsize=(3.25, 2.5))
    ax.set_title("tiny", fontsize=6)
    ax.text(0.5, 0.5, "one label")
    ax.text(0.5, 0.5, "on another")
    ax.text(1.5, 0.5, "off the page")
    with pytest.warns(PrintWarning) as caught:
        save_figure(fig, tmp_path, "small")
    message = str(caught[0].message)
    assert "'tiny' at 6 pt" in message and "'one label' runs into 'on another'" in message
    assert "'off the page' runs off the figure" in message
    assert (tmp_path / "small.pdf").exists()
