"""Configuration of the evaluation: the robustness sweep and the emphasis search.

Beside the code they configure (robustness/jobs.py, robustness/search.py), and validated
against the perturbation registry, so that an unknown name, a severity outside 1..5 or an ε out
of range fails before any work starts. `EvaluationConfig` is the model-and-method config
(`iamt.config.MethodConfig`) plus these two sections; `cluster.config.RunConfig` adds where
things run.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from iamt.config import MethodConfig, Section
from iamt.rundir import DRIFT
from iamt.vocabulary import NORMAL, Engine, Family, Norm
from robustness.catalogue import (
    PerturbationError,
    catalogue_entry,
    catalogue_names,
    check_parameters,
    check_strength,
    engine_of,
)


def _check_strengths(name: str, strengths: Sequence[float]) -> None:
    """Validate names and strengths against the torch-free perturbation catalogue, which the
    registered classes are held to (no torch or foolbox import, no work done yet)."""
    try:
        entry = catalogue_entry(name)
        if not strengths:
            raise PerturbationError(f"{name}: the strength list is empty")
        for strength in strengths:
            check_strength(name, entry.axis, entry.min_strength, entry.max_strength, strength)
    except PerturbationError as error:
        raise ValueError(str(error)) from None


def _check_family(names: list[str], family: Family) -> None:
    valid = catalogue_names(family)
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
        _check_family(self.types, Family.NOISE)
        for name in self.types:
            _check_strengths(name, self.strengths)
        return self


class CorruptionConfig(Section):
    names: list[str] | Literal["all"] = "all"
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    n_samples: PositiveInt = 500
    engine: Engine = Field(Engine.AUTO, description="which implementation corrupts")
    engine_overrides: dict[str, Engine] = Field(
        default_factory=dict, description="per corruption name, e.g. {frost: reference}"
    )

    @model_validator(mode="after")
    def _valid(self) -> CorruptionConfig:
        names = self.resolved_names()
        _check_family(names, Family.CORRUPTION)
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

    def engine_for(self, name: str) -> Engine:
        """The engine that corrupts with `name`: the override, else `engine`, with `auto`
        resolved by the corruption's registry entry (native where it passed the gate)."""
        choice = self.engine_overrides.get(name, self.engine)
        assert catalogue_entry(name).family is Family.CORRUPTION, f"{name} is not a corruption"
        try:
            return engine_of(name, choice)
        except PerturbationError as error:
            raise ValueError(str(error)) from None

    def resolved_names(self) -> list[str]:
        if self.names == "all":
            return catalogue_names(Family.CORRUPTION)
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
        _check_family([m.name for m in self.methods], Family.ADVERSARIAL)
        seen = set()
        for method in self.methods:
            if method.name in seen:
                raise ValueError(f"attack {method.name!r} is listed twice")
            seen.add(method.name)
            try:
                check_parameters(method.name, method.params)
            except PerturbationError as error:
                raise ValueError(str(error)) from None
            _check_strengths(method.name, self.epsilons_for(method))
        return self

    def epsilons_for(self, method: AttackConfig) -> list[float]:
        if method.epsilons is not None:
            return method.epsilons
        norm = catalogue_entry(method.name).norm or Norm.LINF
        return self.linf_epsilons if norm == Norm.LINF else self.l2_epsilons


class Precision(StrEnum):
    """The arithmetic of a sweep's inference and attacks."""

    FP32 = "fp32"  # float32 throughout: the bits the tests and results.csv pin
    BF16 = "bf16"  # bfloat16 autocast (channels_last on CUDA): for GPUs with bf16 units


class RobustnessConfig(Section):
    split: Literal["test"] = "test"
    shard_size: PositiveInt = 500
    batch_size: PositiveInt = 500
    drift_samples: NonNegativeInt = Field(
        128,
        description=f"attention drift ({DRIFT}) on each job's first this many images; "
        "it costs a clean forward of them per variant; 0 turns it off",
    )
    precision: Precision = Field(
        Precision.FP32, description="fp32, or bf16: autocast for inference and attacks"
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


class SearchRule(StrEnum):
    """How the search turns a candidate's per-family gains into one score."""

    MAX_MIN_GAIN = "max_min_gain"  # its worst family's gain: no family is traded away
    WEIGHTED = "weighted"  # the weighted mean of the family gains (search.weights)
    POOLED = "pooled"  # the gain in mean accuracy over every perturbed set


# The families the search measures a gain in (adversarial only with `search.attack`).
SEARCHED_FAMILIES = (Family.NOISE, Family.CORRUPTION, Family.ADVERSARIAL)


class SearchAttackConfig(Section):
    name: str = Field("fgsm", description="a fixed-ε attack: fgsm, linf_pgd, l2_pgd, linf_bim")
    epsilon: PositiveFloat = 0.0156863  # 4/255
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid(self) -> SearchAttackConfig:
        _check_family([self.name], Family.ADVERSARIAL)
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
    # The conditions: by default the sweep's own (robustness.noise / robustness.corruptions),
    # every family across its strengths, at most `conditions_per_family` of each (a seeded
    # sample), on the validation split.
    noise_types: list[str] | None = Field(None, description="null: robustness.noise.types")
    noise_strengths: list[float] | None = Field(
        None, description="null: robustness.noise.strengths"
    )
    corruptions: list[str] | None = Field(None, description="null: the sweep's corruptions")
    severities: list[int] | None = Field(None, description="null: the sweep's severities")
    conditions_per_family: PositiveInt = Field(
        12, description="a seeded sample of each family's (name × strength) grid when larger"
    )
    attack: SearchAttackConfig | None = Field(None, description="optional robust accuracy at ε")
    rule: SearchRule = Field(SearchRule.MAX_MIN_GAIN, description="how gains become a score")
    weights: dict[Family, float] = Field(
        default_factory=dict, description="rule weighted: family -> weight (default 1 each)"
    )
    max_clean_cost: float = Field(
        1.0, ge=0, description="points of clean accuracy the chosen transform may cost"
    )
    max_family_loss: float = Field(
        2.0, ge=0, description="points the chosen transform may lose in any one family"
    )
    variant: str = Field("searched", description="the chosen transform's variant name")
    evaluate_front: bool = Field(
        False,
        description="the other validation Pareto-front members join the test sweep's clean, "
        "noise and corruption jobs as front-1, front-2, … (attacks stay per chosen variant)",
    )

    @model_validator(mode="after")
    def _valid(self) -> SearchConfig:
        if self.noise_types is not None:
            _check_family(self.noise_types, Family.NOISE)
            for name in self.noise_types:
                _check_strengths(name, self.noise_strengths or [0.0])
        if self.corruptions is not None:
            _check_family(self.corruptions, Family.CORRUPTION)
            for name in self.corruptions:
                _check_strengths(name, list(self.severities or [1]))
        bad = sorted(set(self.weights) - set(SEARCHED_FAMILIES))
        if bad or any(weight < 0 for weight in self.weights.values()):
            raise ValueError(
                f"search.weights: families {[str(b) for b in bad]} or negative weights; "
                f"valid families: {', '.join(SEARCHED_FAMILIES)}, weights >= 0"
            )
        unknown = sorted({part for chain in self.compose for part in chain} - set(self.space))
        if unknown:
            raise ValueError(
                f"compose names {unknown}, which are not in search.space: {', '.join(self.space)}"
            )
        if self.variant == NORMAL:
            raise ValueError(f"search.variant: {NORMAL!r} is reserved for the identity model")
        return self


class EvaluationConfig(MethodConfig):
    """What a sweep and a search need: the model and the method, and how to evaluate them."""

    robustness: RobustnessConfig = RobustnessConfig()
    search: SearchConfig = SearchConfig()

    @model_validator(mode="after")
    def _search_has_conditions(self) -> EvaluationConfig:
        if self.search.enabled:
            self.check_search_conditions()
        return self

    def check_search_conditions(self) -> None:
        """A search needs something to measure (also checked by `iamt search`, which turns
        the search on after the config was read)."""
        if not self.search_noise()[0] and not self.search_corruptions()[0]:
            raise ValueError(
                "search: no noise and no corruption to measure (search.noise_types and "
                "search.corruptions, or the sweep's robustness.noise and robustness.corruptions)"
            )

    def search_noise(self) -> tuple[list[str], list[float]]:
        """The search's noise types and strengths: its own, else the sweep's."""
        search, noise = self.search, self.robustness.noise
        types = noise.types if search.noise_types is None else search.noise_types
        strengths = noise.strengths if search.noise_strengths is None else search.noise_strengths
        return list(types), list(strengths)

    def search_corruptions(self) -> tuple[list[str], list[int]]:
        """The search's corruptions and severities: its own, else the sweep's."""
        search, corruptions = self.search, self.robustness.corruptions
        names = corruptions.resolved_names() if search.corruptions is None else search.corruptions
        severities = corruptions.severities if search.severities is None else search.severities
        return list(names), list(severities)
