"""The bad-input matrix: every mistake gets a clear error, before any work, and loses nothing.

Each row sets up one bad input inside a workspace that also holds an existing, evaluated run,
then runs the real entry point (`iamt run`, `iamt evaluate`, `iamt report`, `iamt dashboard`, or
the dashboard's readers). It asserts the exception type and message fragments that name the
bad value and, where there is a choice, the valid options; then it asserts that the workspace
is byte for byte as before: no partial run directory, the existing run untouched.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from cluster.cli import execute
from cluster.sweep import ClusterUnreachableError
from dashboards import rundata
from dashboards.rundata import RunDataError
from iamt.checkpoint import CheckpointError
from iamt.config import ConfigError
from iamt.data import DatasetError
from iamt.workflow import RunDirectoryError
from tests.conftest import TINY
from tests.test_real_loaders import write_celeba, write_cifar, write_folder


class Workspace:
    """tmp/ws: `existing/` (an evaluated run), `inputs/` (bad files), and `new/` (a fresh
    --out that must not appear)."""

    def __init__(self, root: Path, evaluated: Path) -> None:
        self.root = root
        self.existing = root / "existing"
        shutil.copytree(evaluated, self.existing)
        self.inputs = root / "inputs"
        self.inputs.mkdir()
        self.new = root / "new"

    def config(self, changes: dict[str, Any] | None = None, drop: str | None = None) -> Path:
        """TINY with `changes` deep-merged (None deletes a key), written as YAML."""
        raw = copy.deepcopy(TINY)
        _merge(raw, changes or {})
        path = self.inputs / f"config-{len(list(self.inputs.glob('config-*')))}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    def run(self, *extra: str, changes: dict[str, Any] | None = None) -> Callable[[], object]:
        """`iamt run CONFIG --out new ...` with TINY + `changes`."""
        config = self.config(changes)
        return lambda: execute(["run", str(config), "--out", str(self.new), "--quiet", *extra])

    def folder_run(self) -> Callable[[], object]:
        root = self.inputs / "folder"
        return self.run(changes={"data": {"name": "folder", "root": str(root), "n_train": 8}})


def _merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its content hash (or 'dir') and permission bits."""
    state = {}
    for path in sorted(root.rglob("*")):
        mode = oct(path.stat().st_mode & 0o777)
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        state[str(path.relative_to(root))] = f"{digest} {mode}"
    return state


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    name: str
    act: Callable[[Workspace], Callable[[], object]]  # sets up the bad input, returns the call
    error: type[BaseException]
    fragments: tuple[str, ...]  # all must appear in the message


def _config_text(text: str) -> Callable[[Workspace], Callable[[], object]]:
    def act(ws: Workspace) -> Callable[[], object]:
        path = ws.inputs / "raw.yaml"
        path.write_text(text)
        return lambda: execute(["run", str(path), "--out", str(ws.new), "--quiet"])

    return act


def _with(changes: dict[str, Any], *extra: str) -> Callable[[Workspace], Callable[[], object]]:
    return lambda ws: ws.run(*extra, changes=changes)


def _robustness(section: dict[str, Any]) -> Callable[[Workspace], Callable[[], object]]:
    return _with({"robustness": section})


def _folder(damage: Callable[[Path], None]) -> Callable[[Workspace], Callable[[], object]]:
    def act(ws: Workspace) -> Callable[[], object]:
        root = ws.inputs / "folder"
        write_folder(root, n=12, split_column=True)  # train: rows 0, 1, 4, 5, 8, 9
        damage(root)
        return ws.folder_run()

    return act


def _rewrite_csv(root: Path, edit: Callable[[list[str]], list[str]]) -> None:
    path = root / "attributes.csv"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _celeba_without(name: str) -> Callable[[Workspace], Callable[[], object]]:
    def act(ws: Workspace) -> Callable[[], object]:
        write_celeba(ws.inputs)
        (ws.inputs / "celeba" / name).unlink()
        return ws.run(changes={"data": {"name": "celeba", "root": str(ws.inputs)}})

    return act


def _cifar(damage: Callable[[Path], None]) -> Callable[[Workspace], Callable[[], object]]:
    def act(ws: Workspace) -> Callable[[], object]:
        write_cifar(ws.inputs)
        damage(ws.inputs / "cifar-10-batches-bin")
        return ws.run(changes={"data": {"name": "cifar10", "root": str(ws.inputs)}})

    return act


def _cifar_label(folder: Path) -> None:
    batch = folder / "data_batch_1.bin"
    records = np.fromfile(batch, dtype=np.uint8).reshape(-1, 3073)
    records[2, 0] = 12  # CIFAR-10 has classes 0..9
    records.tofile(batch)


def _cifar_pickled(folder: Path) -> None:
    folder.rename(folder.with_name("cifar-10-batches-py"))


def _checkpoint(damage: Callable[[Path], Path]) -> Callable[[Workspace], Callable[[], object]]:
    """`iamt run --checkpoint STEM` with a damaged copy of the existing run's checkpoint."""

    def act(ws: Workspace) -> Callable[[], object]:
        stem = ws.inputs / "ckpt" / "normal"
        shutil.copytree(ws.existing / "checkpoints", stem.parent)
        given = damage(stem)
        return ws.run("--checkpoint", str(given))

    return act


def _truncated_weights(stem: Path) -> Path:
    _truncate(stem.with_suffix(".safetensors"), 1000)
    return stem


def _replaced_weights_metadata(stem: Path) -> Path:
    """Weights whose header says a tensor has another shape, with a matching SHA-256."""
    weights = stem.with_suffix(".safetensors")
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + length].decode().replace('"shape":[8,3,3,3]', '"shape":[8,3,9,1]')
    assert header != raw[8 : 8 + length].decode(), "the fixture's first conv changed its shape"
    weights.write_bytes(struct.pack("<Q", len(header)) + header.encode() + raw[8 + length :])
    meta = stem.with_suffix(".json")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    meta.write_text(meta.read_text().replace(_recorded_sha(meta), digest))
    return stem


def _recorded_sha(meta: Path) -> str:
    return str(json.loads(meta.read_text())["weights_sha256"])


def _missing_metadata(stem: Path) -> Path:
    stem.with_suffix(".json").unlink()
    return stem


def _metadata_without_architecture(stem: Path) -> Path:
    meta = stem.with_suffix(".json")
    data = json.loads(meta.read_text())
    del data["architecture"]
    meta.write_text(json.dumps(data))
    return stem


def _pickle_checkpoint(stem: Path) -> Path:
    evil = stem.parent / "model.pt"
    evil.write_bytes(_evil_pickle(stem.parent / "SENTINEL"))
    return evil


def _evil_pickle(sentinel: Path) -> bytes:
    """A pickle that creates `sentinel` when unpickled (what torch.load would do by default)."""
    import pickle

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(sentinel), "w"))

    return pickle.dumps(Payload())


def _dashboard_csv(text: str) -> Callable[[Workspace], Callable[[], object]]:
    def act(ws: Workspace) -> Callable[[], object]:
        (ws.existing / "summary.csv").write_text(text)
        return lambda: execute(["report", str(ws.existing)])

    return act


def _evaluate(*extra: str) -> Callable[[Workspace], Callable[[], object]]:
    return lambda ws: lambda: execute(["evaluate", str(ws.existing), "--quiet", *extra])


def _changed_resume(ws: Workspace) -> Callable[[], object]:
    config = ws.config({"train": {"epochs": 2}, "model": {"head_channels": 12}})
    return lambda: execute(["run", str(config), "--out", str(ws.existing), "--quiet"])


def _out_under_a_file(ws: Workspace) -> Callable[[], object]:
    (ws.inputs / "a_file").write_text("not a directory\n")
    config = ws.config()
    return lambda: execute(["run", str(config), "--out", str(ws.inputs / "a_file" / "run")])


def _unwritable_out(ws: Workspace) -> Callable[[], object]:
    # /proc refuses new files even to root, unlike a chmod-ed folder.
    config = ws.config()
    return lambda: execute(["run", str(config), "--out", "/proc/iamt-run", "--quiet"])


def _missing_config(ws: Workspace) -> Callable[[], object]:
    return lambda: execute(["run", str(ws.inputs / "nope.yaml"), "--out", str(ws.new)])


def _folder_attributes(names: list[str]) -> Callable[[Workspace], Callable[[], object]]:
    def act(ws: Workspace) -> Callable[[], object]:
        root = ws.inputs / "folder"
        write_folder(root, n=12, split_column=True)
        data = {"name": "folder", "root": str(root), "attributes": names}
        return ws.run(changes={"data": data})

    return act


def _narrower_checkpoint(ws: Workspace) -> Callable[[], object]:
    """The existing checkpoint (widths 8, 16) adopted by a config asking for widths 16, 32."""
    shutil.copytree(ws.existing / "checkpoints", ws.inputs / "ckpt")
    stem = str(ws.inputs / "ckpt" / "normal")
    return ws.run("--checkpoint", stem, changes={"model": {"widths": [16, 32]}})


def _traversal(name: str) -> Callable[[Workspace], Callable[[], object]]:
    return lambda ws: lambda: rundata.safe_run_dir(ws.root, name)


CASES = [
    # -- config: keys, types, required fields, names --------------------------------------
    Case("unknown top-level key", _with({"trian": {}}), ConfigError, ("'trian'", "valid keys")),
    Case("unknown nested key", _with({"train": {"epoch": 2}}), ConfigError, ("'epoch'", "epochs")),
    Case(
        "wrong type",
        _with({"train": {"epochs": "many"}}),
        ConfigError,
        ("train.epochs", "'many'"),
    ),
    Case(
        "missing required field",
        _robustness({"attacks": {"methods": [{"params": {}}]}}),
        ConfigError,
        ("methods.0.name", "Field required"),
    ),
    Case(
        "unknown dataset",
        _with({"data": {"name": "imagenet"}}),
        ConfigError,
        ("'imagenet'", "shapes", "celeba"),
    ),
    Case(
        "unknown backbone",
        _with({"model": {"backbone": "vgg16"}}),
        ConfigError,
        ("'vgg16'", "small_cnn", "resnet18"),
    ),
    Case(
        "unknown mask mode",
        _with({"model": {"mask_mode": "additive"}}),
        ConfigError,
        ("'additive'", "residual", "multiplicative"),
    ),
    Case(
        "unknown transform",
        _with({"emphasis": {"variants": {"emphasized": "sharpen:k=4"}}}),
        ConfigError,
        ("emphasis.variants.emphasized", "'sharpen'", "topk"),
    ),
    Case(
        "unknown noise",
        _robustness({"noise": {"types": ["pink"]}}),
        ConfigError,
        ("'pink'", "gaussian", "shot"),
    ),
    Case(
        "unknown corruption",
        _robustness({"corruptions": {"names": ["hail"]}}),
        ConfigError,
        ("'hail'", "frost", "zoom_blur"),
    ),
    Case(
        "unknown corruption engine",
        _robustness({"corruptions": {"names": ["fog"], "engine": "fast"}}),
        ConfigError,
        ("'fast'", "auto", "reference", "native"),
    ),
    Case(
        "engine override for a corruption not swept",
        _robustness({"corruptions": {"names": ["fog"], "engine_overrides": {"frost": "native"}}}),
        ConfigError,
        ("['frost']", "fog"),
    ),
    Case(
        "unknown attack",
        _robustness({"attacks": {"methods": [{"name": "pgd_inf"}]}}),
        ConfigError,
        ("'pgd_inf'", "linf_pgd", "fgsm"),
    ),
    Case(
        "unknown attack parameter",
        _robustness({"attacks": {"methods": [{"name": "linf_pgd", "params": {"stepz": 3}}]}}),
        ConfigError,
        ("stepz", "steps"),
    ),
    Case(
        "attack listed twice",
        _robustness({"attacks": {"methods": [{"name": "fgsm"}, {"name": "fgsm"}]}}),
        ConfigError,
        ("'fgsm'", "twice"),
    ),
    Case(
        "unknown --set key",
        lambda ws: ws.run("--set", "train.epoch=2"),
        ConfigError,
        ("train.epoch", "'epoch'", "epochs"),
    ),
    Case(
        "--set without a value",
        lambda ws: ws.run("--set", "train.epochs"),
        ConfigError,
        ("key=value", "'train.epochs'"),
    ),
    Case("config file missing", _missing_config, ConfigError, ("nope.yaml", "does not exist")),
    Case("not YAML", _config_text("name: [unclosed\n"), ConfigError, ("not valid YAML",)),
    Case("YAML not a mapping", _config_text("- a\n- b\n"), ConfigError, ("mapping", "list")),
    Case("empty config file", _config_text(""), ConfigError, ("raw.yaml", "is empty")),
    Case(
        "config of comments only",
        _config_text("# name: demo\n\n# seed: 1\n"),
        ConfigError,
        ("raw.yaml", "is empty", "only blank lines or comments"),
    ),
    # -- config: ranges ---------------------------------------------------------------------
    Case(
        "severity above 5",
        _robustness({"corruptions": {"names": ["fog"], "severities": [6]}}),
        ConfigError,
        ("6", "1", "5"),
    ),
    Case(
        "severity 0",
        _robustness({"corruptions": {"names": ["fog"], "severities": [0]}}),
        ConfigError,
        ("0", "1", "5"),
    ),
    Case(
        "negative epsilon",
        _robustness({"attacks": {"linf_epsilons": [-0.01]}}),
        ConfigError,
        ("-0.01",),
    ),
    Case(
        "empty epsilon list",
        _robustness({"attacks": {"linf_epsilons": []}}),
        ConfigError,
        ("empty",),
    ),
    Case(
        "linf epsilon beyond the image range",
        _robustness({"attacks": {"linf_epsilons": [1.5]}}),
        ConfigError,
        ("1.5",),
    ),
    Case(
        "noise strength negative",
        _robustness({"noise": {"strengths": [-0.1]}}),
        ConfigError,
        ("-0.1",),
    ),
    Case(
        "k larger than the channels",
        _with({"emphasis": {"variants": {"emphasized": "topk:k=999,alpha=2"}}}),
        ConfigError,
        ("999", "16"),
    ),
    Case(
        "alpha zero",
        _with({"emphasis": {"variants": {"emphasized": "topk:k=4,alpha=0"}}}),
        ConfigError,
        ("alpha", "0"),
    ),
    Case(
        "variant named normal",
        _with({"emphasis": {"variants": {"normal": "topk:k=4,alpha=2"}}}),
        ConfigError,
        ("'normal'", "reserved"),
    ),
    Case("batch size 0", _with({"train": {"batch_size": 0}}), ConfigError, ("batch_size", "0")),
    Case(
        "robustness batch size negative",
        _robustness({"batch_size": -1}),
        ConfigError,
        ("robustness.batch_size", "-1"),
    ),
    Case(
        "sample count 0",
        _robustness({"noise": {"n_samples": 0}}),
        ConfigError,
        ("noise.n_samples", "0"),
    ),
    Case(
        "image size 0",
        _with({"data": {"image_size": 0}}),
        ConfigError,
        ("data.image_size", "0"),
    ),
    Case(
        "val fraction 1.5",
        _with({"data": {"val_fraction": 1.5}}),
        ConfigError,
        ("data.val_fraction", "1.5"),
    ),
    Case(
        "attribute not in the dataset",
        _with({"data": {"attributes": ["hair"]}}),
        DatasetError,
        ("'hair'", "shape", "colour"),
    ),
    Case(
        "real dataset without a root",
        _with({"data": {"name": "celeba"}}),
        ConfigError,
        ("data.root", "celeba"),
    ),
    Case(
        "more training workers than CPUs",
        _with({"cluster": {"train": {"num_workers": 64}}}),
        ConfigError,
        ("cluster.train", "64", "CPU"),
    ),
    Case(
        "memory cap zero",
        _with({"cluster": {"sweep": {"memory_mb": 0}}}),
        ConfigError,
        ("memory_mb", "0"),
    ),
    # -- datasets ---------------------------------------------------------------------------
    Case(
        "dataset root missing",
        _with({"data": {"name": "folder", "root": "/nonexistent/images"}}),
        DatasetError,
        ("/nonexistent/images",),
    ),
    Case(
        "attributes.csv missing",
        _folder(lambda root: (root / "attributes.csv").unlink()),
        DatasetError,
        ("attributes.csv", "not found"),
    ),
    Case(
        "attributes.csv without a filename column",
        _folder(lambda root: _rewrite_csv(root, lambda ls: [ls[0].replace("filename", "file")])),
        DatasetError,
        ("'filename'", "file, colour"),
    ),
    Case(
        "attribute column missing from the CSV",
        _folder_attributes(["size"]),
        DatasetError,
        ("'size'", "colour", "count"),
    ),
    Case(
        "unknown split value",
        _folder(lambda root: _rewrite_csv(root, lambda ls: [*ls[:-1], ls[-1] + "x"])),
        DatasetError,
        ("testx", "train", "val"),
    ),
    Case(
        "unreadable image",
        _folder(lambda root: (root / "imgs" / "05.png").write_bytes(b"not an image")),
        DatasetError,
        ("cannot read image", "05.png"),
    ),
    Case(
        "truncated image",
        _folder(lambda root: _truncate(root / "imgs" / "09.png", 60)),
        DatasetError,
        ("cannot read image", "09.png"),
    ),
    Case(
        "grayscale image",
        _folder(lambda root: Image.new("L", (9, 9), 7).save(root / "imgs" / "04.jpg")),
        DatasetError,
        ("04.jpg", "'L'", "RGB"),
    ),
    Case(
        "label out of range (CIFAR-10 binary)",
        _cifar(_cifar_label),
        DatasetError,
        ("12", "class"),
    ),
    Case(
        "CIFAR-10 pickled version",
        _cifar(_cifar_pickled),
        DatasetError,
        ("cifar-10-batches-py", "unpickle", "binary version"),
    ),
    Case(
        "CIFAR-10 batch truncated",
        _cifar(lambda folder: _truncate(folder / "data_batch_2.bin", 5000)),
        DatasetError,
        ("data_batch_2.bin", "3073"),
    ),
    Case(
        "CelebA without its partition list",
        _celeba_without("list_eval_partition.txt"),
        DatasetError,
        ("list_eval_partition.txt", "not found"),
    ),
    Case(
        "CelebA without its attribute list",
        _celeba_without("list_attr_celeba.txt"),
        DatasetError,
        ("list_attr_celeba.txt",),
    ),
    # -- checkpoints ------------------------------------------------------------------------
    Case(
        "truncated safetensors",
        _checkpoint(_truncated_weights),
        CheckpointError,
        ("normal.safetensors", "truncated"),
    ),
    Case(
        "tensor shape mismatch",
        _checkpoint(_replaced_weights_metadata),
        CheckpointError,
        ("shape (8, 3, 9, 1)", "(8, 3, 3, 3)"),
    ),
    Case(
        "architecture mismatch with the config",
        _narrower_checkpoint,
        ConfigError,
        ("widths", "(16, 32)", "(8, 16)"),
    ),
    Case(
        "missing checkpoint metadata",
        _checkpoint(_missing_metadata),
        CheckpointError,
        ("normal.json", "does not exist"),
    ),
    Case(
        "checkpoint metadata without architecture",
        _checkpoint(_metadata_without_architecture),
        CheckpointError,
        ("architecture", "Field required"),
    ),
    Case(
        "pickle-bearing .pt checkpoint",
        _checkpoint(_pickle_checkpoint),
        CheckpointError,
        ("model.pt", "never unpickles"),
    ),
    # -- run directories --------------------------------------------------------------------
    Case(
        "resume with a changed config",
        _changed_resume,
        RunDirectoryError,
        ("train.epochs: 1 -> 2", "model.head_channels: 8 -> 12", "--force"),
    ),
    Case("output under a file", _out_under_a_file, RunDirectoryError, ("a_file", "is a file")),
    Case("output not writable", _unwritable_out, RunDirectoryError, ("/proc", "not writable")),
    Case(
        "evaluate a folder that is not a run",
        lambda ws: lambda: execute(["evaluate", str(ws.inputs)]),
        ConfigError,
        ("not a run directory", "config.yaml"),
    ),
    Case(
        "evaluate --set outside robustness",
        _evaluate("--set", "train.epochs=3"),
        ConfigError,
        ("train.epochs=3", "robustness.*"),
    ),
    Case(
        "evaluate --set an unknown robustness key",
        _evaluate("--set", "robustness.noise.kinds=[gaussian]"),
        ConfigError,
        ("'kinds'", "types"),
    ),
    # -- cluster ----------------------------------------------------------------------------
    Case(
        "unreachable Ray address",
        lambda ws: ws.run("--address", f"127.0.0.1:{_closed_port()}"),
        ClusterUnreachableError,
        ("127.0.0.1:",),
    ),
    Case(
        "malformed Ray address",
        lambda ws: ws.run("--address", "head-node-without-port"),
        ClusterUnreachableError,
        ("head-node-without-port",),
    ),
    # -- dashboard and report ---------------------------------------------------------------
    Case("run name with ..", _traversal("../existing"), RunDataError, ("'../existing'", "plain")),
    Case("absolute run name", _traversal("/etc"), RunDataError, ("'/etc'",)),
    Case("unknown run name", _traversal("nope"), RunDataError, ("'nope'", "no run named")),
    Case(
        "malformed summary.csv",
        _dashboard_csv('variant,attribute\n"unclosed,x\n'),
        RunDataError,
        ("summary.csv",),
    ),
    Case("truncated summary.csv", _dashboard_csv("variant,attr"), RunDataError, ("summary.csv",)),
    Case(
        "report on a folder that is not a run",
        lambda ws: lambda: execute(["report", str(ws.inputs)]),
        RunDataError,
        ("not a run directory",),
    ),
    Case(
        "dashboard on a missing runs directory",
        lambda ws: lambda: execute(["dashboard", "--runs", str(ws.root / "no-runs")]),
        RunDataError,
        ("no-runs", "does not exist"),
    ),
    Case(
        "dashboard on a port out of range",
        lambda ws: lambda: execute(["dashboard", "--runs", str(ws.root), "--port", "70000"]),
        RunDataError,
        ("70000", "1..65535"),
    ),
]


def test_the_table_is_large_and_distinct() -> None:
    names = [case.name for case in CASES]
    assert len(names) >= 40
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_clearly_and_loses_nothing(
    case: Case, evaluated_run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ws = Workspace(tmp_path / "ws", evaluated_run_dir)
    call = case.act(ws)
    # Run from an empty folder inside the workspace: whatever a refused call would write
    # relative to the working directory (the default `runs/<name>`, a stray probe) lands where
    # the snapshot sees it. The unwritable case's own target, /proc/iamt-run, cannot be
    # created at all, so the working directory is where its leftovers could show up.
    cwd = ws.root / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = snapshot(ws.root)

    with pytest.raises(case.error) as caught:
        call()

    message = str(caught.value)
    missing = [fragment for fragment in case.fragments if fragment not in message]
    assert not missing, f"message lacks {missing}: {message}"
    assert not ws.new.exists(), "a partial run directory was left behind"
    assert not any(cwd.iterdir()), f"left in the working directory: {sorted(cwd.iterdir())}"
    assert snapshot(ws.root) == before, "an input or the existing run was changed"
    assert not list(ws.root.rglob("SENTINEL")), "unpickling ran the planted code"


def test_the_cli_prints_the_message_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cluster.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**TINY, "trian": {}}))
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iamt run: error:") and "'trian'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_pickled_training_state_is_refused_without_running_its_code(tmp_path: Path) -> None:
    """Ray Train's resume file is read with weights_only=True: the planted code never runs,
    while the same bytes given to pickle do run it (the file is really malicious)."""
    import pickle

    from iamt.checkpoint import load_tensor_state

    sentinel = tmp_path / "SENTINEL"
    evil = tmp_path / "training_state.pt"
    evil.write_bytes(_evil_pickle(sentinel))

    with pytest.raises(CheckpointError, match="refused: not a plain tensor file"):
        load_tensor_state(evil)
    assert not sentinel.exists()

    pickle.loads(evil.read_bytes())  # the control: unpickling does run it
    assert sentinel.exists()
    os.remove(sentinel)
