"""Training a run: the normal model, its channel ranking and its variants' attention masks.

The first stage of `iamt train` and `iamt run` (robustness/runner.py's `train_run` adds the
clean accuracy of every variant). Writes into the run directory (`iamt.rundir`):

  config.yaml        the resolved config
  manifest.json      status, versions, seeds, hardware, timings, localisation
  checkpoints/       normal.safetensors + normal.json
  importance.csv     attribute, channel, score, rank
  masks/             samples.safetensors: sample images and their attention masks per variant

Everything that can be checked is checked (`prepare_train_run`) before the run directory is
touched.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from iamt.checkpoint import CheckpointError, checkpoint_paths, load_checkpoint, save_checkpoint
from iamt.config import ConfigError, MethodConfig, config_to_yaml, validate_config
from iamt.data import AttributeDataset, Split, TensorAttributeDataset, as_tensors, load_split
from iamt.importance import channel_importance, importance_table, localisation_ratio
from iamt.io import atomic_path, write_text
from iamt.model import Architecture, AttentionNet, build_model
from iamt.rundir import IMPORTANCE, MASK_TENSORS, RunDirectory

# Torch-free, so the CLI checks the output directory before importing torch; re-exported.
from iamt.runlock import RunDirectoryError as RunDirectoryError
from iamt.runlock import check_writable
from iamt.train import EpochRecord, channel_statistics, resolve_device, seed_everything, train_model
from iamt.transforms import MaskTransform
from iamt.variants import parse_variants, variant_model


def check_run_directory(run_dir: Path, config: MethodConfig, *, force: bool) -> None:
    """Refuse to mix two trained models in one run directory (unless `force`), or an
    unwritable one. Only the model-and-method sections count (`MethodConfig`): the evaluation
    and the cluster sections may change on a trained run."""
    existing = RunDirectory(run_dir).config
    if existing.is_file() and not force:
        training_side = set(MethodConfig.model_fields)
        old = _resolved(type(config), yaml.safe_load(existing.read_text()) or {})
        new = config.model_dump(mode="json")
        old = {key: value for key, value in old.items() if key in training_side}
        new = {key: value for key, value in new.items() if key in training_side}
        changed = _diff_keys(old, new)
        if changed:
            raise RunDirectoryError(
                f"{run_dir} holds a run with a different config (changed: "
                f"{', '.join(changed)}); use another --out, or --force to start it afresh"
            )
    check_writable(run_dir)


def _resolved(schema: type[MethodConfig], raw: dict[str, Any]) -> dict[str, Any]:
    """A stored config with its defaults filled in, so only real changes show up in a diff.
    One that no longer validates is compared as written."""
    try:
        return validate_config(schema, raw).model_dump(mode="json")
    except ConfigError:
        return raw


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


# Trains a freshly initialised model in place and returns its loss per epoch. The default is
# `iamt.train.train_model` in this process; `iamt run` passes Ray Train's (cluster/train.py).
Fit = Callable[[AttentionNet, AttributeDataset], list[EpochRecord]]


def adopt_checkpoint(source: Path, run_dir: Path, config: MethodConfig, *, force: bool) -> None:
    """Copy a checkpoint trained elsewhere (`iamt run --checkpoint`) into `run_dir`, so that
    training is skipped. It must load, pass its SHA-256 check and fit `config.model`."""
    if source.suffix not in {"", ".json", ".safetensors"}:
        raise CheckpointError(
            f"--checkpoint {str(source)!r}: expected a checkpoint stem (STEM.safetensors + "
            f"STEM.json, e.g. runs/demo/checkpoints/normal); {source.suffix} files are refused "
            "because this project never unpickles a file (a pickle can run code when loaded)"
        )
    stem = source.with_suffix("") if source.suffix else source
    model, metadata = load_checkpoint(stem)
    architecture = model.architecture
    wanted = {
        "backbone": config.model.backbone,
        "widths": tuple(config.model.widths),
        "attention_hidden": config.model.attention_hidden,
        "head_channels": config.model.head_channels,
        "mask_mode": config.model.mask_mode,
        "image_size": config.data.image_size,
    }
    mismatched = [
        f"{key}: config {value!r}, checkpoint {getattr(architecture, key)!r}"
        for key, value in wanted.items()
        if getattr(architecture, key) != value
    ]
    if mismatched:
        raise ConfigError(f"--checkpoint {stem} does not fit the config: {'; '.join(mismatched)}")
    target = RunDirectory(run_dir).checkpoint_stem
    target_weights, target_meta = checkpoint_paths(target)
    if target_meta.is_file():
        existing = json.loads(target_meta.read_text()).get("weights_sha256")
        if existing == metadata.weights_sha256:
            return  # already adopted (a rerun)
        if not force:
            raise RunDirectoryError(
                f"{run_dir} already holds another trained model; use another --out, or --force"
            )
    RunDirectory(run_dir).clear_evaluation()
    weights, meta = checkpoint_paths(stem)
    target.parent.mkdir(parents=True, exist_ok=True)
    for source_file, target_file in ((weights, target_weights), (meta, target_meta)):
        with atomic_path(target_file) as temporary:
            shutil.copyfile(source_file, temporary)


@dataclass
class TrainInputs:
    """What `train_and_rank` needs, validated and loaded before anything is written."""

    variants: dict[str, MaskTransform]
    device: torch.device
    train_set: AttributeDataset
    val_set: AttributeDataset
    test_set: AttributeDataset


def prepare_train_run(config: MethodConfig, run_dir: Path, *, force: bool) -> TrainInputs:
    """Validate the config against the run directory and load the three splits. Raises the
    user's mistake (config, run directory, dataset) before a file is written or Ray starts."""
    variants = parse_variants(config)
    check_run_directory(run_dir, config, force=force)
    device = resolve_device(config.train.device)
    return TrainInputs(
        variants,
        device,
        train_set=load_split(config.data, Split.TRAIN, config.seed),
        val_set=load_split(config.data, Split.VAL, config.seed),
        test_set=load_split(config.data, Split.TEST, config.seed),
    )


@dataclass
class TrainedRun:
    """A run after training: its model, channel ranking and variants, and the manifest so far
    (status still `running`: the clean accuracy comes next)."""

    run_dir: Path
    trained: bool  # False when the checkpoint was already there
    model: AttentionNet
    importance: torch.Tensor  # (A, C)
    inputs: TrainInputs
    manifest: dict[str, Any]
    localisation: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)


def train_and_rank(
    config: MethodConfig,
    run_dir: Path,
    *,
    force: bool = False,
    show_progress: bool = True,
    fit: Fit | None = None,
    trainer: str = "single process",
    retrain: bool | None = None,
    inputs: TrainInputs | None = None,
) -> TrainedRun:
    """Train (unless this run already holds the checkpoint of this very config), rank the
    channels on the validation split, and save sample masks of every variant.

    `fit` trains the model (default: this process); `trainer` says which, for the manifest.
    `force` accepts a changed config and, unless `retrain` says otherwise, trains afresh.
    `inputs` is `prepare_train_run`'s result when the caller validated first (`iamt run`)."""
    inputs = inputs or prepare_train_run(config, run_dir, force=force)
    if config.train.num_threads is not None:
        torch.set_num_threads(config.train.num_threads)
    started = time.perf_counter()
    run = RunDirectory(run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    write_text(run.config, config_to_yaml(config))
    manifest = _start_manifest(config, inputs)
    run.write_manifest(manifest)
    retrain = force if retrain is None else retrain
    fit = fit or partial(
        train_model,
        config=config.train,
        seed=config.seed,
        device=inputs.device,
        show_progress=show_progress,
    )
    model, trained, timings = _train_or_load(config, run, inputs, fit, trainer, retrain, manifest)
    manifest["stage"] = "importance"
    run.write_manifest(manifest)
    tick = time.perf_counter()
    importance = _rank_channels(config, run, model, inputs)
    timings["importance_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    localisation = _sample_masks(run, model, importance, inputs)
    timings["masks_s"] = time.perf_counter() - tick
    timings["train_and_rank_s"] = time.perf_counter() - started
    return TrainedRun(run_dir, trained, model, importance, inputs, manifest, localisation, timings)


def _start_manifest(config: MethodConfig, inputs: TrainInputs) -> dict[str, Any]:
    return {
        "name": config.name,
        "status": "running",
        "stage": "train",
        "created": now(),
        "seed": config.seed,
        "dataset": config.data.name.value,
        "variants": {name: t.spec() for name, t in inputs.variants.items()},
        "environment": environment(inputs.device),
    }


def _train_or_load(
    config: MethodConfig,
    run: RunDirectory,
    inputs: TrainInputs,
    fit: Fit,
    trainer: str,
    retrain: bool,
    manifest: dict[str, Any],
) -> tuple[AttentionNet, bool, dict[str, float]]:
    """The trained model on the run's device, whether it was trained now, and how long."""
    weights, meta = checkpoint_paths(run.checkpoint_stem)
    if not retrain and weights.is_file() and meta.is_file():
        model, _ = load_checkpoint(run.checkpoint_stem)
        return model.to(inputs.device), False, {}
    mean, std = channel_statistics(inputs.train_set)
    architecture = Architecture.from_config(
        config.model, inputs.train_set.attributes, config.data.image_size, mean, std
    )
    seed_everything(config.seed)  # the initial weights are a random draw too
    model = build_model(architecture, config.model.backbone_weights)
    tick = time.perf_counter()
    manifest["trainer"] = trainer
    history = fit(model, inputs.train_set)
    model.to(inputs.device)
    timings = {"train_s": time.perf_counter() - tick}
    run.clear_evaluation()  # a new model: no earlier sweep result applies to it
    save_checkpoint(run.checkpoint_stem, model, seed=config.seed, epochs=config.train.epochs)
    manifest["train_history"] = [asdict(record) for record in history]
    return model, True, timings


def _rank_channels(
    config: MethodConfig, run: RunDirectory, model: AttentionNet, inputs: TrainInputs
) -> torch.Tensor:
    """Channel importance (A, C) on the validation split (never the test split)."""
    importance = channel_importance(
        model,
        _head(inputs.val_set, config.importance.n_samples),
        method=config.importance.method,
        batch_size=config.importance.batch_size,
        device=inputs.device,
    )
    names = model.architecture.attribute_names
    run.write_csv(IMPORTANCE, importance_table(importance, names))
    return importance


def _sample_masks(
    run: RunDirectory, model: AttentionNet, importance: torch.Tensor, inputs: TrainInputs
) -> dict[str, float]:
    """Save every variant's masks on sample test images; return where the attention falls
    (inside the object ÷ outside, per attribute) when the data know their objects."""
    test_set = inputs.test_set
    localisation: dict[str, float] = {}
    if isinstance(test_set, TensorAttributeDataset) and test_set.object_masks is not None:
        localisation = localisation_ratio(model, test_set)
    save_mask_samples(run.masks, model, inputs.variants, importance, test_set)
    return localisation


def save_mask_samples(
    path: Path,
    model: AttentionNet,
    variants: dict[str, MaskTransform],
    importance: torch.Tensor,
    dataset: Any,
    count: int = 16,
) -> None:
    """Sample attention masks for the dashboard's gallery, as safetensors (readable with numpy).

    Keys: `images` (K, 3, H, W) float32, `labels` (K, A) int64, and `masks/<variant>/<attribute>`
    (K, C, h, w) float16 — the masks after each variant's transform. The metadata lists the
    attribute names, variants and transforms (JSON)."""
    images, labels = as_tensors(dataset, count)
    tensors = {"images": images.contiguous(), "labels": labels.contiguous()}
    device = next(model.parameters()).device
    names = model.architecture.attribute_names
    with torch.no_grad():
        for variant, transform in variants.items():
            net = variant_model(model, transform, importance)
            masks = net(images.to(device), return_masks=True).masks
            assert masks is not None
            for name, mask in zip(names, masks, strict=True):
                tensors[f"{MASK_TENSORS}/{variant}/{name}"] = mask.half().cpu().contiguous()
    metadata = {
        "attributes": json.dumps(list(names)),
        "variants": json.dumps({v: t.spec() for v, t in variants.items()}),
    }
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def _head(dataset: Any, count: int) -> Any:
    if isinstance(dataset, TensorAttributeDataset):
        return dataset.subset(count)
    return torch.utils.data.Subset(dataset, range(min(count, len(dataset))))


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, git sha and hardware: what a reader needs to trust or reproduce the numbers."""
    packages = ["iamt-robust", "torch", "torchvision", "ray", "foolbox", "numpy"]
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": versions,
        "git_sha": _git_sha(),
    }


def _git_sha() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def now() -> str:
    """The current UTC time, as the manifest records it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
