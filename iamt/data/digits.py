"""`digits`: scikit-learn's bundled 8×8 handwritten digits, upscaled to 32 px and recoloured.

Three attributes: the digit (10 classes), the ink colour (4) and the background colour (3).
scikit-learn ships the 1,797 images inside the package, so nothing is downloaded.

The digit images are split into disjoint pools (train 60 %, val 20 %, test 20 %) by a fixed
permutation, so no handwritten digit is shared between splits. Each split then draws its
samples from its own pool with replacement and a fresh random colouring, which lets a split be
larger than its pool without leaking images across splits.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from iamt.data.base import AttributeSpec, DatasetError, Split, TensorAttributeDataset

DIGITS_ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec("digit", tuple(str(d) for d in range(10))),
    AttributeSpec("ink", ("red", "green", "blue", "yellow")),
    AttributeSpec("background", ("dark", "light", "teal")),
)
_INK = np.array(
    [[0.95, 0.2, 0.2], [0.2, 0.85, 0.25], [0.25, 0.35, 1.0], [1.0, 0.9, 0.15]], dtype=np.float32
)
_BACKGROUND = np.array([[0.08, 0.08, 0.12], [0.88, 0.88, 0.84], [0.1, 0.45, 0.45]], np.float32)
_POOL_FRACTIONS = {Split.TRAIN: (0.0, 0.6), Split.VAL: (0.6, 0.8), Split.TEST: (0.8, 1.0)}
_POOL_SEED = 20_190_522  # fixed: the pools must not move when the user changes the run seed


def make_digits(
    count: int, *, split: Split, image_size: int = 32, seed: int = 0
) -> TensorAttributeDataset:
    if count <= 0:
        raise DatasetError(f"digits count must be positive, got {count}")
    bunch = load_digits()
    raw = bunch.images.astype(np.float32) / 16.0  # (1797, 8, 8) ink intensity in [0, 1]
    order = np.random.default_rng(_POOL_SEED).permutation(len(raw))
    low, high = _POOL_FRACTIONS[split]
    pool = order[int(low * len(order)) : int(high * len(order))]

    rng = np.random.default_rng([seed, list(Split).index(split)])
    chosen = rng.choice(pool, size=count, replace=True)
    ink = rng.integers(0, len(_INK), size=count)
    background = rng.integers(0, len(_BACKGROUND), size=count)

    intensity = F.interpolate(
        torch.from_numpy(raw[chosen])[:, None],
        size=(image_size, image_size),
        mode="bilinear",
        align_corners=False,
    ).clamp(0.0, 1.0)  # (N, 1, S, S)
    ink_rgb = torch.from_numpy(_INK[ink])[:, :, None, None]  # (N, 3, 1, 1)
    bg_rgb = torch.from_numpy(_BACKGROUND[background])[:, :, None, None]
    images = intensity * ink_rgb + (1 - intensity) * bg_rgb  # (N, 3, S, S)

    labels = np.stack([bunch.target[chosen], ink, background], axis=1).astype(np.int64)
    return TensorAttributeDataset(
        images.float(),
        torch.from_numpy(labels),
        DIGITS_ATTRIBUTES,
        object_masks=intensity > 0.5,
    )
