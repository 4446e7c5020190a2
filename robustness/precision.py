"""The arithmetic of a sweep's inference and attacks: `robustness.precision`.

`fp32` (the default) changes nothing: the bits the tests and results.csv pin. `bf16` runs every
forward of a job, the attacks' included, under `torch.autocast` with bfloat16, on the CPU as on
CUDA; on CUDA the models also switch to `channels_last`, the layout bf16 convolutions are fast
in. Inputs, perturbations and gradients stay float32: only the network's matmuls and
convolutions run in bf16, so the images every variant sees are still identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from robustness.config import Precision


@contextlib.contextmanager
def autocast(precision: Precision | str, device: torch.device | str) -> Iterator[None]:
    """Run the block at `precision` on `device` (fp32: as it is)."""
    if Precision(precision) is Precision.FP32:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield


def prepare_models(
    models: Mapping[str, nn.Module], device: torch.device, precision: Precision | str
) -> dict[str, nn.Module]:
    """The models on `device`, in `channels_last` where bf16 runs on CUDA."""
    channels_last = Precision(precision) is Precision.BF16 and device.type == "cuda"
    prepared = {}
    for name, model in models.items():
        model = model.to(device)
        prepared[name] = model.to(memory_format=torch.channels_last) if channels_last else model
    return prepared
