"""AttentionNet: shapes, mask semantics, emphasized views sharing weights, backbones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from iamt.config import Backbone, MaskMode, ModelConfig
from iamt.data.shapes import SHAPES_ATTRIBUTES
from iamt.model import Architecture, AttentionNet, build_model
from iamt.transforms import parse_transform


def _architecture(**overrides: object) -> Architecture:
    config = ModelConfig.model_validate(
        {"widths": [8, 16], "attention_hidden": 8, "head_channels": 8, **overrides}
    )
    return Architecture.from_config(
        config, SHAPES_ATTRIBUTES, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    )


def _model(**overrides: object) -> AttentionNet:
    torch.manual_seed(0)
    return build_model(_architecture(**overrides)).eval()


IMAGES = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_one_mask_per_channel_and_attribute() -> None:
    model = _model()
    output = model(IMAGES, return_masks=True, return_attended=True)
    assert [tuple(lg.shape) for lg in output.logits] == [(4, 4), (4, 4), (4, 3), (4, 2)]
    assert output.masks is not None and output.attended is not None
    assert len(output.masks) == len(SHAPES_ATTRIBUTES)
    for mask in output.masks:
        assert mask.shape == (4, 16, 8, 8)  # (B, C, h, w): one map per feature channel
        assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    # Different attributes have their own sub-network, so their masks differ.
    assert not torch.allclose(output.masks[0], output.masks[1])
    assert model(IMAGES).masks is None  # masks only on request


@pytest.mark.parametrize("mode", list(MaskMode))
def test_mask_application_modes(mode: MaskMode) -> None:
    model = _model(mask_mode=mode.value)
    captured = {}
    model.trunk.register_forward_hook(lambda _m, _i, out: captured.setdefault("F", out))
    output = model(IMAGES, return_masks=True, return_attended=True)
    assert output.masks is not None and output.attended is not None
    features, mask = captured["F"], output.masks[0]
    expected = (1 + mask) * features if mode is MaskMode.RESIDUAL else mask * features
    torch.testing.assert_close(output.attended[0], expected)


def test_emphasized_view_shares_weights_but_changes_outputs() -> None:
    model = _model()
    importance = torch.rand(len(SHAPES_ATTRIBUTES), 16, generator=torch.Generator().manual_seed(2))
    emphasized = model.with_transform(parse_transform("topk:k=4,alpha=3"), importance)
    base_params = dict(model.named_parameters())
    view_params = dict(emphasized.named_parameters())
    assert len(view_params) == len(base_params)
    for name, param in base_params.items():
        assert view_params[f"base.{name}"] is param  # the very same tensors
    with torch.no_grad():
        normal_out = model(IMAGES).logits
        emphasized_out = emphasized(IMAGES).logits
    for a in range(len(SHAPES_ATTRIBUTES)):
        assert not torch.allclose(normal_out[a], emphasized_out[a])
    # A weight update is seen by both: nothing was copied.
    with torch.no_grad():
        model.heads[0][-1].bias.add_(1.0)
        assert torch.allclose(emphasized(IMAGES).logits[0], emphasized_out[0] + 1.0, atol=1e-5)


def test_identity_view_equals_the_normal_model() -> None:
    model = _model()
    view = model.with_transform(parse_transform("identity"))
    with torch.no_grad():
        for a, b in zip(model(IMAGES).logits, view(IMAGES).logits, strict=True):
            assert torch.equal(a, b)


def test_emphasized_view_is_differentiable_for_attacks() -> None:
    model = _model()
    importance = torch.rand(len(SHAPES_ATTRIBUTES), 16)
    view = model.with_transform(parse_transform("binarize:tau=0.5+topk:k=2,alpha=2"), importance)
    images = IMAGES.clone().requires_grad_(True)
    view(images).logits[0].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_with_transform_validates_its_inputs() -> None:
    model = _model()
    with pytest.raises(ValueError, match="needs channel importance"):
        model.with_transform(parse_transform("topk:k=2,alpha=2"))
    with pytest.raises(ValueError, match="k=17 is larger"):
        model.with_transform(parse_transform("topk:k=17,alpha=2"), torch.rand(4, 16))
    with pytest.raises(ValueError, match=r"importance has shape \(4, 8\), expected \(4, 16\)"):
        model.with_transform(parse_transform("topk:k=2,alpha=2"), torch.rand(4, 8))


def test_normalization_lives_inside_the_model() -> None:
    model = _model()
    assert torch.equal(model.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    # Inputs stay in [0, 1]; shifting the normalization changes the outputs.
    with torch.no_grad():
        before = model(IMAGES).logits[0].clone()
        model.mean.fill_(0.0)
        assert not torch.allclose(model(IMAGES).logits[0], before)


@pytest.mark.parametrize(("backbone", "channels"), [("resnet18", 256), ("resnet50", 1024)])
def test_resnet_trunks(backbone: str, channels: int) -> None:
    model = _model(backbone=backbone)
    output = model(torch.rand(2, 3, 64, 64), return_masks=True)
    assert model.num_channels == channels
    assert output.masks is not None
    assert output.masks[0].shape == (2, channels, 4, 4)  # stride 16 at 64 px


def test_resnet_backbone_weights_load_from_a_local_safetensors_file(tmp_path: Path) -> None:
    torch.manual_seed(5)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = build_model(_architecture(backbone="resnet18"), backbone_weights=path)
    torch.testing.assert_close(model.trunk[0].weight, reference.conv1.weight)
    torch.testing.assert_close(model.trunk[6][0].conv1.weight, reference.layer3[0].conv1.weight)
    with pytest.raises(ValueError, match="resnet backbones only"):
        build_model(_architecture(), backbone_weights=path)


def test_backbone_enum_covers_the_config_vocabulary() -> None:
    assert {b.value for b in Backbone} == {"small_cnn", "resnet18", "resnet50"}
