"""`shapes`: a procedural multi-attribute dataset, deterministic given its seed.

Each image shows one object on a textured background. Four attributes vary independently:

| attribute  | classes                              | what changes                       |
|------------|--------------------------------------|------------------------------------|
| shape      | circle, square, triangle, cross      | the object's outline               |
| colour     | red, green, blue, yellow             | the object's fill (± jitter)       |
| size       | small, medium, large                 | radius 0.16 / 0.24 / 0.32 × side   |
| background | plain, stripes                       | texture *outside* the object       |

The object's pixel mask is returned too, so we can check that shape/colour/size attention
falls on the object and background attention falls outside it.
Everything is drawn with numpy arrays in one vectorized pass (no per-image Python loop).
"""

from __future__ import annotations

import numpy as np
import torch

from iamt.data.base import AttributeSpec, DatasetError, TensorAttributeDataset

SHAPES_ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec("shape", ("circle", "square", "triangle", "cross")),
    AttributeSpec("colour", ("red", "green", "blue", "yellow")),
    AttributeSpec("size", ("small", "medium", "large")),
    AttributeSpec("background", ("plain", "stripes")),
)
SUPPORTED_SIZES = (32, 64)

_COLOURS = np.array(
    [[0.90, 0.15, 0.15], [0.15, 0.80, 0.20], [0.20, 0.30, 0.95], [0.95, 0.85, 0.10]],
    dtype=np.float32,
)
_RADIUS_FRACTION = np.array([0.16, 0.24, 0.32], dtype=np.float32)


def _object_masks(
    shape: np.ndarray, radius: np.ndarray, cx: np.ndarray, cy: np.ndarray, side: int
) -> np.ndarray:
    """Boolean masks (N, H, W) of each object, chosen per sample by its shape label."""
    grid = np.arange(side, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - cx[:, None, None]  # (N, 1, W)
    dy = grid[None, :, None] - cy[:, None, None]  # (N, H, 1)
    r = radius[:, None, None]
    adx, ady = np.abs(dx), np.abs(dy)
    circle = dx**2 + dy**2 <= r**2
    square = np.maximum(adx, ady) <= 0.85 * r
    # Apex at the top (y grows downwards), base at 0.7 r below the centre.
    triangle = (dy >= -r) & (dy <= 0.7 * r) & (adx <= 0.6 * (dy + r))
    arm = 0.3 * r
    cross = ((adx <= arm) & (ady <= r)) | ((ady <= arm) & (adx <= r))
    candidates = np.stack(np.broadcast_arrays(circle, square, triangle, cross))  # (4, N, H, W)
    return np.take_along_axis(candidates, shape[None, :, None, None], axis=0)[0]


def make_shapes(count: int, *, image_size: int = 32, seed: int = 0) -> TensorAttributeDataset:
    """Draw `count` images; the same (count, image_size, seed) always gives the same tensors."""
    if image_size not in SUPPORTED_SIZES:
        raise DatasetError(
            f"shapes image_size {image_size} is not supported; valid: {list(SUPPORTED_SIZES)}"
        )
    if count <= 0:
        raise DatasetError(f"shapes count must be positive, got {count}")
    rng = np.random.default_rng(seed)
    side = image_size
    labels = np.stack(
        [rng.integers(0, spec.num_classes, size=count) for spec in SHAPES_ATTRIBUTES], axis=1
    )
    shape, colour, size, background = labels.T

    radius = _RADIUS_FRACTION[size] * side * rng.uniform(0.95, 1.05, size=count)
    # Keep the whole object inside the frame.
    cx = rng.uniform(radius + 1, side - radius - 1).astype(np.float32)
    cy = rng.uniform(radius + 1, side - radius - 1).astype(np.float32)
    masks = _object_masks(shape, radius.astype(np.float32), cx, cy, side)  # (N, H, W)

    # Background: a grey level, plus stripes of random period/orientation for class 1.
    grey = rng.uniform(0.3, 0.6, size=count).astype(np.float32)
    period = rng.uniform(3.0, 6.0, size=count).astype(np.float32)
    angle = rng.uniform(0.0, np.pi, size=count).astype(np.float32)
    phase = rng.uniform(0.0, 2 * np.pi, size=count).astype(np.float32)
    grid = np.arange(side, dtype=np.float32)
    along = (
        np.cos(angle)[:, None, None] * grid[None, None, :]
        + np.sin(angle)[:, None, None] * grid[None, :, None]
    )  # (N, H, W)
    stripes = 0.18 * np.sign(
        np.sin(2 * np.pi * along / period[:, None, None] + phase[:, None, None])
    )
    texture = grey[:, None, None] + np.where(background[:, None, None] == 1, stripes, 0.0)
    canvas = np.repeat(texture[:, None], 3, axis=1)  # (N, 3, H, W)

    fill = _COLOURS[colour] + rng.uniform(-0.08, 0.08, size=(count, 3)).astype(np.float32)
    canvas = np.where(masks[:, None], fill[:, :, None, None], canvas)
    canvas += rng.normal(0.0, 0.02, size=canvas.shape).astype(np.float32)  # sensor noise
    images = np.clip(canvas, 0.0, 1.0).astype(np.float32)

    return TensorAttributeDataset(
        torch.from_numpy(images),
        torch.from_numpy(labels.astype(np.int64)),
        SHAPES_ATTRIBUTES,
        object_masks=torch.from_numpy(masks[:, None]),
    )
