"""The native corruption engine on a GPU: speed against the reference CPU loop, and the gate.

    python -m benchmarks.native_gpu [--count 256] [--size 32]

For every native corruption × severity 1–5: the reference (imagecorruptions, one image at a
time, one CPU thread) and the native engine on CUDA, on the same images; prints the ratio per
corruption and overall (target >= 200), then runs the fidelity gate with the native side on
the GPU. Needs a CUDA device; writes benchmarks/results/native_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.native_fidelity import gate_table
from robustness.perturbations.corruptions import corrupt_images
from robustness.perturbations.native import NATIVE_CORRUPTIONS, corrupt_natively
from robustness.perturbations.native.fidelity import fidelity_images

TARGET = 200.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--reference-count", type=int, default=64, help="images timed on CPU")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/native_gpu.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("native_gpu: no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    device = torch.device("cuda")
    images = fidelity_images(args.count, args.size, seed=0)
    on_gpu = images.to(device)
    few = images[: args.reference_count]
    rows, total_reference, total_native = {}, 0.0, 0.0
    for name in sorted(NATIVE_CORRUPTIONS):
        corrupt_images(few[:1], name, 1, 0)  # numba compiles glass_blur on its first call
        for _ in range(2):  # warm-up: kernels, caches, cuDNN autotuning
            corrupt_natively(on_gpu, name, 3, 0)
        torch.cuda.synchronize()
        reference = native = 0.0
        for severity in range(1, 6):
            start = time.perf_counter()
            corrupt_images(few, name, severity, 0)
            reference += (time.perf_counter() - start) * args.count / len(few)  # per batch
            start = time.perf_counter()
            corrupt_natively(on_gpu, name, severity, 0)
            torch.cuda.synchronize()
            native += time.perf_counter() - start
        rows[name] = {"reference_s": reference, "native_s": native, "speedup": reference / native}
        total_reference += reference
        total_native += native
        print(f"{name:<18} {reference / native:10.1f}x")
    overall = total_reference / total_native
    verdict = "PASS" if overall >= TARGET else "MISS"
    print(f"{'overall':<18} {overall:10.1f}x  target >={TARGET:g}  {verdict}")
    print(f"on {torch.cuda.get_device_name(device)}, {args.count} images at {args.size} px")
    table = [
        {**r.__dict__, "fidelity": r.fidelity.value, "size": s}
        for r, s in gate_table(sorted(NATIVE_CORRUPTIONS), device)
    ]
    failed = [f"{row['name']}@{row['severity']}" for row in table if not row["passed"]]
    print(f"fidelity gate on the GPU: {len(table) - len(failed)}/{len(table)} rows pass {failed}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"device": torch.cuda.get_device_name(device), "overall_speedup": overall}
    args.out.write_text(json.dumps({**summary, "per_corruption": rows, "gate": table}, indent=2))
    return 0 if overall >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
