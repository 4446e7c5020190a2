"""Datasets: built-in (`shapes`, `digits`) and real loaders over a local copy (`celeba`,
`cifar10`, `folder`). `load_split(config, split, seed)` is the one entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from iamt.data.base import (
    AttributeDataset,
    AttributeSpec,
    DatasetError,
    DatasetName,
    Split,
    TensorAttributeDataset,
    as_tensors,
    iterate_batches,
)

if TYPE_CHECKING:  # iamt.config imports iamt.data.base; avoid the cycle at run time
    from iamt.config import DataConfig

__all__ = [
    "AttributeDataset",
    "AttributeSpec",
    "DatasetError",
    "DatasetName",
    "Split",
    "TensorAttributeDataset",
    "as_tensors",
    "iterate_batches",
    "load_split",
    "split_size",
]


def split_size(config: DataConfig, split: Split) -> int:
    return {Split.TRAIN: config.n_train, Split.VAL: config.n_val, Split.TEST: config.n_test}[split]


def split_seed(seed: int, split: Split) -> int:
    """Independent, stable seeds per split, so train/val/test never share a draw."""
    return int(np.random.SeedSequence([seed, list(Split).index(split)]).generate_state(1)[0])


def load_split(config: DataConfig, split: Split, seed: int) -> AttributeDataset:
    """The `split` of the configured dataset; built-in ones are generated from `seed`.

    For real datasets `n_<split>` caps the number of samples read.
    """
    count = split_size(config, split)
    if config.name in (DatasetName.SHAPES, DatasetName.DIGITS):
        from iamt.data.digits import make_digits
        from iamt.data.shapes import make_shapes

        builtin = (
            make_shapes(count, image_size=config.image_size, seed=split_seed(seed, split))
            if config.name is DatasetName.SHAPES
            else make_digits(count, split=split, image_size=config.image_size, seed=seed)
        )
        return (
            builtin if config.attributes is None else builtin.select_attributes(config.attributes)
        )

    from iamt.data import real

    assert config.root is not None  # DataConfig's validator requires it for real datasets
    if config.name is DatasetName.CELEBA:
        return real.load_celeba(
            config.root,
            split=split,
            image_size=config.image_size,
            attributes=config.attributes,
            limit=count,
        )
    if config.name is DatasetName.CIFAR10:
        return real.load_cifar10(
            config.root,
            split=split,
            image_size=config.image_size,
            seed=seed,
            val_fraction=config.val_fraction,
            limit=count,
        )
    return real.load_folder(
        config.root,
        split=split,
        image_size=config.image_size,
        seed=seed,
        attributes=config.attributes,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        limit=count,
    )
