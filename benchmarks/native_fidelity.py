"""The native corruption engine's fidelity table: one row per corruption × severity.

    python -m benchmarks.native_fidelity                      # the gate, as the tests run it
    python -m benchmarks.native_fidelity --run runs/demo      # + paired accuracy, n >= 1,000

The gate (robustness/perturbations/native/fidelity.py): deterministic corruptions by per-image
PSNR against imagecorruptions (>= 35 dB, 64 images at 32 and 64 px), random ones by the mean
and std of their change (within 5 %, 256 images at 32 px). With `--run`, the run's normal model
classifies the same test images corrupted by each engine; its accuracy (mean over attributes)
must agree within 1.0 point at every severity. It also prints the worst attribute's gap and,
for random corruptions, the same gaps between two seeds of the reference: what chance makes.
Writes a JSON next to the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cluster.config import load_run_config
from iamt.checkpoint import load_checkpoint
from iamt.data import Split, as_tensors, load_split
from iamt.rundir import RunDirectory
from robustness.jobs import predict_all
from robustness.perturbations.corruptions import corrupt_images
from robustness.perturbations.native import NATIVE_CORRUPTIONS, Fidelity, corrupt_natively
from robustness.perturbations.native.fidelity import GATE_SEED, GateImages, GateResult, gate

MAX_ACCURACY_GAP = 1.0  # points


def gate_table(names: Sequence[str], device: torch.device) -> list[tuple[GateResult, int]]:
    """The fidelity gate for `names` on `device` (the reference always runs on the CPU)."""
    images = GateImages.build()
    return [row for name in names for row in gate(name, images, device)]


def accuracy_gaps(run_dir: Path, names: Sequence[str], count: int) -> list[dict[str, Any]]:
    """Paired accuracy of the run's normal model on native- vs reference-corrupted test images.

    The gate is on the model's accuracy (the mean over attributes, in points); the worst single
    attribute's gap is reported beside it. For random corruptions the same numbers between two
    seeds of the reference say how large a gap chance alone makes at this n.
    """
    config = load_run_config(run_dir)
    model, _ = load_checkpoint(RunDirectory(run_dir).checkpoint_stem)
    images, labels = as_tensors(load_split(config.data, Split.TEST, config.seed), count)
    rows = []
    for name in names:
        random = NATIVE_CORRUPTIONS[name].fidelity is Fidelity.RANDOM
        for severity in range(1, 6):
            runs = [
                ("reference", corrupt_images, GATE_SEED),
                ("native", corrupt_natively, GATE_SEED),
            ]
            if random:
                runs.append(("reference_other_seed", corrupt_images, GATE_SEED + 1))
            accuracy = {}  # engine -> (A,) accuracy per attribute, in points
            for engine, corrupt, seed in runs:
                correct = predict_all(model, corrupt(images, name, severity, seed), 500) == labels
                accuracy[engine] = correct.float().mean(0) * 100
            gap, worst = _gaps(accuracy, "native")
            chance, chance_worst = _gaps(accuracy, "reference_other_seed") if random else (0.0, 0.0)
            passed = gap <= MAX_ACCURACY_GAP
            rows.append(
                {
                    "name": name,
                    "severity": severity,
                    "n": len(images),
                    "reference_accuracy": float(accuracy["reference"].mean()),
                    "native_accuracy": float(accuracy["native"].mean()),
                    "gap_points": gap,
                    "worst_attribute_gap_points": worst,
                    "reference_seed_gap_points": chance,
                    "reference_seed_worst_attribute_gap_points": chance_worst,
                    "passed": passed,
                }
            )
            print(
                f"{name:<18} {severity}  accuracy gap (points, n={len(images)}) {gap:9.3f}  "
                f"{'PASS' if passed else 'FAIL'}  worst attribute {worst:.2f}; "
                f"two reference seeds {chance:.2f}, worst attribute {chance_worst:.2f}"
            )
    return rows


def _gaps(accuracy: dict[str, torch.Tensor], other: str) -> tuple[float, float]:
    """(model accuracy gap, worst attribute gap) of engine `other` against the reference."""
    difference = accuracy[other] - accuracy["reference"]  # (A,) points
    return abs(float(difference.mean())), float(difference.abs().max())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", nargs="*", default=sorted(NATIVE_CORRUPTIONS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--run", type=Path, help="run directory for the paired accuracy check")
    parser.add_argument("--count", type=int, default=1000, help="test images for --run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/native_fidelity.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        f"{'corruption':<18} sev  {'metric':<28} {'value':>9}  gate   (default = served natively)"
    )
    table = []
    for result, size in gate_table(args.names, torch.device(args.device)):
        default = NATIVE_CORRUPTIONS[result.name].default
        print(f"{result.row()}  {size} px  default={default}")
        table.append({**result.__dict__, "fidelity": result.fidelity.value, "size": size})
    accuracy = accuracy_gaps(args.run, args.names, args.count) if args.run else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"gate": table, "accuracy": accuracy}, indent=2) + "\n")
    print(f"wrote {args.out}")
    served = [row for row in table if NATIVE_CORRUPTIONS[row["name"]].default]
    ok = all(row["passed"] for row in served) and all(row["passed"] for row in accuracy)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
