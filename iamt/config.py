"""Run configuration: pydantic models that reject unknown keys, plus `--set` overrides.

A config file is YAML. Every section has defaults, so `name:` alone is a valid config; see
`configs/demo.yaml` for a commented example. `load_config(path, overrides)` is the single entry
point: it parses the YAML, applies `key.path=value` overrides (each must name an existing key),
and validates the result. Any mistake raises `ConfigError` naming the bad key or value and the
valid choices, before any work starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from iamt.data.base import DatasetName


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


def _check_strengths(name: str, strengths: Sequence[float]) -> None:
    """Validate names and strengths against the perturbation registry (no work done yet)."""
    from robustness.perturbations import PerturbationError, get_perturbation_class

    try:
        cls = get_perturbation_class(name)
        if not strengths:
            raise PerturbationError(f"{name}: the strength list is empty")
        for strength in strengths:
            cls.validate_strength(strength)
    except PerturbationError as error:
        raise ValueError(str(error)) from None


def _check_family(names: list[str], family: str) -> None:
    from robustness.perturbations import Family, list_perturbations

    valid = list_perturbations(Family(family))
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(f"unknown {family} name(s) {unknown}; valid: {', '.join(valid)}")


class NoiseConfig(Section):
    types: list[str] = Field(
        default_factory=lambda: ["gaussian", "shot", "impulse", "speckle", "uniform"]
    )
    strengths: list[float] = Field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2])
    n_samples: PositiveInt = 1000

    @model_validator(mode="after")
    def _valid(self) -> NoiseConfig:
        _check_family(self.types, "noise")
        for name in self.types:
            _check_strengths(name, self.strengths)
        return self


class EngineChoice(StrEnum):
    AUTO = "auto"  # native where it passed the fidelity gate, else reference
    REFERENCE = "reference"  # imagecorruptions, per image on the CPU
    NATIVE = "native"  # the batched torch port, on the job's device


class CorruptionConfig(Section):
    names: list[str] | Literal["all"] = "all"
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    n_samples: PositiveInt = 500
    engine: EngineChoice = Field(EngineChoice.AUTO, description="which implementation corrupts")
    engine_overrides: dict[str, EngineChoice] = Field(
        default_factory=dict, description="per corruption name, e.g. {frost: reference}"
    )

    @model_validator(mode="after")
    def _valid(self) -> CorruptionConfig:
        names = self.resolved_names()
        _check_family(names, "corruption")
        for name in names:
            _check_strengths(name, list(self.severities))
        unknown = sorted(set(self.engine_overrides) - set(names))
        if unknown:
            raise ValueError(
                f"engine_overrides names {unknown}, which are not among the sweep's "
                f"corruptions: {', '.join(names)}"
            )
        for name in names:
            self.engine_for(name)  # a native choice must exist
        return self

    def engine_for(self, name: str) -> str:
        """'native' or 'reference' for corruption `name`."""
        from robustness.perturbations.native import NATIVE_CORRUPTIONS, native_names

        choice = self.engine_overrides.get(name, self.engine)
        spec = NATIVE_CORRUPTIONS.get(name)
        if choice is EngineChoice.AUTO:
            return "native" if spec is not None and spec.default else "reference"
        if choice is EngineChoice.NATIVE and spec is None:
            raise ValueError(
                f"corruption {name!r} has no native engine; native ones: "
                f"{', '.join(native_names()) or '(none)'}"
            )
        return choice.value

    def resolved_names(self) -> list[str]:
        from robustness.perturbations import Family, list_perturbations

        if self.names == "all":
            return list_perturbations(Family.CORRUPTION)
        return list(self.names)


class AttackConfig(Section):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    epsilons: list[float] | None = Field(
        None, description="default: robustness.attacks.linf_epsilons or l2_epsilons by norm"
    )
    n_samples: PositiveInt | None = Field(None, description="default: attacks.n_samples")


class AttacksConfig(Section):
    linf_epsilons: list[float] = Field(default_factory=lambda: [2 / 255, 4 / 255, 8 / 255])
    l2_epsilons: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0])
    n_samples: PositiveInt = 200
    transfer: bool = True
    methods: list[AttackConfig] = Field(
        default_factory=lambda: [AttackConfig(name="fgsm"), AttackConfig(name="linf_pgd")]
    )

    @model_validator(mode="after")
    def _valid(self) -> AttacksConfig:
        from robustness.perturbations import PerturbationError, create_perturbation

        _check_family([m.name for m in self.methods], "adversarial")
        seen = set()
        for method in self.methods:
            if method.name in seen:
                raise ValueError(f"attack {method.name!r} is listed twice")
            seen.add(method.name)
            try:
                create_perturbation(method.name, **method.params)
            except PerturbationError as error:
                raise ValueError(str(error)) from None
            _check_strengths(method.name, self.epsilons_for(method))
        return self

    def epsilons_for(self, method: AttackConfig) -> list[float]:
        from robustness.perturbations import get_perturbation_class

        if method.epsilons is not None:
            return method.epsilons
        norm = getattr(get_perturbation_class(method.name), "norm", "linf")
        return self.linf_epsilons if norm == "linf" else self.l2_epsilons


class RobustnessConfig(Section):
    split: Literal["test"] = "test"
    shard_size: PositiveInt = 500
    batch_size: PositiveInt = 500
    drift_samples: NonNegativeInt = Field(
        128,
        description="attention drift (drift.csv) on each job's first this many images; "
        "it costs a clean forward of them per variant; 0 turns it off",
    )
    noise: NoiseConfig = NoiseConfig()
    corruptions: CorruptionConfig = CorruptionConfig()
    attacks: AttacksConfig = AttacksConfig()


def _default_search_space() -> dict[str, dict[str, list[float]]]:
    return {
        "topk": {"k": [4.0, 8.0, 16.0], "alpha": [1.5, 2.0, 3.0]},
        "suppress": {"k": [8.0, 16.0], "beta": [0.25, 0.5]},
        "power": {"gamma": [0.5, 2.0]},
    }


class SearchAttackConfig(Section):
    name: str = Field("fgsm", description="a fixed-ε attack: fgsm, linf_pgd, l2_pgd, linf_bim")
    epsilon: PositiveFloat = 0.0156863  # 4/255
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid(self) -> SearchAttackConfig:
        _check_family([self.name], "adversarial")
        _check_strengths(self.name, [self.epsilon])
        return self


class SearchConfig(Section):
    """`iamt search` and the search stage of `iamt run`: which mask transform buys the most
    robustness for the least clean accuracy, measured on the validation split."""

    enabled: bool = Field(False, description="`iamt run` runs the search before the sweep")
    space: dict[str, dict[str, list[float]]] = Field(
        default_factory=_default_search_space,
        description="transform -> parameter -> values; every grid point is a candidate",
    )
    compose: list[list[str]] = Field(
        default_factory=list,
        description="compositions to try, e.g. [[topk, power]]: every grid point of each part",
    )
    max_trials: PositiveInt = Field(32, description="a seeded sample of the grid when larger")
    n_samples: PositiveInt = Field(500, description="validation images every trial sees")
    batch_size: PositiveInt = 500
    noise_types: list[str] = Field(default_factory=lambda: ["gaussian", "impulse"])
    noise_strengths: list[float] = Field(default_factory=lambda: [0.05, 0.1])
    corruptions: list[str] = Field(default_factory=lambda: ["fog", "pixelate", "gaussian_blur"])
    severities: list[int] = Field(default_factory=lambda: [3])
    attack: SearchAttackConfig | None = Field(None, description="optional robust accuracy at ε")
    max_clean_cost: float = Field(
        1.0, ge=0, description="points of clean accuracy the chosen transform may cost"
    )
    variant: str = Field("searched", description="the chosen transform's variant name")

    @model_validator(mode="after")
    def _valid(self) -> SearchConfig:
        if not self.noise_types and not self.corruptions:
            raise ValueError("search needs at least one of noise_types or corruptions")
        _check_family(self.noise_types, "noise")
        for name in self.noise_types:
            _check_strengths(name, self.noise_strengths)
        _check_family(self.corruptions, "corruption")
        for name in self.corruptions:
            _check_strengths(name, list(self.severities))
        unknown = sorted({part for chain in self.compose for part in chain} - set(self.space))
        if unknown:
            raise ValueError(
                f"compose names {unknown}, which are not in search.space: {', '.join(self.space)}"
            )
        if self.variant == "normal":
            raise ValueError("search.variant: 'normal' is reserved for the identity model")
        return self


class TrainScalingConfig(Section):
    """Ray Train's ScalingConfig for `iamt run` (`iamt train` always trains in one process)."""

    num_workers: PositiveInt = Field(1, description="data-parallel (DDP) training workers")
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = Field(1, description="also each worker's torch threads")
    gpus_per_worker: PositiveFloat = Field(1, description="with use_gpu; may be fractional")
    max_failures: NonNegativeInt = Field(
        1, description="worker-group restarts, each resuming from the last epoch's checkpoint"
    )


class SweepResourcesConfig(Section):
    """How `iamt run` fans the robustness jobs out over Ray."""

    num_cpus: PositiveFloat = Field(1, description="per evaluator task; also its torch threads")
    num_gpus: float = Field(0, ge=0, description="per evaluator task; fractions share a GPU")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per task, e.g. {evaluator: 1}"
    )
    memory_mb: PositiveFloat | None = Field(
        None,
        description="per evaluator task: Ray schedules by it, and a job allocating more fails "
        "alone (recorded in failures.csv, not retried); null = no cap",
    )
    max_in_flight: PositiveInt = Field(8, description="jobs outstanding at once (backpressure)")
    max_retries: NonNegativeInt = Field(2, description="resubmissions of a failed job")


class ClusterConfig(Section):
    """Where `iamt run` runs. Placement only: it never changes a number in results.csv."""

    address: str | None = Field(
        None, description="Ray cluster to join; null: $RAY_ADDRESS, else an embedded local Ray"
    )
    num_cpus: PositiveInt | None = Field(
        None, description="CPUs of the embedded local Ray; null = all of this machine's"
    )
    train: TrainScalingConfig = TrainScalingConfig()
    sweep: SweepResourcesConfig = SweepResourcesConfig()


class RunConfig(Section):
    name: str = "run"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    importance: ImportanceConfig = ImportanceConfig()
    emphasis: EmphasisConfig = EmphasisConfig()
    robustness: RobustnessConfig = RobustnessConfig()
    search: SearchConfig = SearchConfig()
    cluster: ClusterConfig = ClusterConfig()


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a raw config mapping.

    Each path must name a key that exists in the schema; a free-form mapping (such as
    `emphasis.variants`) may gain new keys.
    """
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(raw)) or {}  # deep copy
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        keys = path.strip().split(".")
        schema: type[BaseModel] | None = RunConfig
        node = result
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            if schema is not None and key not in schema.model_fields:
                where = ".".join(keys[:depth]) or "the top level"
                raise ConfigError(
                    f"--set {path}: unknown key {key!r} at {where}; "
                    f"valid keys: {', '.join(schema.model_fields)}"
                )
            if last:
                node[key] = yaml.safe_load(text)
                break
            child_schema = _section_type(schema, key) if schema is not None else None
            if schema is not None and child_schema is None and not _is_mapping(schema, key):
                raise ConfigError(f"--set {path}: {key!r} is a value, not a section")
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {path}: {key!r} is not a mapping in the config file")
            schema = child_schema
    return result


def _section_type(schema: type[BaseModel], key: str) -> type[BaseModel] | None:
    annotation = schema.model_fields[key].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _is_mapping(schema: type[BaseModel], key: str) -> bool:
    annotation = schema.model_fields[key].annotation
    return getattr(annotation, "__origin__", None) is dict


def parse_config(raw: Mapping[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(dict(raw))
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: Path | str, overrides: Sequence[str] = ()) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return parse_config(apply_overrides(raw, overrides), source=str(path))


def load_run_config(run_dir: Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The config of an existing run; overrides may change only the `robustness` and `search`
    sections, since everything else produced the checkpoint already in the run directory."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory: {path} does not exist")
    outside = [
        item for item in overrides if not item.strip().startswith(("robustness.", "search."))
    ]
    if outside:
        raise ConfigError(
            f"--set {outside[0]!r}: only robustness.* and search.* keys can change on a "
            "trained run; train a new run for other changes"
        )
    return load_config(path, overrides)


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _describe(error: ValidationError, source: str) -> str:
    """One line per problem, naming the key, the bad value and (where known) the valid keys."""
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parent = _schema_at(item["loc"][:-1])
            valid = ", ".join(parent.model_fields) if parent is not None else "?"
            lines.append(f"  {location}: unknown key {item['loc'][-1]!r}; valid keys: {valid}")
        else:
            lines.append(f"  {location}: {item['msg']} (got {item['input']!r})")
    return "\n".join(lines)


def _schema_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    schema: type[BaseModel] | None = RunConfig
    for key in loc:
        if schema is None or not isinstance(key, str) or key not in schema.model_fields:
            return None
        schema = _section_type(schema, key)
    return schema
