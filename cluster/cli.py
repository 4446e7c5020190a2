"""The `iamt` command line.

    iamt run CONFIG [--set key=value ...] [--out RUN_DIR] [--address ADDR] [--checkpoint STEM]
    iamt train CONFIG [--set key=value ...] [--out RUN_DIR] [--force]
    iamt evaluate RUN_DIR [--set robustness.key=value ...]
    iamt search RUN_DIR [--set search.key=value ...] [--address ADDR]
    iamt study STUDY_FILE --out STUDY_DIR [--address ADDR]
    iamt report RUN_DIR
    iamt dashboard [--runs DIR] [--port N] [--host ADDRESS]

`run` is the main job: Ray Train, the sweep fanned out over Ray, the report. `train`,
`evaluate` and `report` are its stages in one process, without Ray.

Each command imports its heavy packages (torch, Ray, foolbox, Streamlit) inside its own
function, after its arguments, its config and its output directory are checked, so `--help`
and every such mistake answer at once. The commands that write a run directory hold its lock
(`iamt.runlock`) while they work. Faults end as one line, `iamt CMD: error: ...`, exit 2: a
user's mistake, a second writer, a full disk or quota, and the driver running out of memory.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from iamt.io import is_out_of_space
from iamt.rundir import (
    CLEAN,
    CONFIG,
    DRIFT,
    FAILURES,
    IMPORTANCE,
    MANIFEST,
    PARTS,
    REPORT,
    RESULTS,
    SEARCH_REPORT,
    SEARCH_TABLE,
    STUDY_GRID,
    STUDY_SEEDS,
    STUDY_TABLE,
    SUMMARY,
    TIMINGS,
    RunDirectory,
)
from iamt.runlock import check_writable, hold_run_lock

if TYPE_CHECKING:
    from cluster.config import RunConfig

SWEEP_OUTPUTS = ", ".join((RESULTS, SUMMARY, DRIFT, FAILURES, TIMINGS))


# User mistakes, printed as `iamt CMD: error: ...`, exit 2, no traceback. Named by module, not
# imported: an error of a module can only be raised once that module is loaded, so looking it
# up in sys.modules keeps a config error from waiting for torch.
USER_ERRORS = (
    ("iamt.config", "ConfigError"),
    ("iamt.data.base", "DatasetError"),
    ("iamt.checkpoint", "CheckpointError"),
    ("iamt.runlock", "RunDirectoryError"),  # also a second writer (RunDirectoryInUseError)
    ("iamt.rundir", "RunDataError"),
    ("cluster.sweep", "ClusterUnreachableError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-mistake types among the modules loaded so far."""
    loaded = (
        getattr(sys.modules[module], name, None)
        for module, name in USER_ERRORS
        if module in sys.modules
    )
    return tuple(kind for kind in loaded if isinstance(kind, type))


def _add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML run config, e.g. configs/demo.yaml")
    _add_set_argument(parser, "train.epochs=2")
    parser.add_argument(
        "--out", type=Path, default=None, help="run directory (default: runs/<config name>)"
    )
    parser.add_argument(
        "--force", action="store_true", help="start afresh even if RUN_DIR holds another run"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_study_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    study = commands.add_parser(
        "study",
        help="many members (grid point × training seed) on Ray, then effects across seeds",
    )
    study.add_argument("config", type=Path, help="a study file, e.g. configs/study-demo.yaml")
    study.add_argument("--out", type=Path, required=True, help="the study directory")
    study.add_argument("--address", default=None, help="Ray cluster to join (as for `run`)")
    study.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iamt",
        description="Robustness evaluation of multi-channel attention CNNs and their "
        "emphasized variants.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="the main job on Ray: train (unless done), rank channels, sweep, summarise, report",
    )
    _add_config_arguments(run)
    run.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (default: cluster.address, then $RAY_ADDRESS, else an "
        "embedded local Ray on 127.0.0.1)",
    )
    run.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="STEM",
        help="use this trained checkpoint (e.g. runs/demo/checkpoints/normal) instead of training",
    )
    run.add_argument("--no-report", action="store_true", help=f"skip {REPORT}")
    train = commands.add_parser(
        "train", help="train the normal model, rank channels, measure clean accuracy (no Ray)"
    )
    _add_config_arguments(train)
    evaluate = commands.add_parser(
        "evaluate", help="run the robustness sweep on a trained run directory, in one process"
    )
    evaluate.add_argument("run_dir", type=Path, help="a run directory written by `iamt train`")
    _add_set_argument(evaluate, "robustness.noise.n_samples=200 (robustness.* keys only)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    search = commands.add_parser(
        "search",
        help="the emphasis search on Ray Tune: which mask transform helps, on the validation split",
    )
    search.add_argument("run_dir", type=Path, help="a run directory written by `iamt train`")
    _add_set_argument(search, "search.max_trials=8 (search.* and robustness.* keys only)")
    search.add_argument("--address", default=None, help="Ray cluster to join (as for `run`)")
    search.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_study_parser(commands)
    report = commands.add_parser("report", help=f"write RUN_DIR/{REPORT} with PNG plots")
    report.add_argument("run_dir", type=Path)
    dashboard = commands.add_parser("dashboard", help="serve the Streamlit dashboard")
    dashboard.add_argument("--runs", type=Path, default=Path("runs"), help="runs directory")
    dashboard.add_argument("--port", type=int, default=8501)
    dashboard.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default loopback; see the README before exposing it)",
    )
    return parser


def _output_directory(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    """`train` and `run`: the config and the run directory they write, both checked (no torch
    yet). The directory is kept in `args.run_dir` for the fault messages."""
    from cluster.config import load_config

    config = load_config(args.config, args.overrides)
    args.run_dir = args.out or Path("runs") / config.name
    check_writable(args.run_dir)
    return config, args.run_dir


def _train(args: argparse.Namespace) -> int:
    config, run_dir = _output_directory(args)
    with hold_run_lock(run_dir, args.command_line):
        from robustness.runner import train_run

        summary = train_run(config, run_dir, force=args.force, show_progress=not args.quiet)
    table = summary.clean.pivot(index="attribute", columns="variant", values="accuracy")
    print(f"\nclean accuracy on the test split ({run_dir}):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    if summary.localisation:
        print("\nattention localisation (mask inside object ÷ outside):")
        print(json.dumps({k: round(v, 2) for k, v in summary.localisation.items()}, indent=2))
    print(f"\nwrote {run_dir}/: {CONFIG} {MANIFEST} checkpoints/ {IMPORTANCE} {CLEAN}")
    return 0


def _run(args: argparse.Namespace) -> int:
    config, run_dir = _output_directory(args)
    with hold_run_lock(run_dir, args.command_line):  # in the driver, also under ray job submit
        from cluster.pipeline import run_pipeline

        result = run_pipeline(
            config,
            run_dir,
            address=args.address,
            checkpoint=args.checkpoint,
            force=args.force,
            report=not args.no_report,
            show_progress=not args.quiet,
        )
    jobs = result.jobs
    print(
        f"\n{run_dir}: {'trained' if result.trained else 'checkpoint reused'}; "
        f"{jobs['done']}/{jobs['total']} jobs done, {jobs['failed']} failed; "
        f"{result.seconds:.0f} s"
    )
    print(f"wrote {run_dir}/: {SWEEP_OUTPUTS}")
    if result.report is not None:
        print(f"wrote {result.report}")
    return 0 if jobs["failed"] == 0 else 1


def _evaluate(args: argparse.Namespace) -> int:
    from cluster.config import load_run_config

    config = load_run_config(args.run_dir, args.overrides)
    with hold_run_lock(args.run_dir, args.command_line):
        from robustness.runner import evaluate_run

        counts = evaluate_run(args.run_dir, config, show_progress=not args.quiet)
    print(
        f"\n{counts['done']}/{counts['total']} jobs done, {counts['failed']} failed; wrote "
        f"{args.run_dir}/: {SWEEP_OUTPUTS}"
    )
    return 0 if counts["failed"] == 0 else 1


def _search(args: argparse.Namespace) -> int:
    from cluster.config import load_run_config

    config = load_run_config(args.run_dir, args.overrides)
    with hold_run_lock(args.run_dir, args.command_line):
        from cluster.pipeline import search_run
        from cluster.search import with_search_enabled

        config = with_search_enabled(config)
        report = search_run(
            config, args.run_dir, address=args.address, show_progress=not args.quiet
        )
    baseline, chosen = report["baseline"], report["chosen"]
    print(
        f"\n{report['n']} validation images; normal: clean {baseline['clean_accuracy']:.2f}, "
        f"perturbed {baseline['robust_accuracy']:.2f} (points)"
    )
    if chosen is None:
        print(f"no transform costs at most {report['max_clean_cost']:g} clean point(s)")
    else:
        print(
            f"chosen: {chosen['spec']} (robustness gain {chosen['robustness_gain']:+.2f}, "
            f"clean cost {chosen['clean_cost']:+.2f}); the sweep evaluates it on the test "
            f"split as variant {report['variant']!r}"
        )
    print(f"wrote {args.run_dir}/: {SEARCH_TABLE}, {SEARCH_REPORT}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from cluster.study import load_study

    load_study(args.config)  # a bad study file is refused before the lock, Ray or torch
    args.run_dir = args.out
    check_writable(args.out)
    with hold_run_lock(args.out, args.command_line):
        from cluster.study import run_study

        result = run_study(
            args.config, args.out, address=args.address, show_progress=not args.quiet
        )
    print(
        f"\n{result.study_dir}: {result.members} members ({result.ran} run now, the others "
        f"already finished); {result.failed_jobs} failed jobs"
    )
    print(f"wrote {result.study_dir}/: {STUDY_TABLE}, {STUDY_SEEDS}, {STUDY_GRID}")
    print(f"wrote {result.report}")
    return 0 if result.failed_jobs == 0 else 1


def _report(args: argparse.Namespace) -> int:
    from dashboards.report import write_report

    path = write_report(args.run_dir)
    print(f"wrote {path}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from dashboards.launch import run_dashboard

    return run_dashboard(args.runs, port=args.port, host=args.host)


HANDLERS = {
    "run": _run,
    "train": _train,
    "evaluate": _evaluate,
    "search": _search,
    "study": _study,
    "report": _report,
    "dashboard": _dashboard,
}


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments, with the command line a second writer is shown (`args.command_line`)."""
    args = build_parser().parse_args(argv)  # --help and usage errors exit here
    args.command_line = shlex.join(["iamt", *argv])
    return args


def execute(argv: Sequence[str] | None = None) -> int:
    """Run one `iamt` command and let its errors propagate (tests assert on their types)."""
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    return HANDLERS[args.command](args)


def _kept(run_dir: Path | None) -> str:
    """What a failed command leaves for its rerun to resume from."""
    if run_dir is None or not run_dir.is_dir():
        return "kept: nothing yet"
    run = RunDirectory(run_dir)
    kept = [f"the trained checkpoint {run.checkpoint_stem}"] if run.has_checkpoint() else []
    finished = len(list(run.parts.glob("*.csv"))) if run.parts.is_dir() else 0
    if finished:
        kept.append(f"{finished} finished job(s) in {run_dir / PARTS}")
    return "kept: " + (", ".join(kept) or f"nothing that needs redoing yet in {run_dir}")


def fault_message(error: BaseException, run_dir: Path | None) -> str | None:
    """The one line for a fault the user can act on; None for a bug (it keeps its traceback)."""
    if isinstance(error, _user_errors()):
        return str(error)
    if is_out_of_space(error):
        path = getattr(error, "path", None) or getattr(error, "filename", None)
        path = path or run_dir or "a file"  # a library's error may not say which file
        return (
            f"no space left on device while writing {path}; {_kept(run_dir)}; a rerun of the "
            "same command resumes once space is freed (nothing was left half-written)"
        )
    torch = sys.modules.get("torch")
    out_of_memory = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))
    if isinstance(error, out_of_memory):
        return (
            f"out of memory in the driver ({type(error).__name__}: {error}); {_kept(run_dir)}; "
            "a rerun resumes (smaller data.n_*, batch sizes or robustness.*.n_samples need less)"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """`iamt`: `execute`, with a user's mistake or a fault printed as one line (exit status 2)
    instead of a traceback."""
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    try:
        return HANDLERS[args.command](args)
    except Exception as error:
        message = fault_message(error, getattr(args, "run_dir", None))
        if message is None:
            raise
        print(f"iamt {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
