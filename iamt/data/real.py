"""Loaders for a user's local copy of CelebA, CIFAR-10 or an image folder with a CSV of labels.

Nothing is ever downloaded (`download=False`): the loaders read what the user already has, check
it before any work starts and raise a `DatasetError` that names the missing path or bad value.
Images are decoded lazily in `__getitem__`, resized to `image_size` x `image_size` (antialiased)
and returned as float32 (3, H, W) in [0, 1]; labels are int64 (A,), as `base.py` specifies.

No file is ever unpickled (a project rule, §5 of the design): CIFAR-10 is read from its official
binary distribution, not the pickled "python version" that torchvision's `CIFAR10` expects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets import CIFAR10, CelebA, VisionDataset
from torchvision.transforms import v2

from iamt.data.base import (
    AttributeDataset,
    AttributeSpec,
    DatasetError,
    Split,
    check_labels_in_range,
)

# ----------------------------------------------------------------------------- shared helpers


def _to_rgb(image: Image.Image) -> Image.Image:
    # Module level (not a lambda) so that datasets stay picklable for DataLoader workers and Ray.
    return image if image.mode == "RGB" else image.convert("RGB")


def _image_transform(image_size: int) -> Callable[[Image.Image], Tensor]:
    """PIL image -> float32 (3, image_size, image_size) in [0, 1]."""
    if image_size < 1:
        raise DatasetError(f"image_size must be a positive number of pixels, got {image_size}")
    return v2.Compose(
        [
            _to_rgb,
            v2.PILToTensor(),
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be None or a count >= 0, got {limit}")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    return path


def _seeded_split(
    count: int, split: Split, *, seed: int, val_fraction: float, test_fraction: float
) -> np.ndarray:
    """Indices of `split` in a seeded permutation of `count` items: test, then val, then train.

    The three parts are disjoint and cover everything; the same seed always gives the same parts.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise DatasetError(f"{name} must be in [0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(
            f"val_fraction + test_fraction must be < 1 to leave a training set, got "
            f"{val_fraction} + {test_fraction}"
        )
    order = np.random.default_rng(seed).permutation(count)
    n_test, n_val = round(test_fraction * count), round(val_fraction * count)
    parts = {
        Split.TEST: order[:n_test],
        Split.VAL: order[n_test : n_test + n_val],
        Split.TRAIN: order[n_test + n_val :],
    }
    return parts[split]


class _TorchvisionView(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """Adapts a torchvision dataset to `AttributeDataset`: named attributes, int64 label vector,
    the chosen label columns only, and the first `limit` samples."""

    def __init__(
        self,
        base: VisionDataset,
        attributes: Sequence[AttributeSpec],
        columns: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> None:
        self.base = base
        self.attributes = tuple(attributes)
        self._columns = None if columns is None else list(columns)
        self._length = len(base) if limit is None else min(limit, len(base))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} samples")
        image, target = self.base[index % self._length]
        labels = torch.as_tensor(target, dtype=torch.int64).reshape(-1)
        if self._columns is not None:
            labels = labels[self._columns]
        return image, labels

    def __repr__(self) -> str:
        names = ", ".join(spec.name for spec in self.attributes)
        return f"{type(self.base).__name__}(n={self._length}, attributes=[{names}])"


# ----------------------------------------------------------------------------- CelebA

_CELEBA_SPLITS = {Split.TRAIN: "train", Split.VAL: "valid", Split.TEST: "test"}


class _LocalCelebA(CelebA):
    """torchvision's CelebA with a presence check in place of its md5 check.

    torchvision compares the md5 of every list file with the Google Drive originals; a user's
    local copy may be re-packed (other line endings, a mirror's re-export), so we check that the
    files exist and let parsing catch real damage.
    """

    def _check_integrity(self) -> bool:
        return all(path.exists() for path in _celeba_required(Path(self.root)))


def _celeba_required(root: Path) -> list[Path]:
    folder = root / CelebA.base_folder
    lists = [name for _, _, name in CelebA.file_list if name.endswith(".txt")]
    return [folder / "img_align_celeba", *(folder / name for name in lists)]


def load_celeba(
    root: Path,
    *,
    split: Split,
    image_size: int,
    attributes: Sequence[str] | None = None,
    limit: int | None = None,
) -> AttributeDataset:
    """CelebA's aligned faces with its binary attributes (default all 40), each ("no", "yes").

    Expects the official layout under `root/celeba/`: `img_align_celeba/*.jpg` and the list files
    (`list_attr_celeba.txt`, `list_eval_partition.txt`, `identity_CelebA.txt`,
    `list_bbox_celeba.txt`, `list_landmarks_align_celeba.txt`). The split is CelebA's own.
    """
    root = _require(Path(root), "CelebA root folder")
    for path in _celeba_required(root):
        _require(path, "CelebA file")
    _check_limit(limit)
    transform = _image_transform(image_size)
    # Read the attribute names (second line) before parsing ~200k rows, so bad names fail fast.
    with (root / CelebA.base_folder / "list_attr_celeba.txt").open() as file:
        file.readline()
        names = file.readline().split()
    chosen = list(names) if attributes is None else list(attributes)
    unknown = [name for name in chosen if name not in names]
    if unknown or not chosen:
        raise DatasetError(
            f"unknown CelebA attribute(s) {unknown or chosen}; valid are: {', '.join(names)}"
        )
    base = _LocalCelebA(
        str(root), split=_CELEBA_SPLITS[Split(split)], target_type="attr", transform=transform
    )
    specs = [AttributeSpec(name, ("no", "yes")) for name in chosen]
    return _TorchvisionView(base, specs, [names.index(name) for name in chosen], limit)


# ----------------------------------------------------------------------------- CIFAR-10

_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then the 32x32 image as R, G, B planes
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST_FILES = ("test_batch.bin",)


def _read_cifar_bin(path: Path) -> np.ndarray:
    """(N, 3073) uint8 records of one binary batch."""
    raw = np.fromfile(_require(path, "CIFAR-10 batch file"), dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise DatasetError(
            f"{path} holds {raw.size} bytes, not a whole number of {_CIFAR_RECORD}-byte records "
            f"(1 label byte + 3072 pixel bytes): is it the CIFAR-10 binary version?"
        )
    return raw.reshape(-1, _CIFAR_RECORD)


class _BinaryCIFAR10(CIFAR10):
    """torchvision's CIFAR10 filled from the official binary batches instead of pickles.

    Only `__init__` is replaced (the parent's unpickles `cifar-10-batches-py`); `data`, `targets`
    and `classes` hold what the parent would, so torchvision's `__getitem__` and transform run.
    """

    base_folder = "cifar-10-batches-bin"

    def __init__(
        self,
        root: Path,
        *,
        split: Split,
        seed: int,
        val_fraction: float,
        transform: Callable[[Image.Image], Any],
    ) -> None:
        VisionDataset.__init__(self, str(root), transform=transform)
        folder = root / self.base_folder
        self.train = split is not Split.TEST
        files = _CIFAR_TRAIN_FILES if self.train else _CIFAR_TEST_FILES
        records = np.concatenate([_read_cifar_bin(folder / name) for name in files])
        if self.train:  # val is a seeded part of the training batches; test is test_batch.bin
            part = _seeded_split(
                len(records), split, seed=seed, val_fraction=val_fraction, test_fraction=0.0
            )
            records = records[part]
        meta = _require(folder / "batches.meta.txt", "CIFAR-10 class-name file")
        self.classes = [line.strip() for line in meta.read_text().splitlines() if line.strip()]
        if len(self.classes) != 10:
            raise DatasetError(f"{meta} must list 10 class names, got {self.classes}")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets: list[int] = records[:, 0].astype(np.int64).tolist()
        self.data = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW -> HWC


def load_cifar10(
    root: Path,
    *,
    split: Split,
    image_size: int,
    seed: int,
    val_fraction: float = 0.1,
    limit: int | None = None,
) -> AttributeDataset:
    """CIFAR-10 with one attribute, "class", from the binary version under `root`.

    Expects `root/cifar-10-batches-bin/` (data_batch_1..5.bin, test_batch.bin, batches.meta.txt):
    the "CIFAR-10 binary version (suitable for C programs)" from
    https://www.cs.toronto.edu/~kriz/cifar.html. Val is a seeded `val_fraction` of the training
    batches, disjoint from train; test is `test_batch.bin`.
    """
    root = _require(Path(root), "CIFAR-10 root folder")
    if not (root / _BinaryCIFAR10.base_folder).is_dir():
        if (root / CIFAR10.base_folder).is_dir():
            raise DatasetError(
                f"{root / CIFAR10.base_folder} is the pickled 'python version' of CIFAR-10, and "
                f"we refuse to unpickle files (unpickling can run arbitrary code). Download the "
                f"'CIFAR-10 binary version (suitable for C programs)' from "
                f"https://www.cs.toronto.edu/~kriz/cifar.html and extract it into {root}, giving "
                f"{root / _BinaryCIFAR10.base_folder}"
            )
        raise DatasetError(f"CIFAR-10 binary folder not found: {root / _BinaryCIFAR10.base_folder}")
    _check_limit(limit)
    base = _BinaryCIFAR10(
        root,
        split=Split(split),
        seed=seed,
        val_fraction=val_fraction,
        transform=_image_transform(image_size),
    )
    spec = AttributeSpec("class", tuple(base.classes))
    check_labels_in_range(torch.tensor(base.targets).reshape(-1, 1), [spec])
    return _TorchvisionView(base, [spec], limit=limit)


# ----------------------------------------------------------------------------- image folder

_RESERVED_COLUMNS = ("filename", "split")


def _class_names(values: pd.Series) -> tuple[str, ...]:
    # Integer labels sort numerically ("2" before "10"), so class index == label for 0..K-1.
    names = sorted(set(values))
    with contextlib.suppress(ValueError):  # not all integers: keep the plain string order
        names.sort(key=int)
    return tuple(names)


@contextlib.contextmanager
def _open_rgb(path: Path, draft_size: int | None = None) -> Iterator[Image.Image]:
    """The decoded RGB image at `path`; a `DatasetError` naming the file if it is not one.
    `draft_size` lets a JPEG decode at a reduced scale (1/2 to 1/8) no smaller than it."""
    try:
        with Image.open(path) as image:  # reads the header only
            if image.mode != "RGB":
                raise DatasetError(
                    f"image {path} has mode {image.mode!r}; only RGB images are accepted "
                    f"(convert it first, e.g. with PIL's image.convert('RGB'))"
                )
            if draft_size is not None:
                image.draft("RGB", (draft_size, draft_size))
            image.load()  # decode now, so a truncated file fails here with its name
            yield image
    except (OSError, SyntaxError) as error:  # PIL reports broken files with either
        raise DatasetError(f"cannot read image {path}: {error}") from error


class FolderAttributeDataset(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """Images listed in `attributes.csv`, decoded on access; see `load_folder`."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Tensor,
        attributes: Sequence[AttributeSpec],
        image_size: int,
    ) -> None:
        self.files = list(files)
        self.labels = labels
        self.attributes = tuple(attributes)
        self._transform = _image_transform(image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        with _open_rgb(self.files[index]) as image:
            return self._transform(image), self.labels[index]

    def check_images(self, image_size: int) -> None:
        """Decode every image once (JPEGs at reduced scale), so that an unreadable, truncated
        or non-RGB file is refused, by name, before any work starts rather than mid-training."""
        for path in self.files:
            with _open_rgb(path, draft_size=image_size):
                pass

    def __repr__(self) -> str:
        names = ", ".join(spec.name for spec in self.attributes)
        return f"FolderAttributeDataset(n={len(self)}, attributes=[{names}])"


def load_folder(
    root: Path,
    *,
    split: Split,
    image_size: int,
    seed: int,
    attributes: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    limit: int | None = None,
) -> AttributeDataset:
    """Your own images, labelled by `root/attributes.csv`.

    The CSV has a `filename` column (paths relative to `root`), one column per attribute (any
    string or integer values; an attribute's classes are its sorted unique values, integers in
    numeric order) and optionally a `split` column (train/val/test). Without `split`, a seeded
    permutation assigns `test_fraction` to test, `val_fraction` to val and the rest to train.
    Classes are taken over the whole CSV, so every split uses the same label indices.

    Images must be RGB (other modes are refused, naming the file); they may differ in size and
    are all resized to `image_size` x `image_size` (antialiased, aspect ratio not kept). The CSV
    is checked here, and every image of the split is decoded once (JPEGs at reduced scale) so a
    broken or non-RGB file is refused by name before any work; training decodes on access.
    """
    root = _require(Path(root), "image folder")
    csv_path = _require(root / "attributes.csv", "label file")
    _check_limit(limit)
    frame, chosen = _read_label_file(csv_path, attributes)
    files = [root / name for name in frame["filename"]]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} image(s) listed in {csv_path} not found, e.g. {missing[:3]}"
        )
    specs = [AttributeSpec(name, _class_names(frame[name])) for name in chosen]
    labels = torch.tensor(
        np.stack(
            [frame[spec.name].map({c: i for i, c in enumerate(spec.classes)}) for spec in specs],
            axis=1,
        ).astype(np.int64)
    )
    part = _split_rows(frame, csv_path, Split(split), seed, val_fraction, test_fraction)[:limit]
    dataset = FolderAttributeDataset(
        [files[i] for i in part], labels[torch.as_tensor(part, dtype=torch.long)], specs, image_size
    )
    dataset.check_images(image_size)
    return dataset


def _read_label_file(
    csv_path: Path, attributes: Sequence[str] | None
) -> tuple[pd.DataFrame, list[str]]:
    """attributes.csv, checked: a filename column, the chosen attribute columns, no empty
    cells in them. Returns the table and the attribute columns to use."""
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    frame.columns = [str(column).strip() for column in frame.columns]
    candidates = [column for column in frame.columns if column not in _RESERVED_COLUMNS]
    if "filename" not in frame.columns:
        raise DatasetError(
            f"{csv_path} needs a 'filename' column; its columns are: {', '.join(frame.columns)}"
        )
    chosen = candidates if attributes is None else list(attributes)
    unknown = [name for name in chosen if name not in candidates]
    if unknown or not chosen:
        raise DatasetError(
            f"attribute column(s) {unknown or chosen} not in {csv_path}; valid attribute columns "
            f"are: {', '.join(candidates) or '(none)'}"
        )
    for column in ["filename", *chosen]:
        empty = frame.index[frame[column].str.strip() == ""]
        if len(empty):
            raise DatasetError(f"{csv_path}: empty {column!r} in data row {int(empty[0]) + 1}")
    return frame, chosen


def _split_rows(
    frame: pd.DataFrame,
    csv_path: Path,
    split: Split,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> np.ndarray:
    """The row indices of `split`: the `split` column where there is one, else a seeded
    permutation."""
    if "split" not in frame.columns:
        return _seeded_split(
            len(frame), split, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
        )
    given = frame["split"].str.strip().str.lower()
    bad = sorted(set(given) - {s.value for s in Split})
    if bad:
        raise DatasetError(
            f"{csv_path}: unknown split value(s) {bad}; valid are: "
            f"{', '.join(s.value for s in Split)}"
        )
    return np.flatnonzero(given.to_numpy() == split.value)
