"""`make bench`: measure the service against its compute floor (see benchmarks/README.md).

    python -m benchmarks.run [--repeats 3] [--only NAME ...] [--quick]
                             [--address auto] [--use-gpu] [--out benchmarks/results/latest.json]

Prints one line per figure (`NAME value target verdict median [min, max]`), the throughputs
for context, and writes the JSON with the machine, versions, parameters and raw timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import torch

from benchmarks.cli import measure_startup
from benchmarks.figures import (
    FIGURES,
    Bench,
    Figure,
    selected,
    start_ray,
    throughputs,
    train_benchmark_model,
)
from iamt.io import write_json
from iamt.workflow import environment

DEFAULT_OUT = Path(__file__).parent / "results" / "latest.json"


def machine() -> dict[str, Any]:
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").is_file()
        else platform.processor()
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {"cpu_model": model, **environment(device)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per figure (≥ 3)")
    parser.add_argument("--only", nargs="*", metavar="NAME", help=f"of: {', '.join(FIGURES)}")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--address", default=None, help="join this Ray cluster instead")
    parser.add_argument("--use-gpu", action="store_true", help="evaluate and train on GPUs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = selected(args.only)
    started = time.perf_counter()
    host = machine()
    label = f"{platform.node()} ({host['cpu_model']}, {host['cpu_count']} CPUs" + (
        f", {torch.cuda.get_device_name()})" if args.use_gpu else ")"
    )
    with tempfile.TemporaryDirectory(prefix="iamt-bench-") as scratch:
        work = Path(scratch)
        run_dir, config = train_benchmark_model(work, args.quick)
        bench = Bench(work, run_dir, config, args.repeats, args.quick, args.use_gpu, args.address)
        ray_startup = start_ray(bench)
        figures: list[Figure] = []
        try:
            for name in names:
                print(f"measuring {name} ...", file=sys.stderr, flush=True)
                figures.append(FIGURES[name](bench))
            rates = throughputs(bench)
        finally:
            ray.shutdown()
    print("measuring the CLI's start-up ...", file=sys.stderr, flush=True)
    startup = measure_startup(1 if args.quick else 5)  # absolute seconds, beside python -c pass

    print(f"\nbenchmarks on {label}; {args.repeats} repetitions; ratios, median [min, max]")
    for figure in figures:
        print(figure.line())
    print(f"\nRay start-up {ray_startup:.1f} s (not in any figure)")
    for figure in figures:
        for key, value in figure.notes.items():
            print(f"{figure.name}: {key} = {_note(value)}")
    print(f"\nthroughput on {label}, images/s, 1 thread" + (" + GPU" if args.use_gpu else ""))
    for key, value in rates.items():
        print(f"  {key:<32} {value:10.1f}")
    print(f"\nCLI start-up on {label}, wall seconds, median of {len(startup[0].seconds)}")
    for entry in startup:
        print(f"  {entry.line()}")

    write_json(
        args.out,
        {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": host,
            "parameters": {
                "repeats": args.repeats,
                "quick": args.quick,
                "use_gpu": args.use_gpu,
                "address": args.address,
            },
            "ray_startup_s": ray_startup,
            "figures": [
                {
                    **asdict(figure),
                    "median": figure.median,
                    "min": min(figure.ratios),
                    "max": max(figure.ratios),
                    "passed": figure.passed,
                    "line": figure.line(),
                }
                for figure in figures
            ],
            "throughput_images_per_s": rates,
            "cli_startup_s": {
                entry.name: {**asdict(entry), "median": entry.median, "passed": entry.passed}
                for entry in startup
            },
            "wall_s": time.perf_counter() - started,
        },
    )
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s)")
    passed = all(figure.passed for figure in figures) and all(e.passed for e in startup)
    return 0 if passed else 1


def _note(value: object) -> str:
    """A note's value for the terminal: numbers to 3 digits, mappings one `key value` each."""
    if isinstance(value, float | int):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "".join(f"\n    {key:<20} {_note(item)}" for key, item in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value) or "(none)"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
