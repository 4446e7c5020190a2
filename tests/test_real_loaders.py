"""The real-data loaders on tiny fixtures written in each dataset's real on-disk format."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iamt.data.base import AttributeDataset, DatasetError, Split, iterate_batches
from iamt.data.real import load_celeba, load_cifar10, load_folder

# ----------------------------------------------------------------------------- CelebA fixture

# The 40 names in the order of the real list_attr_celeba.txt header.
CELEBA_NAMES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
CELEBA_PARTITION = [0, 0, 0, 0, 1, 1, 1, 2, 2]  # 4 train, 3 valid, 2 test, in file order


@pytest.fixture
def celeba_root(tmp_path: Path) -> tuple[Path, np.ndarray]:
    return write_celeba(tmp_path)


def write_celeba(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """root/celeba/ as the official archive unpacks: aligned JPEGs and the five list files."""
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    attrs = rng.choice([-1, 1], size=(len(CELEBA_PARTITION), 40))
    names = [f"{i + 1:06d}.jpg" for i in range(len(CELEBA_PARTITION))]
    for name in names:
        pixels = rng.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)  # 178x218 in the real one
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name, quality=90)
    count = f"{len(names)}\n"
    rows = [f"{n} " + " ".join(f"{v:>2d}" for v in attrs[i]) for i, n in enumerate(names)]
    # The real header line ends with a space; rows right-align the -1/1 values.
    (folder / "list_attr_celeba.txt").write_text(
        count + " ".join(CELEBA_NAMES) + " \n" + "\n".join(rows) + "\n"
    )
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, CELEBA_PARTITION, strict=True))
    )
    (folder / "identity_CelebA.txt").write_text(
        "".join(f"{n} {100 + i}\n" for i, n in enumerate(names))
    )
    (folder / "list_bbox_celeba.txt").write_text(
        count
        + "image_id x_1 y_1 width height\n"
        + "".join(f"{n}    95  71 226 313\n" for n in names)
    )
    (folder / "list_landmarks_align_celeba.txt").write_text(
        count
        + "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
        + "rightmouth_x rightmouth_y\n"
        + "".join(f"{n}   69  109  106  113   77  142   73  152  108  154\n" for n in names)
    )
    return tmp_path, (attrs + 1) // 2


def _check_sample(dataset: AttributeDataset, index: int, size: int) -> torch.Tensor:
    image, labels = dataset[index]
    assert image.dtype == torch.float32 and image.shape == (3, size, size)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert labels.dtype == torch.int64 and labels.shape == (len(dataset.attributes),)
    return labels


def test_celeba_splits_shapes_and_labels(celeba_root: tuple[Path, np.ndarray]) -> None:
    root, expected = celeba_root
    offsets = {Split.TRAIN: 0, Split.VAL: 4, Split.TEST: 7}
    for split, size in ((Split.TRAIN, 4), (Split.VAL, 3), (Split.TEST, 2)):
        dataset = load_celeba(root, split=split, image_size=16)
        assert isinstance(dataset, AttributeDataset)
        assert len(dataset) == size
        assert [s.name for s in dataset.attributes] == CELEBA_NAMES
        assert all(s.classes == ("no", "yes") for s in dataset.attributes)
        for i in range(size):
            labels = _check_sample(dataset, i, 16)
            assert labels.tolist() == expected[offsets[split] + i].tolist()


def test_celeba_selects_attributes_by_name_and_limits(
    celeba_root: tuple[Path, np.ndarray],
) -> None:
    root, expected = celeba_root
    chosen = ["Smiling", "Male", "Young"]
    dataset = load_celeba(root, split=Split.VAL, image_size=12, attributes=chosen, limit=2)
    assert len(dataset) == 2
    assert [s.name for s in dataset.attributes] == chosen
    columns = [CELEBA_NAMES.index(name) for name in chosen]
    for i in range(2):
        assert _check_sample(dataset, i, 12).tolist() == expected[4 + i, columns].tolist()
    images, labels = next(iterate_batches(dataset, batch_size=2))
    assert images.shape == (2, 3, 12, 12) and labels.shape == (2, 3)


def test_celeba_errors(celeba_root: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    root, _ = celeba_root
    with pytest.raises(DatasetError, match=r"Smiley.*valid are: 5_o_Clock_Shadow"):
        load_celeba(root, split=Split.TRAIN, image_size=8, attributes=["Smiling", "Smiley"])
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        load_celeba(missing, split=Split.TRAIN, image_size=8)
    (root / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetError, match=r"list_eval_partition\.txt"):
        load_celeba(root, split=Split.TRAIN, image_size=8)


# ----------------------------------------------------------------------------- CIFAR-10 fixture

CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
PER_BATCH, TEST_COUNT = 4, 5  # 10000 records per file in the real thing


@pytest.fixture
def cifar_root(tmp_path: Path) -> tuple[Path, dict[int, int]]:
    return write_cifar(tmp_path)


def write_cifar(tmp_path: Path) -> tuple[Path, dict[int, int]]:
    """root/cifar-10-batches-bin/ as the binary tarball unpacks; record k has red plane == k."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    label_of: dict[int, int] = {}

    def write(name: str, ids: range) -> None:
        records = np.zeros((len(ids), 3073), dtype=np.uint8)
        for row, k in enumerate(ids):
            label_of[k] = k % 10
            records[row, 0] = k % 10
            # Channel planes R, G, B, each 32x32 row-major: constant k, 100, 200.
            records[row, 1:].reshape(3, 32, 32)[:] = np.array([k, 100, 200])[:, None, None]
        records.tofile(folder / name)

    for b in range(5):
        write(f"data_batch_{b + 1}.bin", range(b * PER_BATCH, (b + 1) * PER_BATCH))
    write("test_batch.bin", range(100, 100 + TEST_COUNT))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR_CLASSES) + "\n\n")
    return tmp_path, label_of


def _cifar_ids(dataset: AttributeDataset) -> list[int]:
    ids = []
    for i in range(len(dataset)):
        image, _ = dataset[i]
        ids.append(round(float(image[0].mean()) * 255))
    return ids


def test_cifar10_reads_binary_batches(cifar_root: tuple[Path, dict[int, int]]) -> None:
    root, label_of = cifar_root
    test = load_cifar10(root, split=Split.TEST, image_size=32, seed=0)
    assert isinstance(test, AttributeDataset)
    assert len(test) == TEST_COUNT
    (spec,) = test.attributes
    assert spec.name == "class" and list(spec.classes) == CIFAR_CLASSES
    image, _ = test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    # CHW bytes come back as the right channels: R == id, G == 100, B == 200.
    assert torch.allclose(image[:, 5, 7], torch.tensor([100, 100, 200]) / 255)
    assert _cifar_ids(test) == list(range(100, 100 + TEST_COUNT))
    for i, k in enumerate(_cifar_ids(test)):
        assert _check_sample(test, i, 32).tolist() == [label_of[k]]
    assert len(load_cifar10(root, split=Split.TEST, image_size=8, seed=0, limit=3)) == 3


def test_cifar10_val_is_seeded_and_disjoint(cifar_root: tuple[Path, dict[int, int]]) -> None:
    root, label_of = cifar_root
    kwargs = {"image_size": 16, "seed": 3, "val_fraction": 0.25}
    train = load_cifar10(root, split=Split.TRAIN, **kwargs)  # type: ignore[arg-type]
    val = load_cifar10(root, split=Split.VAL, **kwargs)  # type: ignore[arg-type]
    assert (len(train), len(val)) == (15, 5)
    train_ids, val_ids = _cifar_ids(train), _cifar_ids(val)
    assert set(train_ids).isdisjoint(val_ids)
    assert sorted(train_ids + val_ids) == list(range(5 * PER_BATCH))
    assert _cifar_ids(load_cifar10(root, split=Split.VAL, **kwargs)) == val_ids  # type: ignore[arg-type]
    other = load_cifar10(root, split=Split.VAL, image_size=16, seed=4, val_fraction=0.25)
    assert _cifar_ids(other) != val_ids
    for i, k in enumerate(val_ids):
        assert _check_sample(val, i, 16).tolist() == [label_of[k]]


def test_cifar10_errors(cifar_root: tuple[Path, dict[int, int]], tmp_path: Path) -> None:
    root, _ = cifar_root
    with pytest.raises(DatasetError, match="nowhere"):
        load_cifar10(tmp_path / "nowhere", split=Split.TEST, image_size=8, seed=0)
    pickled = tmp_path / "pickled"
    (pickled / "cifar-10-batches-py").mkdir(parents=True)
    (pickled / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not read")
    with pytest.raises(DatasetError, match=r"refuse to unpickle.*binary version \(suitable for C"):
        load_cifar10(pickled, split=Split.TRAIN, image_size=8, seed=0)
    (root / "cifar-10-batches-bin" / "data_batch_3.bin").unlink()
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin"):
        load_cifar10(root, split=Split.TRAIN, image_size=8, seed=0)
    (root / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match="3073-byte records"):
        load_cifar10(root, split=Split.TEST, image_size=8, seed=0)


# ----------------------------------------------------------------------------- folder fixture

COLOURS = ["red", "green", "blue"]
COUNTS = [2, 10, 3]  # integer labels: classes sort numerically, "2" < "3" < "10"


def write_folder(root: Path, n: int = 12, split_column: bool = False) -> list[dict[str, str]]:
    (root / "imgs").mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"imgs/{i:02d}.{'png' if i % 2 else 'jpg'}"
        size = (10 + 3 * i, 8 + 2 * i)  # every image a different size
        Image.new("RGB", size, (20 * i, 50, 90)).save(root / name)
        row = {"filename": name, "colour": COLOURS[i % 3], "count": str(COUNTS[i % 3])}
        if split_column:
            row["split"] = ["train", "train", "val", "test"][i % 4]
        rows.append(row)
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(r[h] for h in header) for r in rows]
    (root / "attributes.csv").write_text("\n".join(lines) + "\n")
    return rows


def _folder_rows(dataset: AttributeDataset) -> list[int]:
    """The fixture row of each sample, recovered from the red channel (20 * row)."""
    return [round(float(dataset[i][0][0].mean()) * 255 / 20) for i in range(len(dataset))]


def test_folder_seeded_split_and_labels(tmp_path: Path) -> None:
    rows = write_folder(tmp_path)
    kwargs = {"image_size": 20, "seed": 1, "val_fraction": 0.25, "test_fraction": 0.25}
    parts = {s: load_folder(tmp_path, split=s, **kwargs) for s in Split}  # type: ignore[arg-type]
    assert [len(parts[s]) for s in Split] == [6, 3, 3]
    ids = {s: _folder_rows(parts[s]) for s in Split}
    assert sorted(ids[Split.TRAIN] + ids[Split.VAL] + ids[Split.TEST]) == list(range(12))
    again = load_folder(tmp_path, split=Split.VAL, **kwargs)  # type: ignore[arg-type]
    assert _folder_rows(again) == ids[Split.VAL]
    dataset = parts[Split.TRAIN]
    assert isinstance(dataset, AttributeDataset)
    colour, count = dataset.attributes
    assert (colour.name, colour.classes) == ("colour", ("blue", "green", "red"))
    assert (count.name, count.classes) == ("count", ("2", "3", "10"))
    for i, row in enumerate(ids[Split.TRAIN]):
        labels = _check_sample(dataset, i, 20)
        expected = [
            colour.classes.index(rows[row]["colour"]),
            count.classes.index(rows[row]["count"]),
        ]
        assert labels.tolist() == expected


def test_folder_split_column_attribute_choice_and_limit(tmp_path: Path) -> None:
    rows = write_folder(tmp_path, split_column=True)
    val = load_folder(tmp_path, split=Split.VAL, image_size=8, seed=0, attributes=["count"])
    assert _folder_rows(val) == [i for i, r in enumerate(rows) if r["split"] == "val"]
    assert [s.name for s in val.attributes] == ["count"]
    assert _check_sample(val, 0, 8).tolist() == [("2", "3", "10").index(rows[2]["count"])]
    train = load_folder(tmp_path, split=Split.TRAIN, image_size=8, seed=0, limit=4)
    assert _folder_rows(train) == [0, 1, 4, 5]


def test_folder_construction_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"image folder not found.*nowhere"):
        load_folder(tmp_path / "nowhere", split=Split.TRAIN, image_size=8, seed=0)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DatasetError, match=r"attributes\.csv"):
        load_folder(tmp_path, split=Split.TRAIN, image_size=8, seed=0)
    root = tmp_path / "ok"
    write_folder(root)
    with pytest.raises(
        DatasetError, match=r"\['shape'\].*valid attribute columns are: colour, count"
    ):
        load_folder(root, split=Split.TRAIN, image_size=8, seed=0, attributes=["colour", "shape"])
    (root / "imgs" / "03.png").unlink()
    with pytest.raises(DatasetError, match=r"03\.png"):
        load_folder(root, split=Split.TRAIN, image_size=8, seed=0)


def test_folder_refuses_bad_split_values(tmp_path: Path) -> None:
    write_folder(tmp_path, split_column=True)
    csv = tmp_path / "attributes.csv"
    csv.write_text(csv.read_text().replace(",val\n", ",valid\n"))
    with pytest.raises(DatasetError, match=r"\['valid'\]; valid are: train, val, test"):
        load_folder(tmp_path, split=Split.TRAIN, image_size=8, seed=0)


def test_folder_refuses_grayscale_and_truncated_images_when_loading(tmp_path: Path) -> None:
    write_folder(tmp_path, n=4, split_column=True)  # rows 0, 1 train; 2 val; 3 test
    Image.new("L", (12, 12), 128).save(tmp_path / "imgs" / "00.jpg")
    broken = tmp_path / "imgs" / "01.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)).save(broken)
    broken.write_bytes(broken.read_bytes()[:300])
    # Loading decodes every image of the split, so the first bad file fails before any work.
    with pytest.raises(DatasetError, match=r"00\.jpg has mode 'L'"):
        load_folder(tmp_path, split=Split.TRAIN, image_size=8, seed=0)
    Image.new("RGB", (12, 12), (1, 2, 3)).save(tmp_path / "imgs" / "00.jpg")
    with pytest.raises(DatasetError, match=r"cannot read image .*01\.png"):
        load_folder(tmp_path, split=Split.TRAIN, image_size=8, seed=0)
    assert len(load_folder(tmp_path, split=Split.VAL, image_size=8, seed=0)) == 1  # others fine
    # A file damaged after loading still fails by name when it is read.
    broken.unlink()
    Image.new("RGB", (12, 12), (1, 2, 3)).save(broken)
    train = load_folder(tmp_path, split=Split.TRAIN, image_size=8, seed=0)
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DatasetError, match=r"cannot read image .*01\.png"):
        train[1]
