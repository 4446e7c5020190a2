"""Variants: the normal model and its emphasized views, from names and transform specs.

A variant is the trained model seen through one mask transform T (`iamt/transforms.py`): the
same weights, no retraining. `normal` is T = identity, the model itself. Every place that turns
specs into variants (training's clean accuracy and mask samples, the sweep, the emphasis search)
goes through `parse_variants` and `variant_models`, so a spec is parsed and checked against the
model in one place.

`SharedVariants` evaluates several variants on one batch. When they are views of one
AttentionNet, the trunk and the attention sub-networks (F and every M_a) run once per batch and
only each variant's T, F'_a and heads run per variant: on the CPU the outputs are bit-identical
to one forward per variant (the same ops on the same tensors), at a fraction of the cost.
Otherwise (other modules, views of different models, `share_trunk=False`) each model runs its
own full forward, as separate models would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from iamt.config import ConfigError, MethodConfig
from iamt.model import (
    AttentionNet,
    AttentionOutput,
    EmphasizedAttentionNet,
    feature_channels,
    predicted_classes,
    transform_masks,
)
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


# (T, rankings (A, C)) of a view of an AttentionNet; (None, None) for the AttentionNet itself.
VariantView = tuple[MaskTransform | None, Tensor | None]


def _view(model: nn.Module) -> tuple[AttentionNet, VariantView] | None:
    """The AttentionNet `model` is a view of and the view's (T, rankings); None for any other
    module. Exact types: a subclass may override `forward`, which a shared pass would skip."""
    if type(model) is AttentionNet:
        return model, (None, None)
    if type(model) is EmphasizedAttentionNet and type(model.base) is AttentionNet:
        return model.base, (model.transform, model.rankings)
    return None


def transform_of(model: nn.Module) -> VariantView:
    """(T, rankings) of a view of an AttentionNet, as a shared pass applies them to the masks.
    Read at each batch, not cached: `.to(device)` replaces the rankings buffer."""
    view = _view(model)
    if view is None:
        raise TypeError(f"{type(model).__name__} is not an AttentionNet or a view of one")
    return view[1]


def shared_base(models: Iterable[nn.Module]) -> AttentionNet | None:
    """The one AttentionNet every model is (a view of), judged by identity; else None."""
    bases = []
    for model in models:
        view = _view(model)
        if view is None:
            return None
        bases.append(view[0])
    return bases[0] if bases and all(base is bases[0] for base in bases) else None


class SharedVariants:
    """Variants (name -> model) evaluated together, batch by batch, in the models' order.

    `share_trunk=False` forces one full forward per model: the variants as separate models,
    as a RobustBench user would evaluate them (the benchmark's baseline). Sharing also waits
    for eval mode: a training-mode BatchNorm would update its statistics once per forward."""

    def __init__(self, models: Mapping[str, nn.Module], *, share_trunk: bool = True) -> None:
        self.models = dict(models)
        self.share_trunk = share_trunk
        self.base = shared_base(self.models.values()) if share_trunk else None

    @property
    def names(self) -> list[str]:
        return list(self.models)

    @property
    def shared(self) -> bool:
        """Whether a batch runs the trunk and attention once for every variant."""
        return self.base is not None and not self.base.training

    def only(self, names: Iterable[str]) -> SharedVariants:
        """The variants `names`, in that order, shared as these are."""
        return SharedVariants({n: self.models[n] for n in names}, share_trunk=self.share_trunk)

    def outputs(
        self, images: Tensor, *, return_masks: bool = False, return_attended: bool = False
    ) -> Iterator[tuple[str, AttentionOutput]]:
        """(name, output) of every variant on one batch (B, 3, H, W). Lazy: F and the M_a are
        computed at the first step, each variant's heads at its own step, so only one
        variant's transformed masks need be alive at a time."""
        if not self.shared:
            # Only the flags asked for: a plain module may not take them.
            flags = {"return_masks": return_masks, "return_attended": return_attended}
            kwargs = {flag: True for flag, wanted in flags.items() if wanted}
            for name, model in self.models.items():
                yield name, model(images, **kwargs)
            return
        assert self.base is not None
        features, masks = self.base.features_and_masks(images)  # once for every variant
        for name, model in self.models.items():
            transform, rankings = transform_of(model)
            yield (
                name,
                self.base.heads_from_masks(
                    features,
                    masks,
                    transform=transform,
                    rankings=rankings,
                    return_masks=return_masks,
                    return_attended=return_attended,
                ),
            )

    def masks(self, images: Tensor) -> Iterator[tuple[str, list[Tensor] | None]]:
        """(name, masks after its T: A × (B, C, h, w)) of every variant on one batch, lazily.
        Shared, no head runs: only the masks are asked for."""
        if not self.shared:
            for name, output in self.outputs(images, return_masks=True):
                yield name, output.masks
            return
        assert self.base is not None
        _, masks = self.base.features_and_masks(images)
        for name, model in self.models.items():
            yield name, transform_masks(masks, *transform_of(model))

    def predict(self, images: Tensor, batch_size: int) -> dict[str, Tensor]:
        """(N, A) predicted class per attribute of every variant, on the CPU, in batches of
        `batch_size` (the same batches for every variant, as one model alone would see)."""
        predictions: dict[str, list[Tensor]] = {name: [] for name in self.models}
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                for name, output in self.outputs(images[start : start + batch_size]):
                    predictions[name].append(predicted_classes(output.logits))
        return {name: torch.cat(batches) for name, batches in predictions.items()}

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Every model in eval mode inside the block, each model's mode restored after it, in
        order (a view restores its base too, as one call per variant would leave it)."""
        modes = {name: model.training for name, model in self.models.items()}
        if not any(module.training for m in self.models.values() for module in m.modules()):
            yield  # already in eval mode throughout: nothing to switch, nothing to restore
            return
        try:
            for model in self.models.values():
                model.eval()
            yield
        finally:
            for name, model in self.models.items():
                model.train(modes[name])
