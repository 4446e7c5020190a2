"""The dataset contract shared by every loader.

A multi-attribute dataset yields `(image, labels)` pairs:

- `image`: float32 tensor in [0, 1], shape (3, H, W). Normalization is *not* applied here;
  it lives inside the model so that attacks can use the natural (0, 1) bounds.
- `labels`: int64 tensor of shape (A,), one class index per attribute, in the order of
  `dataset.attributes`.

Built-in datasets are small enough to live in memory (`TensorAttributeDataset`); the real
loaders read a user's local copy lazily and only need to satisfy the `AttributeDataset`
protocol. `as_tensors` materializes either kind into (N, 3, H, W) / (N, A) tensors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

# Defined in the torch-free vocabulary, so the config reads it without torch; re-exported.
from iamt.vocabulary import DatasetName as DatasetName


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class DatasetError(ValueError):
    """A user's dataset (path, file, label or image) is not usable; the message says why."""


@dataclass(frozen=True)
class AttributeSpec:
    """One recognised attribute, e.g. `AttributeSpec("colour", ("red", "green", "blue"))`."""

    name: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise DatasetError(
                f"attribute {self.name!r} needs at least 2 classes, got {list(self.classes)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@runtime_checkable
class AttributeDataset(Protocol):
    """What the trainer, importance and the robustness jobs need from a dataset."""

    attributes: tuple[AttributeSpec, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]: ...


class TensorAttributeDataset(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """An in-memory dataset: images (N, 3, H, W) float in [0, 1], labels (N, A) int64.

    `object_masks` (N, 1, H, W) bool is optional: built-in datasets know where the object is,
    which lets us check where the attention falls (the localisation ratio).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        attributes: Sequence[AttributeSpec],
        object_masks: Tensor | None = None,
    ) -> None:
        attributes = tuple(attributes)
        if images.ndim != 4 or images.shape[1] != 3:
            raise DatasetError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0], len(attributes)):
            raise DatasetError(
                f"labels must be (N, A) = ({images.shape[0]}, {len(attributes)}), "
                f"got {tuple(labels.shape)}"
            )
        check_labels_in_range(labels, attributes)
        if object_masks is not None and object_masks.shape != (
            images.shape[0],
            1,
            *images.shape[2:],
        ):
            raise DatasetError(
                f"object_masks must be (N, 1, H, W), got {tuple(object_masks.shape)}"
            )
        self.images = images.float().contiguous()
        self.labels = labels.long().contiguous()
        self.attributes = attributes
        self.object_masks = object_masks

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def select_attributes(self, names: Sequence[str]) -> TensorAttributeDataset:
        """Keep only the named attributes, in the given order."""
        valid = [spec.name for spec in self.attributes]
        unknown = [name for name in names if name not in valid]
        if unknown or not names:
            raise DatasetError(
                f"unknown attribute(s) {unknown or list(names)}; valid are: {', '.join(valid)}"
            )
        columns = [valid.index(name) for name in names]
        return TensorAttributeDataset(
            self.images,
            self.labels[:, columns],
            [self.attributes[c] for c in columns],
            self.object_masks,
        )

    def subset(self, count: int) -> TensorAttributeDataset:
        """The first `count` samples (built-in datasets are already shuffled)."""
        masks = None if self.object_masks is None else self.object_masks[:count]
        return TensorAttributeDataset(
            self.images[:count], self.labels[:count], self.attributes, masks
        )


def check_labels_in_range(labels: Tensor, attributes: Sequence[AttributeSpec]) -> None:
    """Raise a DatasetError naming the first attribute whose label is outside its classes."""
    for column, spec in enumerate(attributes):
        values = labels[:, column]
        bad = (values < 0) | (values >= spec.num_classes)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise DatasetError(
                f"label {int(values[first])} of attribute {spec.name!r} at index {first} is out "
                f"of range: valid are 0..{spec.num_classes - 1} ({', '.join(spec.classes)})"
            )


def as_tensors(dataset: AttributeDataset, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Materialize the first `limit` samples as (N, 3, H, W) images and (N, A) labels."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if isinstance(dataset, TensorAttributeDataset):
        return dataset.images[:count], dataset.labels[:count]
    pairs = [dataset[i] for i in range(count)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def iterate_batches(
    dataset: AttributeDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images, labels) batches; slices memory directly for in-memory datasets.

    Slicing is an order of magnitude faster than a DataLoader's per-item collation for the
    small built-in datasets, and just as deterministic given the same generator.

    `shard=(rank, world)`: data-parallel training. Every rank draws the same order and keeps
    its contiguous slice of each global batch, so `world` ranks averaging their gradients
    take the same steps as one process with the whole batch. Only that slice is read. A final
    batch smaller than `world` is dropped on every rank alike (no rank may see an empty one).
    """
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard rank {rank} is outside 0..{world - 1}")
    count = len(dataset)
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    batches = [
        index.tensor_split(world)[rank]  # (≈ batch_size / world,)
        for index in order.split(batch_size)
        if len(index) >= world
    ]
    if isinstance(dataset, TensorAttributeDataset):
        for index in batches:
            yield dataset.images[index], dataset.labels[index]
        return
    loader: torch.utils.data.DataLoader[tuple[Tensor, Tensor]] = torch.utils.data.DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_sampler=[index.tolist() for index in batches],
        num_workers=num_workers,
    )
    yield from loader


def num_batches(dataset: AttributeDataset, batch_size: int) -> int:
    return (len(dataset) + batch_size - 1) // batch_size
