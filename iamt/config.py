"""Configuration of the model and the method, and the config machinery every layer uses.

A config is YAML validated by pydantic models that reject unknown keys. Each section is defined
beside the code it configures: here the data, model, training, importance and emphasis sections
(`MethodConfig`); the robustness sweep and the emphasis search in `robustness/config.py`
(`EvaluationConfig` extends `MethodConfig`); where things run in `cluster/config.py`, which
assembles the whole `RunConfig` and its `load_config(path, overrides)`. Every section has
defaults, so `name: ...` alone is a valid config (see `configs/demo.yaml`); an empty file, or
one of comments only, is refused (most likely the wrong file). Any mistake raises
`ConfigError` naming the bad key or value and the valid choices, before any work starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    model_validator,
)

from iamt.vocabulary import DatasetName


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the valid choices."""


class Backbone(StrEnum):
    SMALL_CNN = "small_cnn"
    RESNET18 = "resnet18"
    RESNET50 = "resnet50"


class MaskMode(StrEnum):
    RESIDUAL = "residual"  # F' = (1 + M) ⊙ F, as in the Attention Branch Network
    MULTIPLICATIVE = "multiplicative"  # F' = M ⊙ F


class ImportanceMethod(StrEnum):
    MEAN_MASK = "mean_mask"  # mean of M_a[c] over samples and positions
    GRADIENT = "gradient"  # mean of M_a[c] · |∂ logit_true / ∂ F'_a[c]|


class Device(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    AUTO = "auto"  # cuda when available, else cpu


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class DataConfig(Section):
    name: DatasetName = DatasetName.SHAPES
    root: Path | None = Field(None, description="local copy of a real dataset (never downloaded)")
    image_size: PositiveInt = 32
    attributes: list[str] | None = Field(
        None, description="subset of attributes to recognise (celeba, folder); all if null"
    )
    n_train: PositiveInt = 8000
    n_val: PositiveInt = 1000
    n_test: PositiveInt = 2000
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _root_for_real_data(self) -> DataConfig:
        builtin = {DatasetName.SHAPES, DatasetName.DIGITS}
        if self.name not in builtin and self.root is None:
            raise ValueError(f"data.root is required for dataset {self.name.value!r}")
        return self


class ModelConfig(Section):
    backbone: Backbone = Backbone.SMALL_CNN
    widths: list[PositiveInt] = Field(
        default_factory=lambda: [32, 64], description="small_cnn: channels of each conv stage"
    )
    attention_hidden: PositiveInt = 64
    mask_mode: MaskMode = MaskMode.RESIDUAL
    head_channels: PositiveInt = 64
    backbone_weights: Path | None = Field(
        None, description="local safetensors file with trunk weights (resnet only)"
    )


class TrainConfig(Section):
    epochs: PositiveInt = 8
    batch_size: PositiveInt = 128
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_fraction: float = Field(0.15, ge=0, lt=1)
    mask_sparsity: float = Field(
        0.5, ge=0, description="weight of the mean mask activation added to the loss"
    )
    device: Device = Device.AUTO
    num_threads: PositiveInt | None = Field(None, description="torch CPU threads; null = torch's")


class ImportanceConfig(Section):
    method: ImportanceMethod = ImportanceMethod.MEAN_MASK
    n_samples: PositiveInt = 1000
    batch_size: PositiveInt = 256


class EmphasisConfig(Section):
    variants: dict[str, str] = Field(
        default_factory=lambda: {"emphasized": "topk:k=8,alpha=2"},
        description="variant name -> mask-transform spec; 'normal' (identity) is always added",
    )


class MethodConfig(Section):
    """The model and the method: what trains the normal model and derives its variants. The
    evaluation (robustness/config.py) and the cluster (cluster/config.py) extend it; the
    whole run config is `cluster.config.RunConfig`."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    importance: ImportanceConfig = ImportanceConfig()
    emphasis: EmphasisConfig = EmphasisConfig()


ConfigModel = TypeVar("ConfigModel", bound=BaseModel)


def apply_overrides_to(
    schema: type[BaseModel], raw: dict[str, Any], overrides: Sequence[str]
) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a raw config mapping.

    Each path must name a key that exists in `schema`; a free-form mapping (such as
    `emphasis.variants`) may gain new keys.
    """
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(raw)) or {}  # deep copy
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        keys = path.strip().split(".")
        node = _override_parent(schema, result, keys, path)
        node[keys[-1]] = yaml.safe_load(text)
    return result


def _override_parent(
    schema: type[BaseModel], raw: dict[str, Any], keys: list[str], path: str
) -> dict[str, Any]:
    """The mapping of `raw` that holds the last of `keys`, checking each key on the way."""
    section: type[BaseModel] | None = schema
    node = raw
    for depth, key in enumerate(keys):
        if section is not None and key not in section.model_fields:
            where = ".".join(keys[:depth]) or "the top level"
            raise ConfigError(
                f"--set {path}: unknown key {key!r} at {where}; "
                f"valid keys: {', '.join(section.model_fields)}"
            )
        if depth == len(keys) - 1:
            break
        child = _section_type(section, key) if section is not None else None
        if section is not None and child is None and not _is_mapping(section, key):
            raise ConfigError(f"--set {path}: {key!r} is a value, not a section")
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {path}: {key!r} is not a mapping in the config file")
        section = child
    return node


def _section_type(schema: type[BaseModel], key: str) -> type[BaseModel] | None:
    annotation = schema.model_fields[key].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _is_mapping(schema: type[BaseModel], key: str) -> bool:
    annotation = schema.model_fields[key].annotation
    return getattr(annotation, "__origin__", None) is dict


def validate_config(
    schema: type[ConfigModel], raw: Mapping[str, Any], source: str = "config"
) -> ConfigModel:
    """`raw` validated as `schema`; a mistake raises ConfigError naming every bad key."""
    try:
        return schema.model_validate(dict(raw))
    except ValidationError as error:
        raise ConfigError(_describe(error, source, schema)) from None


def read_config_file(
    schema: type[ConfigModel], path: Path | str, overrides: Sequence[str] = ()
) -> ConfigModel:
    """A YAML config file, with `--set` overrides applied, validated as `schema`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if raw is None:  # zero bytes, blank lines or only comments: most likely the wrong file
        raise ConfigError(
            f"config file {str(path)!r} is empty (no keys, only blank lines or comments); "
            "give at least one key, e.g. `name: my-run` (see configs/demo.yaml)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return validate_config(schema, apply_overrides_to(schema, raw, overrides), source=str(path))


def config_to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _describe(error: ValidationError, source: str, schema: type[BaseModel]) -> str:
    """One line per problem, naming the key, the bad value and (where known) the valid keys."""
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parent = _schema_at(schema, item["loc"][:-1])
            valid = ", ".join(parent.model_fields) if parent is not None else "?"
            lines.append(f"  {location}: unknown key {item['loc'][-1]!r}; valid keys: {valid}")
        else:
            lines.append(f"  {location}: {item['msg']} (got {item['input']!r})")
    return "\n".join(lines)


def _schema_at(schema: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    section: type[BaseModel] | None = schema
    for key in loc:
        if section is None or not isinstance(key, str) or key not in section.model_fields:
            return None
        section = _section_type(section, key)
    return section
