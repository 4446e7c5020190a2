"""`iamt train`: train the normal model, rank channels, build emphasized variants, measure.

Writes into the run directory (../shared/DESIGN.md §4):

  config.yaml        the resolved config
  manifest.json      status, versions, seeds, hardware, timings, clean accuracy, localisation
  checkpoints/       normal.safetensors + normal.json
  importance.csv     attribute, channel, score, rank
  clean.csv          clean accuracy per variant and attribute, with Wilson 95% CIs
  masks/             samples.safetensors: sample images and their attention masks per variant

Everything that can be checked is checked before the run directory is touched.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from safetensors.torch import save_file

from iamt.checkpoint import (
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    save_checkpoint,
)
from iamt.config import ConfigError, RunConfig, config_to_yaml, parse_config
from iamt.data import AttributeDataset, Split, TensorAttributeDataset, as_tensors, load_split
from iamt.importance import channel_importance, importance_table, localisation_ratio
from iamt.io import atomic_path, write_csv, write_json, write_text
from iamt.model import Architecture, AttentionNet, build_model, feature_channels
from iamt.train import (
    EpochRecord,
    channel_statistics,
    predict_correct,
    resolve_device,
    seed_everything,
    train_model,
)
from iamt.transforms import MaskTransform, TransformSpecError, parse_transform
from robustness.metrics import wilson_interval
from robustness.schema import CLEAN_COLUMNS

NORMAL = "normal"
CHECKPOINT_STEM = Path("checkpoints") / "normal"
# Config sections that do not shape the model.
IGNORED_BY_TRAINING = ("robustness", "search", "cluster")
# What a sweep derives from the checkpoint: stale as soon as the checkpoint changes.
EVALUATION_OUTPUTS = (
    "parts",
    "results.csv",
    "summary.csv",
    "drift.csv",
    "failures.csv",
    "timings.csv",
    "report.html",
    "plots",
    "search.csv",
    "search.json",
    "search",
)


class RunDirectoryError(ValueError):
    """The output directory cannot be used as asked (changed config, not writable, ...)."""


def parse_variants(config: RunConfig) -> dict[str, MaskTransform]:
    """`normal` (identity) plus the configured emphasized variants, validated against the model."""
    variants: dict[str, MaskTransform] = {NORMAL: parse_transform("identity")}
    for name, spec in config.emphasis.variants.items():
        if name == NORMAL:
            raise ConfigError(f"emphasis.variants: {NORMAL!r} is reserved for the identity model")
        try:
            transform = parse_transform(spec)
            transform.validate(feature_channels(config.model.backbone, config.model.widths))
        except TransformSpecError as error:
            raise ConfigError(f"emphasis.variants.{name}: {error}") from None
        variants[name] = transform
    return variants


def check_run_directory(
    run_dir: Path, config: RunConfig, *, force: bool, ignore: tuple[str, ...] = ()
) -> None:
    """Refuse to mix two configs in one run directory (unless `force`), or an unwritable one.

    `ignore` names top-level sections that may differ (training ignores `robustness`)."""
    existing = run_dir / "config.yaml"
    if existing.is_file() and not force:
        old = _resolved(yaml.safe_load(existing.read_text()) or {})
        new = config.model_dump(mode="json")
        for section in ignore:
            old.pop(section, None)
            new.pop(section, None)
        changed = _diff_keys(old, new)
        if changed:
            raise RunDirectoryError(
                f"{run_dir} holds a run with a different config (changed: "
                f"{', '.join(changed)}); use another --out, or --force to start it afresh"
            )
    check_writable(run_dir)


def check_writable(run_dir: Path) -> None:
    """Refuse an output directory that cannot be created or written, before any work.

    The test is a real one (a temporary file, removed at once): `os.access` says yes to root on
    read-only or virtual filesystems, and cannot see quotas or ACLs."""
    probe = run_dir if run_dir.exists() else _first_existing_parent(run_dir)
    if not probe.is_dir():
        raise RunDirectoryError(
            f"output directory {str(run_dir)!r} cannot be created: {str(probe)!r} is a file"
        )
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise RunDirectoryError(
            f"output directory {str(probe)!r} is not writable ({error.strerror or error})"
        ) from None


def _resolved(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored config with its defaults filled in, so only real changes show up in a diff.
    One that no longer validates is compared as written."""
    try:
        return parse_config(raw).model_dump(mode="json")
    except ConfigError:
        return raw


def _first_existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


# Trains a freshly initialised model in place and returns its loss per epoch. The default is
# `iamt.train.train_model` in this process; `iamt run` passes Ray Train's (cluster/train.py).
Fit = Callable[[AttentionNet, AttributeDataset], list[EpochRecord]]


def clear_evaluation(run_dir: Path) -> None:
    """Remove a sweep's outputs: job ids name the perturbation, not the model, so parts of an
    earlier model must never be resumed into a new one."""
    for name in EVALUATION_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def adopt_checkpoint(source: Path, run_dir: Path, config: RunConfig, *, force: bool) -> None:
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
    target = run_dir / CHECKPOINT_STEM
    target_weights, target_meta = checkpoint_paths(target)
    if target_meta.is_file():
        existing = json.loads(target_meta.read_text()).get("weights_sha256")
        if existing == metadata.weights_sha256:
            return  # already adopted (a rerun)
        if not force:
            raise RunDirectoryError(
                f"{run_dir} already holds another trained model; use another --out, or --force"
            )
    clear_evaluation(run_dir)
    weights, meta = checkpoint_paths(stem)
    target.parent.mkdir(parents=True, exist_ok=True)
    for source_file, target_file in ((weights, target_weights), (meta, target_meta)):
        with atomic_path(target_file) as temporary:
            shutil.copyfile(source_file, temporary)


@dataclass
class TrainInputs:
    """What `train_run` needs, validated and loaded before anything is written."""

    variants: dict[str, MaskTransform]
    device: torch.device
    train_set: AttributeDataset
    val_set: AttributeDataset
    test_set: AttributeDataset


def prepare_train_run(config: RunConfig, run_dir: Path, *, force: bool) -> TrainInputs:
    """Validate the config against the run directory and load the three splits. Raises the
    user's mistake (config, run directory, dataset) before a file is written or Ray starts."""
    variants = parse_variants(config)
    # The robustness section does not change the model (`iamt evaluate --set` may edit it),
    # and the cluster section only says where things run.
    check_run_directory(run_dir, config, force=force, ignore=IGNORED_BY_TRAINING)
    device = resolve_device(config.train.device)
    return TrainInputs(
        variants,
        device,
        train_set=load_split(config.data, Split.TRAIN, config.seed),
        val_set=load_split(config.data, Split.VAL, config.seed),
        test_set=load_split(config.data, Split.TEST, config.seed),
    )


@dataclass
class TrainRunSummary:
    run_dir: Path
    trained: bool
    clean: pd.DataFrame
    localisation: dict[str, float]


def train_run(
    config: RunConfig,
    run_dir: Path,
    *,
    force: bool = False,
    show_progress: bool = True,
    fit: Fit | None = None,
    trainer: str = "single process",
    retrain: bool | None = None,
    inputs: TrainInputs | None = None,
) -> TrainRunSummary:
    """`fit` trains the model (default: this process); `trainer` says which, for the manifest.
    `force` accepts a changed config and, unless `retrain` says otherwise, trains afresh.
    `inputs` is `prepare_train_run`'s result when the caller validated first (`iamt run`)."""
    # 1. Validate everything cheap before writing anything.
    if inputs is None:
        inputs = prepare_train_run(config, run_dir, force=force)
    variants, device = inputs.variants, inputs.device
    train_set, val_set, test_set = inputs.train_set, inputs.val_set, inputs.test_set
    if config.train.num_threads is not None:
        torch.set_num_threads(config.train.num_threads)

    # 2. The run directory: config first, then a manifest that says we are running.
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", config_to_yaml(config))
    manifest: dict[str, Any] = {
        "name": config.name,
        "status": "running",
        "stage": "train",
        "created": _now(),
        "seed": config.seed,
        "dataset": config.data.name.value,
        "variants": {name: t.spec() for name, t in variants.items()},
        "environment": environment(device),
    }
    write_json(run_dir / "manifest.json", manifest)
    timings: dict[str, float] = {}

    # 3. Train, unless this run already holds the checkpoint of this very config.
    stem = run_dir / CHECKPOINT_STEM
    weights, meta = checkpoint_paths(stem)
    retrain = force if retrain is None else retrain
    trained = retrain or not (weights.is_file() and meta.is_file())
    if trained:
        mean, std = channel_statistics(train_set)
        architecture = Architecture.from_config(
            config.model, train_set.attributes, config.data.image_size, mean, std
        )
        seed_everything(config.seed)  # the initial weights are a random draw too
        model = build_model(architecture, config.model.backbone_weights)
        if fit is None:
            fit = partial(
                train_model,
                config=config.train,
                seed=config.seed,
                device=device,
                show_progress=show_progress,
            )
        tick = time.perf_counter()
        manifest["trainer"] = trainer
        history = fit(model, train_set)
        model.to(device)
        timings["train_s"] = time.perf_counter() - tick
        clear_evaluation(run_dir)  # a new model: no earlier sweep result applies to it
        save_checkpoint(stem, model, seed=config.seed, epochs=config.train.epochs)
        manifest["train_history"] = [asdict(record) for record in history]
    else:
        model, _ = load_checkpoint(stem)
        model.to(device)

    # 4. Channel importance on the validation split (never the test split).
    manifest["stage"] = "importance"
    write_json(run_dir / "manifest.json", manifest)
    tick = time.perf_counter()
    importance_set = _head(val_set, config.importance.n_samples)
    importance = channel_importance(
        model,
        importance_set,
        method=config.importance.method,
        batch_size=config.importance.batch_size,
        device=device,
    )
    names = model.architecture.attribute_names
    write_csv(run_dir / "importance.csv", importance_table(importance, names))
    timings["importance_s"] = time.perf_counter() - tick

    # 5. Clean accuracy of every variant on the test split, and where the attention falls.
    manifest["stage"] = "clean"
    tick = time.perf_counter()
    clean = clean_accuracy(config, model, variants, importance, test_set)
    write_csv(run_dir / "clean.csv", clean)
    localisation: dict[str, float] = {}
    if isinstance(test_set, TensorAttributeDataset) and test_set.object_masks is not None:
        localisation = localisation_ratio(model, test_set)
    save_mask_samples(
        run_dir / "masks" / "samples.safetensors", model, variants, importance, test_set
    )
    timings["evaluate_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started

    manifest.update(
        status="done",
        stage="done",
        finished=_now(),
        timings=timings,
        clean_accuracy={
            f"{row.variant}/{row.attribute}": row.accuracy for row in clean.itertuples()
        },
        localisation_ratio=localisation,
    )
    write_json(run_dir / "manifest.json", manifest)
    return TrainRunSummary(run_dir, trained, clean, localisation)


def clean_accuracy(
    config: RunConfig,
    model: AttentionNet,
    variants: dict[str, MaskTransform],
    importance: torch.Tensor,
    dataset: Any,
) -> pd.DataFrame:
    rows = []
    for variant, transform in variants.items():
        net = model if variant == NORMAL else model.with_transform(transform, importance)
        correct = predict_correct(net, dataset)  # (N, A)
        for a, attribute in enumerate(model.architecture.attribute_names):
            n, hits = int(correct.shape[0]), int(correct[:, a].sum())
            low, high = wilson_interval(hits, n)
            rows.append(
                {
                    "run": config.name,
                    "dataset": config.data.name.value,
                    "variant": variant,
                    "transform": transform.spec(),
                    "attribute": attribute,
                    "n": n,
                    "correct": hits,
                    "accuracy": hits / n,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows, columns=CLEAN_COLUMNS)


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
            net = model if variant == NORMAL else model.with_transform(transform, importance)
            masks = net(images.to(device), return_masks=True).masks
            assert masks is not None
            for name, mask in zip(names, masks, strict=True):
                tensors[f"masks/{variant}/{name}"] = mask.half().cpu().contiguous()
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


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
