"""AttentionNet: a CNN with one attention mask per feature channel and per attribute.

References:
  Kimura & Tanaka, "Interpretation of Feature Space using Multi-Channel Attentional
  Sub-Networks" (arXiv 1904.13078) and "Intentional Attention Mask Transformation for Robust
  CNN Classification" (arXiv 1905.02719). Only the abstracts are public to us; the structure
  below is the reconstruction of ../shared/DESIGN.md §1.

  x ─normalize─> trunk f ─> F (B, C, h, w)
                              ├─ g_1 ─> M_1 = σ(g_1(F)) (B, C, h, w) ─T─> F'_1 ─> head_1 ─> logits_1
                              ├─ ...
                              └─ g_A ─> M_A                          ─T─> F'_A ─> head_A ─> logits_A

  Unlike the Attention Branch Network (one map per attribute, broadcast over channels), every
  feature channel c gets its own mask M_a[c]. The mask transformation T is applied at inference
  only: `model.with_transform(T, importance)` returns the *emphasized* model, which shares every
  weight with the normal one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from iamt.config import Backbone, MaskMode, ModelConfig
from iamt.data.base import AttributeSpec
from iamt.transforms import MaskTransform


class Architecture(BaseModel):
    """Everything needed to rebuild the network; stored beside the weights in `normal.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: Backbone
    widths: tuple[int, ...]
    attention_hidden: int
    head_channels: int
    mask_mode: MaskMode
    attribute_names: tuple[str, ...]
    attribute_classes: tuple[tuple[str, ...], ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        attributes: tuple[AttributeSpec, ...],
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> Architecture:
        return cls(
            backbone=config.backbone,
            widths=tuple(config.widths),
            attention_hidden=config.attention_hidden,
            head_channels=config.head_channels,
            mask_mode=config.mask_mode,
            attribute_names=tuple(a.name for a in attributes),
            attribute_classes=tuple(a.classes for a in attributes),
            image_size=image_size,
            mean=mean,
            std=std,
        )

    @property
    def attributes(self) -> tuple[AttributeSpec, ...]:
        return tuple(
            AttributeSpec(n, c)
            for n, c in zip(self.attribute_names, self.attribute_classes, strict=True)
        )


@dataclass
class AttentionOutput:
    logits: list[Tensor]  # one (B, K_a) tensor per attribute
    masks: list[Tensor] | None = None  # one (B, C, h, w) tensor per attribute, after T
    attended: list[Tensor] | None = None  # F'_a, one (B, C, h, w) tensor per attribute


def transform_masks(
    masks: Sequence[Tensor], transform: MaskTransform | None, rankings: Tensor | None
) -> list[Tensor]:
    """T(M_a) for every attribute a, with `rankings` (A, C) giving attribute a its ranking;
    no transform: the masks themselves. Every T is out of place (tests/test_shared_variants.py
    holds each registered one to it), so one M_a can feed several variants."""
    if transform is None:
        return list(masks)
    return [
        transform(mask, None if rankings is None else rankings[a]) for a, mask in enumerate(masks)
    ]


def predicted_classes(logits: Sequence[Tensor]) -> Tensor:
    """One (B, K_a) tensor per attribute -> (B, A) predicted class per attribute, on the CPU."""
    return torch.stack([lg.argmax(1) for lg in logits], dim=1).cpu()


# ---------------------------------------------------------------------------------------------
# Trunks: image (B, 3, H, W) -> features F (B, C, h, w)


def _small_cnn(widths: tuple[int, ...]) -> tuple[nn.Module, int]:
    """conv3×3 → BN → ReLU → maxpool2 per stage: [32, 64] gives 64 channels at H/4 × W/4."""
    layers: list[nn.Module] = []
    in_channels = 3
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        in_channels = width
    return nn.Sequential(*layers), in_channels


# Feature channels C of each ResNet trunk (up to layer3).
RESNET_CHANNELS = {Backbone.RESNET18: 256, Backbone.RESNET50: 1024}


def feature_channels(backbone: Backbone, widths: Sequence[int]) -> int:
    """C, the number of feature channels (and of masks per attribute) of a trunk."""
    return widths[-1] if backbone is Backbone.SMALL_CNN else RESNET_CHANNELS[backbone]


def _resnet_trunk(backbone: Backbone) -> tuple[nn.Module, int]:
    """torchvision ResNet up to layer3 (stride 16): keeps a spatial grid for the masks."""
    net = (
        torchvision.models.resnet18()
        if backbone is Backbone.RESNET18
        else (torchvision.models.resnet50())
    )
    trunk = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3
    )
    return trunk, RESNET_CHANNELS[backbone]


def _attention_subnetwork(channels: int, hidden: int) -> nn.Module:
    """g_a: F (B, C, h, w) -> pre-sigmoid mask logits (B, C, h, w), one map per channel."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, channels, 1),
    )


def _head(channels: int, hidden: int, num_classes: int) -> nn.Module:
    """F'_a (B, C, h, w) -> logits_a (B, K_a): a conv stage, global average pool, linear."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(hidden, num_classes),
    )


class AttentionNet(nn.Module):
    mean: Tensor  # (1, 3, 1, 1) buffers: the input normalization
    std: Tensor

    def __init__(self, architecture: Architecture) -> None:
        super().__init__()
        self.architecture = architecture
        if architecture.backbone is Backbone.SMALL_CNN:
            self.trunk, channels = _small_cnn(architecture.widths)
        else:
            self.trunk, channels = _resnet_trunk(architecture.backbone)
        self.num_channels = channels
        self.attention = nn.ModuleList(
            _attention_subnetwork(channels, architecture.attention_hidden)
            for _ in architecture.attribute_names
        )
        self.heads = nn.ModuleList(
            _head(channels, architecture.head_channels, len(classes))
            for classes in architecture.attribute_classes
        )
        # Normalization lives in the model, so inputs (and attacks) stay in [0, 1].
        self.register_buffer("mean", torch.tensor(architecture.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(architecture.std).view(1, 3, 1, 1))

    @property
    def num_attributes(self) -> int:
        return len(self.heads)

    def forward(
        self,
        images: Tensor,
        *,
        transform: MaskTransform | None = None,
        rankings: Tensor | None = None,
        return_masks: bool = False,
        return_attended: bool = False,
    ) -> AttentionOutput:
        """images (B, 3, H, W) in [0, 1] -> logits per attribute (and masks on request).

        `transform` T and `rankings` (A, C): channel indices per attribute, most important
        first, are normally supplied by `with_transform`, not by callers.
        """
        features, masks = self.features_and_masks(images)
        return self.heads_from_masks(
            features,
            masks,
            transform=transform,
            rankings=rankings,
            return_masks=return_masks,
            return_attended=return_attended,
        )

    def features_and_masks(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The part every variant shares: images (B, 3, H, W) -> F (B, C, h, w) and the masks
        M_a = σ(g_a(F)) before any T, one (B, C, h, w) tensor per attribute."""
        features = self.trunk((images - self.mean) / self.std)  # F: (B, C, h, w)
        masks = [torch.sigmoid(attention(features)) for attention in self.attention]  # M_a
        return features, masks

    def heads_from_masks(
        self,
        features: Tensor,
        masks: Sequence[Tensor],
        *,
        transform: MaskTransform | None = None,
        rankings: Tensor | None = None,
        return_masks: bool = False,
        return_attended: bool = False,
    ) -> AttentionOutput:
        """A variant's own part: F (B, C, h, w) and the masks M_a -> T(M_a), F'_a, logits_a.
        Neither `features` nor `masks` is modified, so they can serve several variants."""
        masks = transform_masks(masks, transform, rankings)  # T(M_a): A × (B, C, h, w)
        logits, attended = [], []
        for mask, head in zip(masks, self.heads, strict=True):
            if self.architecture.mask_mode is MaskMode.RESIDUAL:
                weighted = (1.0 + mask) * features  # F'_a = (1 + M_a) ⊙ F
            else:
                weighted = mask * features  # F'_a = M_a ⊙ F
            logits.append(head(weighted))  # (B, K_a)
            attended.append(weighted)
        return AttentionOutput(
            logits=logits,
            masks=masks if return_masks else None,
            attended=attended if return_attended else None,
        )

    def with_transform(
        self, transform: MaskTransform, importance: Tensor | None = None
    ) -> EmphasizedAttentionNet:
        """The same network with T applied to every mask: the emphasized model."""
        return EmphasizedAttentionNet(self, transform, importance)

    def load_backbone_weights(self, path: Path) -> None:
        """Load trunk weights from a local safetensors file (torchvision key names)."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        trunk_keys = dict(zip(_RESNET_TRUNK_PREFIXES, range(7), strict=True))
        remapped = {}
        for key, value in state.items():
            prefix, _, rest = key.partition(".")
            if prefix in trunk_keys:
                remapped[f"{trunk_keys[prefix]}.{rest}"] = value
        missing, _ = self.trunk.load_state_dict(remapped, strict=False)
        if missing:
            raise ValueError(
                f"{path}: backbone weights lack {len(missing)} trunk tensors, e.g. {missing[:3]}"
            )


_RESNET_TRUNK_PREFIXES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")


class EmphasizedAttentionNet(nn.Module):
    """A view of an AttentionNet with a mask transform; it owns no weights of its own.

    `base` is registered as a submodule, so `.parameters()` yields the very same tensors, and
    gradients flow through T (binarize uses a straight-through estimator), so white-box attacks
    see the emphasized model exactly as it classifies.
    """

    rankings: Tensor | None  # (A, C) buffer: channel indices per attribute, most important first

    def __init__(
        self, base: AttentionNet, transform: MaskTransform, importance: Tensor | None
    ) -> None:
        super().__init__()
        transform.validate(base.num_channels)
        if transform.needs_ranking and importance is None:
            raise ValueError(f"transform {transform.spec()!r} needs channel importance scores")
        self.base = base
        self.transform = transform
        rankings = None
        if importance is not None:
            expected = (base.num_attributes, base.num_channels)
            if tuple(importance.shape) != expected:
                raise ValueError(
                    f"importance has shape {tuple(importance.shape)}, expected {expected}"
                )
            # Stable sort so equal scores rank by channel index, identically everywhere.
            rankings = torch.argsort(importance, dim=1, descending=True, stable=True)
        self.register_buffer("rankings", rankings)

    @property
    def architecture(self) -> Architecture:
        return self.base.architecture

    def forward(
        self, images: Tensor, *, return_masks: bool = False, return_attended: bool = False
    ) -> AttentionOutput:
        return self.base(
            images,
            transform=self.transform,
            rankings=self.rankings,
            return_masks=return_masks,
            return_attended=return_attended,
        )


def build_model(architecture: Architecture, backbone_weights: Path | None = None) -> AttentionNet:
    model = AttentionNet(architecture)
    if backbone_weights is not None:
        if architecture.backbone is Backbone.SMALL_CNN:
            raise ValueError("backbone_weights applies to resnet backbones only, not small_cnn")
        model.load_backbone_weights(backbone_weights)
    return model
