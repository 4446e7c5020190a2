"""Single-process training and evaluation of an AttentionNet.

Loss = Σ_a CE(logits_a, y_a) + λ · mean_a mean(M_a), where λ (`train.mask_sparsity`) is a
sparsity pressure on the masks: without it every gate drifts open and the masks stop saying
where the evidence is. Optimiser: AdamW with a one-cycle schedule (linear warm-up, then cosine
decay to zero). Deterministic on the CPU for a given seed and thread count.

`train_epoch` is the unit that Ray Train's workers reuse (cluster/train.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iamt.config import Device, TrainConfig
from iamt.data.base import AttributeDataset, as_tensors, iterate_batches, num_batches
from iamt.progress import progress_bar


class Progress(Protocol):
    """What `train_epoch` reports to: a tqdm bar, or Ray Train's relay to the driver's bar."""

    def update(self, n: float = 1) -> Any: ...

    def set_postfix(self, **values: Any) -> Any: ...


def resolve_device(device: Device) -> torch.device:
    if device is Device.CUDA and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use cpu/auto")
    if device is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.value)


def seed_everything(seed: int) -> torch.Generator:
    """Seed every global RNG (for library code we do not control) and return our generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def channel_statistics(
    dataset: AttributeDataset, limit: int = 4096
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of the training images: the model's input normalization."""
    images, _ = as_tensors(dataset, limit)
    mean = images.mean(dim=(0, 2, 3)).tolist()
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


def attention_loss(
    logits: list[Tensor], masks: list[Tensor], labels: Tensor, sparsity: float
) -> Tensor:
    """Σ_a CE(logits_a, y_a) + sparsity · mean_a mean(M_a)."""
    loss = sum(
        (F.cross_entropy(lg, labels[:, a]) for a, lg in enumerate(logits)),
        logits[0].new_zeros(()),  # on the logits' device (CPU or CUDA)
    )
    if sparsity > 0:
        loss = loss + sparsity * torch.stack([m.mean() for m in masks]).mean()
    return loss


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    sparsity: float,
    device: torch.device,
    progress: Progress | None = None,
) -> float:
    """One pass over `batches`; returns the sample-weighted mean loss."""
    model.train()
    total, seen = 0.0, 0
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        output = model(images, return_masks=True)
        loss = attention_loss(output.logits, output.masks, labels, sparsity)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * images.shape[0]
        seen += images.shape[0]
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{total / seen:.3f}")
    return total / max(seen, 1)


def make_optimizer(
    model: nn.Module, config: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.lr,
        total_steps=config.epochs * steps_per_epoch,
        pct_start=max(config.warmup_fraction, 1e-3),
        anneal_strategy="cos",
    )
    return optimizer, scheduler


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    seconds: float


def train_model(
    model: nn.Module,
    train_set: AttributeDataset,
    config: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    show_progress: bool = True,
) -> list[EpochRecord]:
    """Train in place; returns the loss per epoch."""
    generator = seed_everything(seed)
    model.to(device)
    steps = num_batches(train_set, config.batch_size)
    optimizer, scheduler = make_optimizer(model, config, steps)
    history = []
    with progress_bar(
        total=config.epochs * steps,
        desc="train",
        unit="batch",
        disable=not show_progress,
        milestones=config.epochs,  # in a log: a line per epoch
    ) as progress:
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            batches = iterate_batches(
                train_set, config.batch_size, shuffle=True, generator=generator
            )
            loss = train_epoch(
                model,
                batches,
                optimizer,
                scheduler,
                sparsity=config.mask_sparsity,
                device=device,
                progress=progress,
            )
            history.append(EpochRecord(epoch, loss, time.perf_counter() - start))
            progress.set_description(f"train epoch {epoch}/{config.epochs}")
    model.eval()
    return history


def predict_correct(
    model: nn.Module, dataset: AttributeDataset, *, batch_size: int = 512
) -> Tensor:
    """(N, A) bool: whether each sample's attribute was classified correctly.

    Kept per sample (not just counts) so that variants can be compared *paired*.
    """
    device = next(model.parameters()).device
    model.eval()
    rows = []
    with torch.no_grad():
        for images, labels in iterate_batches(dataset, batch_size):
            logits = model(images.to(device)).logits
            predictions = torch.stack([lg.argmax(dim=1) for lg in logits], dim=1).cpu()
            rows.append(predictions == labels)
    return torch.cat(rows)
