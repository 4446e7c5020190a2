"""Built-in datasets (shapes, digits) and the split entry point."""

from __future__ import annotations

import pytest
import torch

from iamt.config import DataConfig
from iamt.data import DatasetError, Split, as_tensors, iterate_batches, load_split
from iamt.data.digits import make_digits
from iamt.data.shapes import SHAPES_ATTRIBUTES, make_shapes


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_contract_and_determinism(size: int) -> None:
    data = make_shapes(300, image_size=size, seed=7)
    assert data.images.shape == (300, 3, size, size)
    assert data.images.dtype == torch.float32
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
    assert data.labels.shape == (300, 4) and data.labels.dtype == torch.int64
    assert data.object_masks is not None and data.object_masks.shape == (300, 1, size, size)
    again = make_shapes(300, image_size=size, seed=7)
    assert torch.equal(data.images, again.images) and torch.equal(data.labels, again.labels)
    other = make_shapes(300, image_size=size, seed=8)
    assert not torch.equal(data.images, other.images)


def test_shapes_has_the_promised_attributes_and_every_class_occurs() -> None:
    names = {spec.name: spec.num_classes for spec in SHAPES_ATTRIBUTES}
    assert names["shape"] >= 4 and names["colour"] >= 4
    assert names["size"] >= 3 and names["background"] >= 2
    data = make_shapes(2000, seed=0)
    for a, spec in enumerate(data.attributes):
        counts = torch.bincount(data.labels[:, a], minlength=spec.num_classes)
        assert counts.min() > 2000 / spec.num_classes * 0.7  # roughly balanced


def test_shapes_object_mask_matches_the_drawn_object() -> None:
    data = make_shapes(400, seed=1)
    assert data.object_masks is not None
    area = data.object_masks.float().mean(dim=(1, 2, 3))
    size = data.labels[:, 2]
    # Bigger size class -> bigger object, for every shape.
    means = [float(area[size == s].mean()) for s in range(3)]
    assert means[0] < means[1] < means[2]
    # The object is drawn in its colour: the fill differs from the background texture.
    images, masks = data.images, data.object_masks.expand(-1, 3, -1, -1)
    red = data.labels[:, 1] == 0
    inside_red = images[red][masks[red]].view(-1)
    assert inside_red.numel() > 0
    assert float(images[red][:, 0][data.object_masks[red][:, 0]].mean()) > 0.7  # R channel


def test_shapes_refuses_unsupported_sizes() -> None:
    with pytest.raises(DatasetError, match=r"48 is not supported; valid: \[32, 64\]"):
        make_shapes(10, image_size=48)


def test_digits_contract_and_disjoint_pools() -> None:
    train = make_digits(500, split=Split.TRAIN, seed=0)
    test = make_digits(500, split=Split.TEST, seed=0)
    assert train.images.shape == (500, 3, 32, 32)
    assert [spec.name for spec in train.attributes] == ["digit", "ink", "background"]
    assert train.labels[:, 0].unique().numel() == 10
    assert float(train.images.min()) >= 0.0 and float(train.images.max()) <= 1.0
    # No handwritten digit is shared: the grey-level patterns of train and test never coincide.
    train_shapes = {tuple(m.flatten().tolist()) for m in train.object_masks[:, 0, ::4, ::4]}  # type: ignore[index]
    test_shapes = {tuple(m.flatten().tolist()) for m in test.object_masks[:, 0, ::4, ::4]}  # type: ignore[index]
    assert len(train_shapes & test_shapes) < 0.05 * len(test_shapes)
    assert torch.equal(train.images, make_digits(500, split=Split.TRAIN, seed=0).images)


def test_load_split_gives_independent_splits_of_the_configured_sizes() -> None:
    config = DataConfig(n_train=100, n_val=20, n_test=30)
    train = load_split(config, Split.TRAIN, seed=0)
    val = load_split(config, Split.VAL, seed=0)
    test = load_split(config, Split.TEST, seed=0)
    assert (len(train), len(val), len(test)) == (100, 20, 30)
    assert not torch.equal(as_tensors(val)[0][:20], as_tensors(test)[0][:20])


def test_attribute_subset_and_unknown_attribute() -> None:
    config = DataConfig(n_train=10, attributes=["colour", "shape"])
    data = load_split(config, Split.TRAIN, seed=0)
    assert [spec.name for spec in data.attributes] == ["colour", "shape"]
    full = load_split(DataConfig(n_train=10), Split.TRAIN, seed=0)
    assert torch.equal(as_tensors(data)[1], as_tensors(full)[1][:, [1, 0]])
    with pytest.raises(DatasetError, match=r"\['hue'\].*valid are: shape, colour, size"):
        load_split(DataConfig(attributes=["hue"]), Split.TRAIN, seed=0)


def test_iterate_batches_covers_every_sample_once_in_seeded_order() -> None:
    data = make_shapes(70, seed=0)
    first = [
        labels
        for _, labels in iterate_batches(
            data, 32, shuffle=True, generator=torch.Generator().manual_seed(1)
        )
    ]
    second = [
        labels
        for _, labels in iterate_batches(
            data, 32, shuffle=True, generator=torch.Generator().manual_seed(1)
        )
    ]
    assert [len(b) for b in first] == [32, 32, 6]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert torch.cat(first).sum(0).tolist() == data.labels.sum(0).tolist()
