"""Checkpoints: `<stem>.safetensors` (weights) + `<stem>.json` (architecture and metadata).

Nothing is ever unpickled: weights are safetensors, metadata is JSON validated by pydantic.
The JSON records the SHA-256 of the weights file, so a truncated or swapped file is refused
with a clear message before any tensor is used.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from iamt.io import atomic_path, write_json
from iamt.model import Architecture, AttentionNet, build_model

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with or does not fit the architecture."""


class CheckpointMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    architecture: Architecture
    weights_file: str
    weights_sha256: str
    seed: int
    epochs: int


def checkpoint_paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_checkpoint(stem: Path, model: AttentionNet, *, seed: int, epochs: int) -> None:
    """Write weights first, then the JSON that vouches for them (its presence marks success)."""
    weights_path, meta_path = checkpoint_paths(stem)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights_path) as temporary:
        save_file(state, str(temporary), metadata={"format": "iamt-attention-net"})
    metadata = CheckpointMetadata(
        format_version=FORMAT_VERSION,
        architecture=model.architecture,
        weights_file=weights_path.name,
        weights_sha256=_sha256(weights_path),
        seed=seed,
        epochs=epochs,
    )
    write_json(meta_path, metadata.model_dump(mode="json"))


def load_checkpoint(
    stem: Path, expected: Architecture | None = None
) -> tuple[AttentionNet, CheckpointMetadata]:
    """Rebuild the model from `<stem>.json` and load `<stem>.safetensors` into it, validated."""
    weights_path, meta_path = checkpoint_paths(stem)
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    try:
        metadata = CheckpointMetadata.model_validate(json.loads(meta_path.read_text()))
    except (json.JSONDecodeError, ValidationError) as error:
        raise CheckpointError(f"{meta_path}: invalid checkpoint metadata: {error}") from None
    if metadata.format_version != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format_version {metadata.format_version} is not supported "
            f"(this version reads {FORMAT_VERSION})"
        )
    if expected is not None and metadata.architecture != expected:
        raise CheckpointError(
            f"{meta_path}: architecture mismatch: {_diff(expected, metadata.architecture)}"
        )
    digest = _sha256(weights_path)
    if digest != metadata.weights_sha256:
        raise CheckpointError(
            f"{weights_path}: SHA-256 {digest[:12]}… does not match the "
            f"{metadata.weights_sha256[:12]}… recorded in {meta_path.name}; the file is "
            "truncated or was replaced"
        )
    try:
        state = load_file(str(weights_path))
    except SafetensorError as error:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file: {error}") from None

    model = build_model(metadata.architecture)
    _check_state_fits(model, state, weights_path)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, metadata


def load_tensor_state(path: Path) -> Any:
    """A `torch.save`d file of tensors, numbers, strings and containers (Ray Train's resume
    state), loaded with `weights_only=True`: a file holding anything else, such as a pickle
    that would run code, is refused without running it."""
    if not Path(path).is_file():
        raise CheckpointError(f"training state {str(path)!r} does not exist")
    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise CheckpointError(
            f"{path}: refused: not a plain tensor file (pickled objects are never loaded, "
            f"they can run code): {first_line}"
        ) from None


def _check_state_fits(model: AttentionNet, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match the architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"but the architecture expects {tuple(tensor.shape)}"
            )


def _diff(expected: Architecture, found: Architecture) -> str:
    a, b = expected.model_dump(), found.model_dump()
    changed = [f"{key}: expected {a[key]!r}, found {b[key]!r}" for key in a if a[key] != b[key]]
    return "; ".join(changed)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
