"""Checkpoints: round trip, and every refusal names what is wrong."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from iamt.checkpoint import CheckpointError, checkpoint_paths, load_checkpoint, save_checkpoint
from iamt.config import ModelConfig
from iamt.data.shapes import SHAPES_ATTRIBUTES
from iamt.model import Architecture, AttentionNet, build_model


def _model(widths: tuple[int, ...] = (8, 16)) -> AttentionNet:
    torch.manual_seed(0)
    config = ModelConfig(widths=list(widths), attention_hidden=8, head_channels=8)
    architecture = Architecture.from_config(
        config, SHAPES_ATTRIBUTES, 32, (0.4, 0.5, 0.6), (0.2, 0.2, 0.2)
    )
    return build_model(architecture).eval()


def _assert_same_outputs(model: AttentionNet, loaded: AttentionNet) -> None:
    """The saved and the loaded model, both in eval mode, give exactly the same logits and
    attention masks on the same input."""
    model.eval()
    loaded.eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(images, return_masks=True)
        actual = loaded(images, return_masks=True)
    assert expected.masks is not None and actual.masks is not None
    count = len(SHAPES_ATTRIBUTES)
    assert len(expected.logits) == len(actual.logits) == count
    assert len(expected.masks) == len(actual.masks) == count
    for a in range(count):
        assert torch.equal(expected.logits[a], actual.logits[a]), f"logits of attribute {a} differ"
        assert torch.equal(expected.masks[a], actual.masks[a]), f"masks of attribute {a} differ"


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, AttentionNet]:
    model = _model()
    stem = tmp_path / "checkpoints" / "normal"
    save_checkpoint(stem, model, seed=1, epochs=2)
    return stem, model


def test_round_trip_gives_identical_outputs(saved: tuple[Path, AttentionNet]) -> None:
    stem, model = saved
    loaded, metadata = load_checkpoint(stem)
    assert metadata.architecture == model.architecture
    assert metadata.seed == 1 and metadata.epochs == 2
    assert metadata.architecture.mean == (0.4, 0.5, 0.6)  # normalization travels along
    _assert_same_outputs(model, loaded)
    assert sorted(p.name for p in stem.parent.iterdir()) == ["normal.json", "normal.safetensors"]


def test_truncated_weights_are_refused(saved: tuple[Path, AttentionNet]) -> None:
    stem, _ = saved
    weights, _ = checkpoint_paths(stem)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or was replaced"):
        load_checkpoint(stem)


def test_truncated_weights_with_matching_hash_fail_in_safetensors(
    saved: tuple[Path, AttentionNet],
) -> None:
    # Even if someone also rewrote the recorded hash, safetensors refuses the broken file.
    stem, _ = saved
    weights, meta = checkpoint_paths(stem)
    weights.write_bytes(weights.read_bytes()[:100])
    payload = json.loads(meta.read_text())
    payload["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    meta.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(stem)


def test_shape_mismatch_is_refused_with_the_tensor_name(
    saved: tuple[Path, AttentionNet], tmp_path: Path
) -> None:
    stem, _ = saved
    weights, meta = checkpoint_paths(stem)
    # Weights of a wider model under the narrow model's metadata.
    wide = _model(widths=(8, 32))
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(weights))
    payload = json.loads(meta.read_text())
    payload["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    meta.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"tensor 'trunk.4.weight' has shape \(32, 8, 3, 3\)"):
        load_checkpoint(stem)


def test_architecture_mismatch_with_the_expected_one_is_refused(
    saved: tuple[Path, AttentionNet],
) -> None:
    stem, _ = saved
    expected = _model(widths=(8, 32)).architecture
    with pytest.raises(CheckpointError, match=r"architecture mismatch: widths: expected \(8, 32\)"):
        load_checkpoint(stem, expected=expected)


@pytest.mark.parametrize("remove", ["json", "safetensors"])
def test_missing_files_are_refused(saved: tuple[Path, AttentionNet], remove: str) -> None:
    stem, _ = saved
    stem.with_suffix(f".{remove}").unlink()
    with pytest.raises(CheckpointError, match=rf"normal\.{remove}' does not exist"):
        load_checkpoint(stem)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda p: p.pop("architecture"), "architecture"),
        (lambda p: p.update(format_version=99), "format_version 99 is not supported"),
        (lambda p: p["architecture"].update(backbone="vgg"), "backbone"),
        (lambda p: p.update(pickle="yes"), "Extra inputs are not permitted"),
    ],
)
def test_bad_metadata_is_refused(
    saved: tuple[Path, AttentionNet], edit: object, fragment: str
) -> None:
    stem, _ = saved
    _, meta = checkpoint_paths(stem)
    payload = json.loads(meta.read_text())
    edit(payload)  # type: ignore[operator]
    meta.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(stem)


def test_metadata_that_is_not_json_is_refused(saved: tuple[Path, AttentionNet]) -> None:
    stem, _ = saved
    stem.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid checkpoint metadata"):
        load_checkpoint(stem)


def test_a_copied_checkpoint_loads_elsewhere(
    saved: tuple[Path, AttentionNet], tmp_path: Path
) -> None:
    stem, model = saved
    target = tmp_path / "elsewhere"
    shutil.copytree(stem.parent, target)
    loaded, _ = load_checkpoint(target / "normal")
    _assert_same_outputs(model, loaded)
