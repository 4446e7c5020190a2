"""Variants: the normal model and its emphasized views, from names and transform specs.

A variant is the trained model seen through one mask transform T (`iamt/transforms.py`): the
same weights, no retraining. `normal` is T = identity, the model itself. Every place that turns
specs into variants (training's clean accuracy and mask samples, the sweep, the emphasis search)
goes through `parse_variants` and `variant_models`, so a spec is parsed and checked against the
model in one place.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from iamt.config import ConfigError, MethodConfig
from iamt.model import AttentionNet, feature_channels
from iamt.transforms import MaskTransform, TransformSpecError, parse_transform
from iamt.vocabulary import IDENTITY, NORMAL


def parse_spec(spec: str, channels: int, where: str) -> MaskTransform:
    """One transform spec, checked against a model with `channels` feature channels; a bad
    spec raises ConfigError naming `where` it came from (a config key)."""
    try:
        transform = parse_transform(spec)
        transform.validate(channels)
    except TransformSpecError as error:
        raise ConfigError(f"{where}: {error}") from None
    return transform


def parse_variants(
    config: MethodConfig, extra: Mapping[str, str] | None = None, where: str = "search.variant"
) -> dict[str, MaskTransform]:
    """`normal` (identity), the configured emphasis variants, then `extra` ones (such as the
    searched transform), each validated against the model's channel count."""
    channels = feature_channels(config.model.backbone, config.model.widths)
    variants: dict[str, MaskTransform] = {NORMAL: parse_transform(IDENTITY)}
    for name, spec in config.emphasis.variants.items():
        if name == NORMAL:
            raise ConfigError(f"emphasis.variants: {NORMAL!r} is reserved for the identity model")
        variants[name] = parse_spec(spec, channels, f"emphasis.variants.{name}")
    for name, spec in (extra or {}).items():
        if name in variants:
            raise ConfigError(f"{where} {name!r} is also a configured emphasis variant")
        variants[name] = parse_spec(spec, channels, where)
    return variants


def variant_model(model: AttentionNet, transform: MaskTransform, importance: Tensor) -> nn.Module:
    """The model seen through `transform`: the model itself for the identity."""
    if transform.spec() == IDENTITY:
        return model
    return model.with_transform(transform, importance)


def variant_models(
    model: AttentionNet, transforms: Mapping[str, MaskTransform], importance: Tensor
) -> dict[str, nn.Module]:
    """Every variant's model, in eval mode, keyed like `transforms`."""
    models = {name: variant_model(model, t, importance) for name, t in transforms.items()}
    for net in models.values():
        net.eval()
    return models
