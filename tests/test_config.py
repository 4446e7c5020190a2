"""Configs: the shipped files validate; mistakes name the key, the value and the choices."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from cluster.config import RunConfig, apply_overrides, load_config, parse_config
from iamt.config import ConfigError
from iamt.data import DatasetName

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STUDIES = sorted(CONFIGS.glob("study-*.yaml"))  # study files (`iamt study`), not run configs


@pytest.mark.parametrize(
    "path", sorted(set(CONFIGS.glob("*.yaml")) - set(STUDIES)), ids=lambda p: p.name
)
def test_shipped_configs_validate(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, RunConfig)


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_study_files_validate_every_member(path: Path) -> None:
    from cluster.study import load_study

    study, members = load_study(path)
    grid_points = math.prod(len(values) for values in study.study.grid.values())
    assert len(members) == len(study.study.seeds) * grid_points
    assert all(isinstance(member.config, RunConfig) for member in members)


def test_demo_config_uses_the_builtin_shapes() -> None:
    config = load_config(CONFIGS / "demo.yaml")
    assert config.data.name is DatasetName.SHAPES
    assert "emphasized" in config.emphasis.variants


def _write(tmp_path: Path, payload: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


@pytest.mark.parametrize(
    ("payload", "fragments"),
    [
        ({"nme": "x"}, ["unknown key 'nme'", "valid keys: name, seed, data"]),
        ({"data": {"n_trian": 5}}, ["data.n_trian", "valid keys: name, root"]),
        ({"data": {"name": "mnist"}}, ["data.name", "'shapes'", "'folder'", "mnist"]),
        ({"data": {"name": "celeba"}}, ["data.root is required", "celeba"]),
        ({"data": {"n_train": 0}}, ["data.n_train", "greater than 0"]),
        ({"data": {"n_train": "many"}}, ["data.n_train", "'many'"]),
        ({"model": {"backbone": "vgg16"}}, ["model.backbone", "'resnet18'", "vgg16"]),
        ({"model": {"mask_mode": "additive"}}, ["model.mask_mode", "'residual'"]),
        ({"train": {"batch_size": -4}}, ["train.batch_size", "greater than 0", "-4"]),
        ({"train": {"lr": 0}}, ["train.lr", "greater than 0"]),
        ({"importance": {"method": "saliency"}}, ["importance.method", "'gradient'"]),
        ({"emphasis": {"variants": ["topk"]}}, ["emphasis.variants", "dictionary"]),
    ],
)
def test_bad_configs_are_explained(tmp_path: Path, payload: object, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, payload))
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_overrides_set_existing_keys_with_yaml_values(tmp_path: Path) -> None:
    path = _write(tmp_path, {"name": "x"})
    config = load_config(
        path,
        [
            "train.epochs=2",
            "model.widths=[4, 8]",
            "data.name=digits",
            "emphasis.variants.strong=topk:k=8,alpha=4",
        ],
    )
    assert config.train.epochs == 2
    assert config.model.widths == [4, 8]
    assert config.data.name is DatasetName.DIGITS
    assert config.emphasis.variants["strong"] == "topk:k=8,alpha=4"


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epoch=2", "unknown key 'epoch' at train; valid keys: epochs"),
        ("trian.epochs=2", "unknown key 'trian' at the top level"),
        ("train.epochs", "expects key=value"),
        ("seed.value=3", "'seed' is a value, not a section"),
    ],
)
def test_overrides_must_name_existing_keys(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        apply_overrides({}, [override])


def test_overrides_do_not_mutate_their_input() -> None:
    raw = {"train": {"epochs": 3}}
    apply_overrides(raw, ["train.epochs=5"])
    assert raw == {"train": {"epochs": 3}}


def test_override_values_are_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        parse_config(apply_overrides({}, ["train.epochs=-1"]))
