"""How fast `iamt` answers: the median wall time of `iamt --help` and of a config error, next
to `python -c pass` for scale (absolute seconds, not a ratio: what a user waits for).

    python -m benchmarks.cli [--repeats 5]

`make bench` (benchmarks/run.py) measures and prints these too. Targets: ≤ 1.0 s each.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

TARGET_S = 1.0


@dataclass
class StartupTime:
    """One command's wall times; `target` None for the reference (`python -c pass`)."""

    name: str
    argv: list[str]
    expected_code: int
    target: float | None
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def passed(self) -> bool:
        return self.target is None or self.median <= self.target

    def line(self) -> str:
        verdict = "" if self.target is None else ("PASS" if self.passed else "MISS")
        target = "" if self.target is None else f"≤ {self.target:.1f}"
        spread = f"[{min(self.seconds):.3f}, {max(self.seconds):.3f}]"
        return f"{self.name:<20} {self.median:8.3f} s {target:>6} {verdict:<4}  {spread}"


def iamt_command() -> list[str]:
    """The installed `iamt` script beside this Python, else the module."""
    script = Path(sys.executable).parent / "iamt"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cluster.cli"]


def _wall(argv: list[str], expected_code: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != expected_code:
        raise RuntimeError(f"{argv} exited {done.returncode}, not {expected_code}: {done.stderr}")
    return seconds


def measure_startup(repeats: int = 5) -> list[StartupTime]:
    """`python -c pass`, `iamt --help` and `iamt run EMPTY.yaml`, each `repeats` times,
    interleaved so that a noisy moment hits all three alike."""
    with tempfile.TemporaryDirectory(prefix="iamt-cli-bench-") as scratch:
        empty = Path(scratch) / "empty.yaml"
        empty.write_text("# nothing here\n")
        out = Path(scratch) / "out"
        iamt = iamt_command()
        times = [
            StartupTime("python_pass_s", [sys.executable, "-c", "pass"], 0, None),
            StartupTime("cli_help_s", [*iamt, "--help"], 0, TARGET_S),
            StartupTime(
                "cli_config_error_s", [*iamt, "run", str(empty), "--out", str(out)], 2, TARGET_S
            ),
        ]
        for _ in range(repeats):
            for entry in times:
                entry.seconds.append(_wall(entry.argv, entry.expected_code))
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    times = measure_startup(args.repeats)
    print(f"CLI start-up, median of {args.repeats} [min, max]")
    for entry in times:
        print(entry.line())
    return 0 if all(entry.passed for entry in times) else 1


if __name__ == "__main__":
    sys.exit(main())
