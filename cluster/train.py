"""Training on Ray Train: `TorchTrainer` (DDP) running `iamt.train`'s epoch loop on every worker.

The maths are the single-process trainer's (`iamt.train.train_epoch`, the same loss, optimiser
and schedule); Ray Train adds the workers, DDP and fault tolerance:

- `cluster.train` in the config is Ray Train's `ScalingConfig` (workers, GPUs, CPUs each), so
  the same config trains with 2 CPU workers on a laptop or 8 GPUs on a cluster.
- `train.batch_size` is the *global* batch. Every worker draws the same seeded order and keeps
  its slice of each batch (`iterate_batches(shard=...)`); DDP averages the gradients, so the
  workers together take the single-process trainer's steps.
- After every epoch rank 0 reports a checkpoint into `RUN_DIR/ray_train/` (Ray Train's
  storage path): the weights in the project's safetensors format, plus the optimiser,
  schedule and shuffling state (`torch.load(weights_only=True)`: tensors and numbers only).
  A restarted worker group, or a rerun of an interrupted `iamt run`, resumes from it.
- The driver loads the final weights into its model; `iamt.workflow.train_and_rank` then writes
  the usual `checkpoints/normal.safetensors` + `.json`.

`fit_on_ray` trains one model; `fit_many_on_ray` trains several (seeds, say) concurrently, each
trainer launched from its own Ray task as Ray Train V2 recommends.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from cluster.config import RunConfig, TrainScalingConfig, parse_config
from cluster.sweep import threads_for
from iamt.checkpoint import load_checkpoint, load_tensor_state, save_checkpoint
from iamt.data import AttributeDataset, Split, iterate_batches, load_split
from iamt.data.base import num_batches
from iamt.model import AttentionNet
from iamt.progress import progress_bar
from iamt.rundir import RunDirectory
from iamt.train import EpochRecord, make_optimizer, seed_everything, train_epoch
from iamt.workflow import Fit

MODEL_STEM = "model"  # <checkpoint dir>/model.safetensors + model.json (iamt.checkpoint)
STATE_FILE = "training_state.pt"  # optimiser, schedule, shuffling RNG, epoch, history


def scaling_config(scaling: TrainScalingConfig) -> ScalingConfig:
    resources: dict[str, float] = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return ScalingConfig(
        num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
    )


# --------------------------------------------------------------------------- on each worker


@ray.remote(num_cpus=0)
class ProgressRelay:
    """Counts rank 0's batches so that the driver can draw the progress bar, and stamps the
    end of each epoch (after its checkpoint is reported) on one clock."""

    def __init__(self) -> None:
        self.batches = 0
        self.total = 0
        self.postfix: dict[str, Any] = {}
        self.epoch_ends: list[float] = []

    def epoch_done(self) -> None:
        self.epoch_ends.append(time.monotonic())

    def read_epoch_ends(self) -> list[float]:
        return self.epoch_ends

    def start(self, done: int, total: int) -> None:
        self.batches, self.total = done, total

    def update(self, n: float = 1) -> None:
        self.batches += int(n)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def read(self) -> tuple[int, int, dict[str, Any]]:
        return self.batches, self.total, self.postfix


class _RelayClient:
    """`iamt.train.Progress` for a worker: forwards to the relay without waiting."""

    def __init__(self, relay: Any) -> None:
        self.relay = relay

    def update(self, n: float = 1) -> None:
        self.relay.update.remote(n)

    def set_postfix(self, **values: Any) -> None:
        self.relay.set_postfix.remote(**values)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One DDP worker. Ray Train runs this on every worker of the group."""
    config = parse_config(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(threads_for(config.cluster.train.cpus_per_worker))
    device = ray.train.torch.get_device()

    generator = seed_everything(config.seed)  # the same shuffling order on every rank
    train_set = load_split(config.data, Split.TRAIN, config.seed)
    model: AttentionNet = ray.get(loop_config["model"])  # the driver's initial weights
    steps = num_batches(train_set, config.train.batch_size)
    optimizer, scheduler = make_optimizer(model, config.train, steps)
    start_epoch, history = _resume(config, model, optimizer, scheduler, generator)
    ddp_model = ray.train.torch.prepare_model(model)  # DDP when world > 1; moves to `device`
    progress = None
    if rank == 0:
        relay = loop_config["progress"]
        relay.start.remote((start_epoch - 1) * steps, config.train.epochs * steps)
        progress = _RelayClient(relay)

    for epoch in range(start_epoch, config.train.epochs + 1):
        batches = iterate_batches(
            train_set,
            config.train.batch_size,
            shuffle=True,
            generator=generator,
            shard=(rank, world),
        )
        started = time.perf_counter()
        loss = train_epoch(
            ddp_model,
            batches,
            optimizer,
            scheduler,
            sparsity=config.train.mask_sparsity,
            device=device,
            progress=progress,
        )
        loss = _mean_over_workers(loss, device)
        history.append({"epoch": epoch, "loss": loss, "seconds": time.perf_counter() - started})
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "epoch": epoch,
            "history": history,
            "train_config": config.train.model_dump(mode="json"),
        }
        _report_epoch(rank, model, state, config.seed, loop_config["progress"])


def _resume(
    config: RunConfig,
    model: AttentionNet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
) -> tuple[int, list[dict[str, Any]]]:
    """(first epoch, history so far): from Ray Train's checkpoint when a restarted worker
    group, or a rerun of an interrupted run, has one; else (1, [])."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 1, []
    with checkpoint.as_directory() as directory:
        restored, _ = load_checkpoint(Path(directory) / MODEL_STEM)
        model.load_state_dict(restored.state_dict())
        state = load_tensor_state(Path(directory) / STATE_FILE)
    if state["train_config"] != config.train.model_dump(mode="json"):
        raise RuntimeError(
            "the Ray Train checkpoint in the run directory was made with another `train` "
            "config; rerun with --force to train afresh"
        )
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    return state["epoch"] + 1, state["history"]


def _report_epoch(
    rank: int, model: AttentionNet, state: dict[str, Any], seed: int, relay: Any
) -> None:
    """Report the epoch to Ray Train: rank 0 with a checkpoint (one copy of the weights and
    the training state), every other rank with its metrics only."""
    metrics = {"epoch": state["epoch"], "loss": state["history"][-1]["loss"]}
    with tempfile.TemporaryDirectory() as directory:
        if rank != 0:
            ray.train.report(metrics)
            return
        epoch = state["epoch"]
        save_checkpoint(Path(directory) / MODEL_STEM, model, seed=seed, epochs=epoch)
        torch.save(state, Path(directory) / STATE_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))
        relay.epoch_done.remote()


def _mean_over_workers(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


# --------------------------------------------------------------------------- on the driver


@dataclass
class FitRequest:
    """One model to train: its initial weights, its config and where its run lives."""

    model: AttentionNet
    config: RunConfig
    run_dir: Path
    # Filled by `fit_many_on_ray`: when each epoch trained here ended, checkpoint reported
    # (monotonic seconds of one clock; differences are epoch times, overheads included).
    epoch_ends: list[float] = field(default_factory=list)


def _trainer(request: FitRequest, relay: Any) -> TorchTrainer:
    config = request.config
    storage = RunDirectory(request.run_dir).train_storage.absolute()
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "model": ray.put(request.model),
            "progress": relay,
        },
        scaling_config=scaling_config(config.cluster.train),
        run_config=ray.train.RunConfig(
            name="train",
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=config.cluster.train.max_failures),
        ),
    )


@ray.remote(num_cpus=0)
def _fit_remotely(request: FitRequest, relay: Any) -> str:
    """Run one trainer from a task (its own controller), so several can run at once."""
    result = _trainer(request, relay).fit()
    assert result.checkpoint is not None, "every epoch reports a checkpoint"
    return result.checkpoint.path


def _load_result(checkpoint_path: str, model: AttentionNet) -> list[EpochRecord]:
    """Copy the trained weights into `model`; returns the per-epoch losses."""
    directory = Path(checkpoint_path)
    trained, _ = load_checkpoint(directory / MODEL_STEM)
    model.load_state_dict(trained.state_dict())
    state = load_tensor_state(directory / STATE_FILE)
    return [EpochRecord(**record) for record in state["history"]]


def fit_many_on_ray(
    requests: Sequence[FitRequest], *, show_progress: bool = True
) -> list[list[EpochRecord]]:
    """Train every request's model in place, concurrently, one TorchTrainer each."""
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised: call init_local_ray() or connect() first")
    relays = [ProgressRelay.remote() for _ in requests]  # type: ignore[attr-defined]
    refs = [
        _fit_remotely.remote(request, relay)
        for request, relay in zip(requests, relays, strict=True)
    ]
    done = threading.Event()
    watcher = threading.Thread(
        target=_draw_progress,
        args=(relays, done, show_progress, sum(r.config.train.epochs for r in requests)),
        daemon=True,
    )
    watcher.start()
    try:
        paths = ray.get(refs)
    finally:
        done.set()
        watcher.join()
    for request, relay in zip(requests, relays, strict=True):
        request.epoch_ends = ray.get(relay.read_epoch_ends.remote())
    return [_load_result(path, r.model) for path, r in zip(paths, requests, strict=True)]


def fit_on_ray(
    config: RunConfig, run_dir: Path, *, restart: bool = False, show_progress: bool = True
) -> Fit:
    """A `Fit` for `train_run` that trains on Ray Train. An interrupted training resumes from
    its last epoch's checkpoint in RUN_DIR/ray_train unless `restart` (`--force`)."""

    def fit(model: AttentionNet, train_set: AttributeDataset) -> list[EpochRecord]:
        del train_set  # each worker loads its own copy of the training split
        if restart:
            shutil.rmtree(RunDirectory(run_dir).train_storage, ignore_errors=True)
        request = FitRequest(model, config, run_dir)
        return fit_many_on_ray([request], show_progress=show_progress)[0]

    return fit


def _draw_progress(
    relays: Sequence[Any], done: threading.Event, show_progress: bool, epochs: int
) -> None:
    """The driver's bar over every trainer's batches, polled from their relays; in a log, a
    line per epoch (`epochs`: of all trainers together)."""
    with progress_bar(
        total=None,
        desc="train (Ray Train)",
        unit="batch",
        disable=not show_progress,
        milestones=epochs,
    ) as bar:
        while not done.wait(0.5):
            states = ray.get([relay.read.remote() for relay in relays])
            batches = sum(count for count, _, _ in states)
            if batches == bar.n:
                continue  # redraw only on progress: the terminal log stays short
            bar.total = sum(total for _, total, _ in states) or None
            if len(states) == 1 and states[0][2]:
                bar.set_postfix(states[0][2], refresh=False)
            bar.update(batches - bar.n)
