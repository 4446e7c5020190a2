"""Intentional attention mask transformations T, applied to M_a at inference time.

Each transform is a frozen dataclass with keyword parameters. It parses from and prints to a
spec string: `name:param=value,...`, and `+` composes transforms left to right:

    identity
    topk:k=8,alpha=2              multiply the masks of the k most important channels by α
    topk:k=8,alpha=2,clip=true    ... and clip the result back to [0, 1]
    suppress:k=8,beta=0.5         multiply the masks of all *other* channels by β (0 ≤ β < 1)
    power:gamma=0.5               M^γ (γ < 1 lifts weak activations, γ > 1 sharpens)
    binarize:tau=0.5              1[M > τ], with a straight-through gradient
    topk:k=8,alpha=2+power:gamma=0.5

"Most important" comes from the per-attribute channel ranking (iamt.importance). Every
transform is differentiable where it is defined, so white-box attacks see the emphasized model
as it really classifies.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from iamt.registry import Registry


class TransformSpecError(ValueError):
    """A mask-transform spec string is malformed; the message lists the valid choices."""


#: The named transforms a spec may use (`Compose` is written with `+`, not registered).
TRANSFORMS: Registry[type[MaskTransform]] = Registry("mask transform", TransformSpecError)

TransformType = TypeVar("TransformType", bound="type[MaskTransform]")


def register_transform(cls: TransformType) -> TransformType:
    """Class decorator: register `cls` under `cls.name` (a second `cls.name` raises
    `iamt.registry.DuplicateEntryError` instead of replacing the first)."""
    TRANSFORMS.add(cls.name, cls)
    return cls


class MaskTransform(ABC):
    """Base class: parsing, printing and validation live here; subclasses write the maths."""

    name: ClassVar[str]
    needs_ranking: ClassVar[bool] = False

    @abstractmethod
    def __call__(self, mask: Tensor, ranking: Tensor | None) -> Tensor:
        """mask (B, C, h, w) of one attribute, ranking (C,) channel indices, most important
        first -> transformed mask (B, C, h, w)."""

    def validate(self, num_channels: int) -> None:  # noqa: B027 (optional hook)
        """Check parameters that depend on the model, e.g. k ≤ number of channels."""

    def spec(self) -> str:
        parts = []
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if field.metadata.get("hide_default") and value == field.default:
                continue
            parts.append(f"{field.name}={_format_value(value)}")
        return self.name + (":" + ",".join(parts) if parts else "")

    def __str__(self) -> str:
        return self.spec()


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _top_k_scale(
    mask: Tensor, ranking: Tensor | None, k: int, inside: float, outside: float
) -> Tensor:
    """A (1, C, 1, 1) per-channel factor: `inside` for the top-k channels, `outside` elsewhere."""
    assert ranking is not None, "ranking is required; EmphasizedAttentionNet checks this"
    scale = torch.full((mask.shape[1],), outside, dtype=mask.dtype, device=mask.device)
    scale[ranking[:k].to(mask.device)] = inside
    return scale.view(1, -1, 1, 1)


def _check_k(k: int, num_channels: int, name: str) -> None:
    if k > num_channels:
        raise TransformSpecError(
            f"{name}: k={k} is larger than the number of feature channels ({num_channels})"
        )


@register_transform
@dataclasses.dataclass(frozen=True)
class Identity(MaskTransform):
    name: ClassVar[str] = "identity"

    def __call__(self, mask: Tensor, ranking: Tensor | None) -> Tensor:
        return mask


@register_transform
@dataclasses.dataclass(frozen=True)
class TopK(MaskTransform):
    name: ClassVar[str] = "topk"
    needs_ranking: ClassVar[bool] = True
    k: int = 8
    alpha: float = 2.0
    clip: bool = dataclasses.field(default=False, metadata={"hide_default": True})

    def __post_init__(self) -> None:
        if self.k < 1:
            raise TransformSpecError(f"topk: k must be ≥ 1, got {self.k}")
        if self.alpha <= 0:
            raise TransformSpecError(f"topk: alpha must be > 0, got {self.alpha}")

    def validate(self, num_channels: int) -> None:
        _check_k(self.k, num_channels, self.name)

    def __call__(self, mask: Tensor, ranking: Tensor | None) -> Tensor:
        emphasized = mask * _top_k_scale(mask, ranking, self.k, self.alpha, 1.0)
        return emphasized.clamp(0.0, 1.0) if self.clip else emphasized


@register_transform
@dataclasses.dataclass(frozen=True)
class Suppress(MaskTransform):
    name: ClassVar[str] = "suppress"
    needs_ranking: ClassVar[bool] = True
    k: int = 8
    beta: float = 0.5

    def __post_init__(self) -> None:
        if self.k < 1:
            raise TransformSpecError(f"suppress: k must be ≥ 1, got {self.k}")
        if not 0.0 <= self.beta < 1.0:
            raise TransformSpecError(f"suppress: beta must be in [0, 1), got {self.beta}")

    def validate(self, num_channels: int) -> None:
        _check_k(self.k, num_channels, self.name)

    def __call__(self, mask: Tensor, ranking: Tensor | None) -> Tensor:
        return mask * _top_k_scale(mask, ranking, self.k, 1.0, self.beta)


@register_transform
@dataclasses.dataclass(frozen=True)
class Power(MaskTransform):
    name: ClassVar[str] = "power"
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.gamma <= 0:
            raise TransformSpecError(f"power: gamma must be > 0, got {self.gamma}")

    def __call__(self, mask: Tensor, ranking: Tensor | None) -> Tensor:
        # The floor keeps d(M^γ)/dM finite at M = 0 when γ < 1.
        return mask.clamp_min(1e-6) ** self.gamma


@register_transform
@dataclasses.dataclass(frozen=True)
class Binarize(MaskTransform):
    name: ClassVar[str] = "binarize"
    tau: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.tau < 1.0:
            raise TransformSpecError(f"binarize: tau must be in (0, 1), got {self.tau}")

    def __call__(self, mask: Tensor, ranking: Tensor | None) -> Tensor:
        hard = (mask > self.tau).to(mask.dtype)
        return mask + (hard - mask).detach()  # forward: hard; backward: identity (STE)


@dataclasses.dataclass(frozen=True)
class Compose(MaskTransform):
    """T_n ∘ … ∘ T_1, written `t1+t2+…+tn`."""

    name: ClassVar[str] = "compose"
    steps: tuple[MaskTransform, ...] = ()

    @property
    def needs_ranking(self) -> bool:  # type: ignore[override]
        return any(step.needs_ranking for step in self.steps)

    def validate(self, num_channels: int) -> None:
        for step in self.steps:
            step.validate(num_channels)

    def __call__(self, mask: Tensor, ranking: Tensor | None) -> Tensor:
        for step in self.steps:
            mask = step(mask, ranking)
        return mask

    def spec(self) -> str:
        return "+".join(step.spec() for step in self.steps)


def parse_transform(spec: str) -> MaskTransform:
    """Parse `name:key=value,...[+name:...]`; the error lists the valid names and parameters."""
    if not isinstance(spec, str) or not spec.strip():
        raise TransformSpecError(f"empty mask-transform spec {spec!r}; {_valid_transforms()}")
    steps = [_parse_one(part.strip(), spec) for part in spec.split("+")]
    return steps[0] if len(steps) == 1 else Compose(tuple(steps))


def _parse_one(text: str, whole: str) -> MaskTransform:
    name, _, params_text = text.partition(":")
    name = name.strip()
    if name not in TRANSFORMS:  # the registry's own error lacks the spec and the parameters
        raise TransformSpecError(
            f"unknown mask transform {name!r} in {whole!r}; {_valid_transforms()}"
        )
    cls = TRANSFORMS.get(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in params_text.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise TransformSpecError(
                f"bad parameter {item!r} for {name!r} in {whole!r}; "
                f"valid parameters: {_describe_params(cls)}"
            )
        kwargs[key] = _convert(raw.strip(), fields[key].type, key, whole)
    return cls(**kwargs)


def _convert(raw: str, annotation: Any, key: str, whole: str) -> Any:
    kind = {"int": int, "float": float, "bool": bool}.get(str(annotation), annotation)
    try:
        if kind is bool:
            if raw.lower() not in {"true", "false"}:
                raise ValueError(raw)
            return raw.lower() == "true"
        if kind is int:
            return int(raw)
        return float(raw)
    except ValueError:
        raise TransformSpecError(
            f"parameter {key}={raw!r} in {whole!r} is not a valid {getattr(kind, '__name__', kind)}"
        ) from None


def _describe_params(cls: type[MaskTransform]) -> str:
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return ", ".join(f"{f.name} (default {_format_value(f.default)})" for f in fields) or "none"


def _valid_transforms() -> str:
    described = "; ".join(f"{name}: {_describe_params(cls)}" for name, cls in TRANSFORMS.items())
    return f"valid transforms (compose with '+'): {described}"
