"""Mask transforms: spec round-trips (parametrized over the registry), maths and errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from iamt.transforms import (
    TRANSFORMS,
    Binarize,
    Compose,
    Power,
    Suppress,
    TopK,
    TransformSpecError,
    parse_transform,
)

RANKING = torch.tensor([3, 0, 5, 1, 2, 4])  # channel 3 most important, then 0, ...


def _mask() -> torch.Tensor:
    return torch.rand(2, 6, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_every_registered_transform_round_trips_and_keeps_shape(name: str) -> None:
    transform = TRANSFORMS.get(name)()  # defaults must be valid
    parsed = parse_transform(transform.spec())
    assert parsed == transform
    assert parse_transform(parsed.spec()).spec() == transform.spec()
    mask = _mask()
    out = transform(mask, RANKING)
    assert out.shape == mask.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_every_registered_transform_lets_gradients_through(name: str) -> None:
    mask = _mask().requires_grad_(True)
    TRANSFORMS.get(name)()(mask, RANKING).sum().backward()
    assert mask.grad is not None
    assert torch.isfinite(mask.grad).all()
    assert mask.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("identity", "identity"),
        ("topk:k=8,alpha=2", "topk:k=8,alpha=2"),
        ("topk: k = 3 , alpha = 1.5 ", "topk:k=3,alpha=1.5"),
        ("topk:k=8,alpha=2,clip=true", "topk:k=8,alpha=2,clip=true"),
        ("topk:k=8,alpha=2,clip=false", "topk:k=8,alpha=2"),
        ("suppress:k=4,beta=0", "suppress:k=4,beta=0"),
        ("power:gamma=0.5", "power:gamma=0.5"),
        ("binarize:tau=0.3", "binarize:tau=0.3"),
        ("topk:k=2,alpha=3+power:gamma=2", "topk:k=2,alpha=3+power:gamma=2"),
    ],
)
def test_valid_specs_print_canonically(spec: str, expected: str) -> None:
    assert parse_transform(spec).spec() == expected


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("", ["empty", "valid transforms", "topk"]),
        ("topp:k=8", ["'topp'", "valid transforms", "topk", "suppress", "power", "binarize"]),
        ("topk:k=8,alpah=2", ["'alpah=2'", "valid parameters", "alpha"]),
        ("topk:k", ["'k'", "valid parameters"]),
        ("topk:k=eight", ["k='eight'", "int"]),
        ("topk:k=8,clip=maybe", ["clip='maybe'", "bool"]),
        ("topk:k=0", ["k must be ≥ 1", "0"]),
        ("topk:k=8,alpha=0", ["alpha must be > 0"]),
        ("topk:k=8,alpha=-1", ["alpha must be > 0", "-1"]),
        ("suppress:k=8,beta=1", ["beta must be in [0, 1)", "1"]),
        ("power:gamma=0", ["gamma must be > 0"]),
        ("binarize:tau=1.5", ["tau must be in (0, 1)", "1.5"]),
        ("topk:k=8+nope", ["'nope'", "valid transforms"]),
    ],
)
def test_invalid_specs_name_the_bad_part_and_the_choices(spec: str, fragments: list[str]) -> None:
    with pytest.raises(TransformSpecError) as caught:
        parse_transform(spec)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_k_larger_than_the_channels_is_refused() -> None:
    with pytest.raises(TransformSpecError, match=r"k=65 is larger than .* \(64\)"):
        parse_transform("topk:k=65,alpha=2").validate(64)
    with pytest.raises(TransformSpecError, match="k=9"):
        parse_transform("power:gamma=2+suppress:k=9,beta=0.5").validate(8)


def test_topk_scales_exactly_the_top_channels() -> None:
    mask = _mask()
    out = TopK(k=2, alpha=3.0)(mask, RANKING)
    top = RANKING[:2]
    rest = RANKING[2:]
    torch.testing.assert_close(out[:, top], 3.0 * mask[:, top])
    torch.testing.assert_close(out[:, rest], mask[:, rest])
    clipped = TopK(k=2, alpha=3.0, clip=True)(mask, RANKING)
    assert clipped.max() <= 1.0
    assert out.max() > 1.0  # the unclipped one really exceeds the mask range


def test_suppress_scales_the_other_channels() -> None:
    mask = _mask()
    out = Suppress(k=2, beta=0.25)(mask, RANKING)
    torch.testing.assert_close(out[:, RANKING[:2]], mask[:, RANKING[:2]])
    torch.testing.assert_close(out[:, RANKING[2:]], 0.25 * mask[:, RANKING[2:]])


def test_power_and_binarize_maths() -> None:
    mask = _mask()
    torch.testing.assert_close(Power(gamma=2.0)(mask, None), mask**2)
    hard = Binarize(tau=0.5)(mask, None)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard, (mask > 0.5).float())


def test_binarize_gradient_is_straight_through() -> None:
    mask = _mask().requires_grad_(True)
    Binarize(tau=0.5)(mask, None).sum().backward()
    assert mask.grad is not None
    torch.testing.assert_close(mask.grad, torch.ones_like(mask))


def test_composition_applies_left_to_right() -> None:
    mask = _mask()
    composed = parse_transform("topk:k=2,alpha=2+power:gamma=2")
    assert isinstance(composed, Compose)
    assert composed.needs_ranking
    expected = Power(gamma=2.0)(TopK(k=2, alpha=2.0)(mask, RANKING), RANKING)
    torch.testing.assert_close(composed(mask, RANKING), expected)


def test_transforms_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TopK().k = 3  # type: ignore[misc]
