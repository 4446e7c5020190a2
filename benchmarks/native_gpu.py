"""The native corruption engine on a GPU: speed against the reference CPU loop, and the gate.

    python -m benchmarks.native_gpu [--count 256] [--size 32]

For every native corruption × severity 1–5: the reference (imagecorruptions, one image at a
time, one CPU thread) and the native engine on CUDA, on the same images; prints the ratio per
corruption and overall (target >= 200), then runs the fidelity gate with the native side on
the GPU. It also measures nvJPEG (torchvision's CUDA codec) for jpeg_compression against the
reference, the candidate for `JPEG_CODEC_ON_CUDA`. Needs a CUDA device; writes
benchmarks/results/native_gpu.json.
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
from robustness.perturbations.native.digital import JPEG_QUALITIES, JpegCodec, jpeg_round_trip
from robustness.perturbations.native.fidelity import MIN_PSNR_DB, GateImages, fidelity_images, psnr

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
        for severity in range(1, 6):  # warm-up: kernels, each severity's tables, autotuning
            corrupt_natively(on_gpu, name, severity, 0)
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
        print(f"{name:<18} {reference / native:10.1f}x  native {native * 1000 / 5:8.2f} ms/batch")
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
    codecs = jpeg_codecs(on_gpu, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"device": torch.cuda.get_device_name(device), "overall_speedup": overall}
    details = {"per_corruption": rows, "gate": table, "jpeg_codecs": codecs}
    args.out.write_text(json.dumps({**summary, **details}, indent=2))
    return 0 if overall >= TARGET else 1


def jpeg_codecs(on_gpu: torch.Tensor, device: torch.device) -> dict[str, object]:
    """jpeg_compression's round trip on a CUDA batch by each codec: seconds per batch (all five
    qualities) and the worst per-image PSNR against the reference on the gate's images."""
    pixels = (on_gpu * 255).round().to(torch.uint8)
    images = GateImages.build().deterministic
    result: dict[str, object] = {}
    for codec in JpegCodec:
        try:
            for _ in range(2):
                jpeg_round_trip(pixels, 50, codec)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for quality in JPEG_QUALITIES:
                jpeg_round_trip(pixels, quality, codec)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            worst = []
            for severity, quality in enumerate(JPEG_QUALITIES, start=1):
                for clean in images:
                    reference = corrupt_images(clean, "jpeg_compression", severity, 0)
                    clean_pixels = (clean * 255).round().to(torch.uint8).to(device)
                    native = jpeg_round_trip(clean_pixels, quality, codec).cpu().float() / 255
                    worst.append(float(psnr(native, reference).min()))
        except RuntimeError as error:  # nvJPEG missing from this torchvision build, say
            print(f"jpeg codec {codec}: {error}")
            result[codec.value] = {"error": str(error)}
            continue
        passed = min(worst) >= MIN_PSNR_DB
        print(
            f"jpeg codec {codec:<8} {seconds * 1000:8.2f} ms for 5 qualities; "
            f"min PSNR {min(worst):.2f} dB {'PASS' if passed else 'FAIL'}"
        )
        result[codec.value] = {"seconds": seconds, "min_psnr_db": worst, "passed": passed}
    return result


if __name__ == "__main__":
    sys.exit(main())
