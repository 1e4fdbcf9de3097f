"""Command line: ``nftbench run CONFIG``, ``nftbench status RUN_DIR``, ``nftbench report
RUN_DIR``, ``nftbench sharpness CONFIG``, ``nftbench list``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from nftbench.plugins import load_plugins
from nftbench.registry import REGISTRIES, describe_config
from nftbench.run_folder import RunFolder

EXIT_CONFIG = 2


def _setup_logging(log_file: Path | None, quiet: bool) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)-5s %(message)s", "%H:%M:%S")
    root = logging.getLogger("nftbench")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    root.addHandler(console)
    if log_file is not None:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        root.addHandler(handler)
    from nftbench.worker import quiet_libraries

    quiet_libraries()


def cmd_run(args: argparse.Namespace) -> int:
    from nftbench.config import ConfigError, load_config

    if args.workers is not None and args.workers < 1:
        print(f"nftbench: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return EXIT_CONFIG
    if args.executor == "sequential" and (args.workers or 1) > 1:
        print("nftbench: --workers needs --executor pool or ray", file=sys.stderr)
        return EXIT_CONFIG

    try:
        load_plugins(args.plugins)
        matrix = load_config(args.config, args.override)
    except ConfigError as err:
        print(f"nftbench: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"nftbench: {err}", file=sys.stderr)
        return EXIT_CONFIG

    from nftbench.engine import STATUS_FAILED, Runner
    from nftbench.executors import ExecutorError

    run_dir = matrix.config.run_dir
    _setup_logging(RunFolder(run_dir).create().log_file, args.quiet)
    log = logging.getLogger("nftbench")
    m = matrix
    log.info("run %s: %d bases x %d defenses x %d adversaries x %d restricted tasks x %d "
             "seeds -> %s", m.config.name, len(m.config.pretrain.bases), len(m.defenses),
             len(m.adversaries), len(m.restricted_tasks), len(m.config.seeds), run_dir)
    try:
        runner = Runner(matrix, progress=not args.quiet, executor=args.executor,
                        workers=args.workers, address=args.address,
                        retry_failed=args.retry_failed, plugin_dirs=args.plugins)
        if args.quiet:
            outcome = runner.run()
        else:
            with logging_redirect_tqdm([log]):  # log lines above the progress bars
                outcome = runner.run()
    except ExecutorError as err:  # no Ray, no cluster: nothing ran
        log.error("%s", err)
        return EXIT_CONFIG
    computed = sum(not s.cached for s in outcome.stages if s.status == "ok")
    cached = sum(s.cached for s in outcome.stages)
    log.info("finished in %.1fs: %d stages computed, %d from the store, %d failed; results in %s",
             outcome.wall_s, computed, cached, len(outcome.failed), run_dir / "results.csv")
    for s in outcome.failed:
        log.error("failed: %s %s\n%s", s.kind, s.label, textwrap.indent(s.error or "", "    "))
    from nftbench.report import write_report

    paths = write_report(run_dir)
    log.info("report: %d files in %s", len(paths), run_dir / "report")
    return STATUS_FAILED if outcome.failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from nftbench.engine import STATES, run_status

    try:
        table = run_status(args.run_dir)
    except FileNotFoundError as err:
        print(f"nftbench: {err}", file=sys.stderr)
        return EXIT_CONFIG
    counts = (table.assign(n=1).pivot_table(index="kind", columns="state", values="n",
                                            aggfunc="sum", fill_value=0)
              .reindex(columns=list(STATES), fill_value=0)
              .reindex([k for k in dict.fromkeys(table.kind)]))
    counts["total"] = counts.sum(axis=1)
    counts.index = ["cells (attack)" if k == "attack" else k for k in counts.index]
    print(f"{args.run_dir}: {len(table)} stages")
    print(counts.to_string())
    for st in ("running", "failed") + (("pending", "done") if args.all else ()):
        part = table[table.state == st]
        if part.empty:
            continue
        print(f"\n{st}:")
        for r in part.itertuples():
            extra = ""
            if st == "running":
                extra = f"  on {r.worker}, {r.running_s:.0f}s"
            elif st == "failed":
                extra = f"  ({r.reason})"
            print(f"  {r.kind:<9} {r.label}{extra}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nftbench.report import ReportConfig, RunConflict, write_combined_report, write_report

    cfg = ReportConfig(level=args.level, threshold=args.threshold, epsilon=args.epsilon,
                       x_axis=args.x)
    if len(args.run_dir) > 1 and args.out is None:
        print("nftbench: a report of several runs needs -o OUT (where to write it)",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.out is None:
            paths = write_report(args.run_dir[0], cfg)
        else:
            paths = write_combined_report(args.run_dir, args.out, cfg)
    except (FileNotFoundError, RunConflict) as err:
        print(f"nftbench: {err}", file=sys.stderr)
        return EXIT_CONFIG
    for path in paths:
        print(path)
    return 0


def cmd_sharpness(args: argparse.Namespace) -> int:
    from nftbench.config import ConfigError, load_config

    try:
        load_plugins(args.plugins)
        matrix = load_config(args.config, args.override)
        out = matrix.config.run_dir / "sharpness"  # its own folder: the run's results stay
        matrix = load_config(args.config, [*args.override, f"output_dir={out}"])
    except (ConfigError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"nftbench: {err}", file=sys.stderr)
        return EXIT_CONFIG
    from nftbench.sharpness import measure, summarize

    tasks = args.task or [t.label for t in matrix.restricted_tasks]
    _setup_logging(None, quiet=True)
    try:
        table = measure(matrix, tasks, iters=args.iters, tol=args.tol, workers=args.workers,
                        progress=False)
    except (KeyError, RuntimeError) as err:
        print(f"nftbench: {err}", file=sys.stderr)
        return 1
    table.to_csv(out / "sharpness.csv", index=False)
    summary = summarize(table)
    summary.to_csv(out / "sharpness_summary.csv", index=False)
    print("top Hessian eigenvalue of the answer loss on each task's train split, at every "
          "release (mean [95% t interval over bases]); stable_sgd_lr = 2 / eigenvalue")
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"per release: {out / 'sharpness.csv'}")
    board = matrix.config.run_dir.parent / "report" / "leaderboard.csv"
    if board.exists():  # the matrix's own run has been scored: sharpness against its RG
        import pandas as pd

        from nftbench.sharpness import plot_against_rg

        for path in plot_against_rg(table, pd.read_csv(board), out):
            print(f"figure: {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    load_plugins(args.plugins)
    kinds = [args.kind] if args.kind else list(REGISTRIES)
    for kind in kinds:
        print({"defense": "defenses:", "adversary": "adversaries:", "task": "tasks:"}[kind])
        for name, cls in REGISTRIES[kind].items():
            extra = ""
            if kind == "task":
                cfg = cls.Config()
                extra = f"  [{cfg.role}, {cfg.kind}]"
            print(f"  {name} (v{cls.version}){extra}: {cls.summary()}")
            if args.brief:
                continue
            for f in describe_config(cls.Config):
                desc = f"  # {f['description']}" if f["description"] else ""
                print(f"      {f['field']}: {f['type']} = {f['default']!r}{desc}")
        print()
    if not args.kind:  # values of `optimizer` and `schedule` in any config
        from nftbench.optim import OPTIMIZERS, SCHEDULES

        print("optimizers:")
        for name in OPTIMIZERS.names():
            options = OPTIMIZERS.get(name).options
            print(f"  {name}" + (f" (options: {', '.join(options.model_fields)})"
                                 if options is not None else ""))
        print(f"\nschedules: {', '.join(SCHEDULES.names())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nftbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a benchmark matrix")
    run.add_argument("config", help="matrix YAML (e.g. configs/default.yaml)")
    run.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. -o adversaries.full_ft.params.lr=1e-3")
    run.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    run.add_argument("--executor", choices=["sequential", "pool", "ray"], default=None,
                     help="where stages run (default: sequential; pool with --workers > 1)")
    run.add_argument("--workers", type=int, default=None, metavar="N",
                     help="worker processes (pool) or actors (ray; default: one per GPU)")
    run.add_argument("--address", default=None,
                     help="Ray cluster address (default: start a local Ray instance)")
    run.add_argument("--retry-failed", action="store_true",
                     help="rerun the stages whose failure an earlier run recorded")
    status = sub.add_parser("status", help="done, running, failed and pending stages of a run")
    status.add_argument("run_dir", help="a run folder (holds plan.json)")
    status.add_argument("--all", action="store_true", help="list every stage by name")
    status.set_defaults(func=cmd_status)
    lst = sub.add_parser("list", help="list registered plugins and their config fields")
    lst.add_argument("--kind", choices=list(REGISTRIES), help="only this kind")
    lst.add_argument("--brief", action="store_true", help="names only")
    rep = sub.add_parser("report", help="write leaderboards and figures for a run folder, or "
                         "one report of several runs (-o OUT)")
    rep.add_argument("run_dir", nargs="+", help="run folders (each holds results.parquet)")
    rep.add_argument("-o", "--out", default=None, metavar="OUT",
                     help="write the report here (needed for several runs; default: "
                     "RUN_DIR/report)")
    rep.add_argument("--x", choices=["step", "tokens", "flops"], default="step",
                     help="x-axis of the learning curves")
    rep.add_argument("--level", type=float, default=0.95, help="confidence level")
    rep.add_argument("--threshold", type=float, default=0.9,
                     help="steps-to-threshold level, a fraction of none's final score")
    rep.add_argument("--epsilon", type=float, default=0.05,
                     help="largest capability drop of the epsilon-bounded worst case")
    rep.set_defaults(func=cmd_report)
    sharp = sub.add_parser("sharpness", help="top Hessian eigenvalue of a task's loss at every "
                           "release of a matrix (defense x base)")
    sharp.add_argument("config", help="matrix YAML; its shared stages come from the store")
    sharp.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    sharp.add_argument("--task", action="append", help="a task label (default: the restricted "
                       "tasks); repeat for several")
    sharp.add_argument("--iters", type=int, default=50, help="power iterations at most")
    sharp.add_argument("--tol", type=float, default=1e-3, help="relative change that stops")
    sharp.add_argument("--workers", type=int, default=1, help="workers for missing stages")
    sharp.set_defaults(func=cmd_sharpness)
    for p in (run, lst, sharp):
        p.add_argument("--plugins", action="append", default=[], metavar="DIR",
                       help="a folder of plugin files (*.py, task *.yaml) to load")
    run.set_defaults(func=cmd_run)
    lst.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
