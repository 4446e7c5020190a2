"""The perturbation catalogue: every perturbation's name, family, strength range and keyword
hyperparameters, readable without torch, foolbox or imagecorruptions.

The config (`robustness/config.py`) checks a sweep against this catalogue, so `iamt --help`
and a config error answer at once, before any heavy import. The classes that do the work live
in `robustness/perturbations/`; each registers against its entry here, and registration
refuses a class whose metadata differs (`check_against_catalogue`), so the two cannot drift.
The checks of a strength, an engine choice and an attack's hyperparameters live here too, once:
the heavy classes call the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from iamt.vocabulary import SEVERITIES, Engine, Family, Norm, StrengthAxis

#: A validated strength: an `int` severity on the SEVERITY axis, a `float` ε on the EPSILON one.
Strength = int | float


class PerturbationError(ValueError):
    """A perturbation name, strength or input is invalid; the message names the valid range."""


@dataclass(frozen=True)
class PerturbationSpec:
    """What a config may ask of one perturbation. `parameters`: keyword hyperparameters and
    their defaults (an int default means the value must be a positive integer); `engines`
    and `native_default` only for corruptions (native default: it passed the fidelity gate)."""

    name: str
    family: Family
    axis: StrengthAxis
    min_strength: float
    max_strength: float
    norm: Norm | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    engines: tuple[Engine, ...] = ()
    native_default: bool = False


# --------------------------------------------------------------------------- the entries

NOISE_NAMES = ("gaussian", "shot", "impulse", "speckle", "uniform")

#: imagecorruptions' "all" in its order: the 15 benchmark (mCE) corruptions, then the 4
#: validation ones. A test holds these equal to `imagecorruptions.get_corruption_names`.
BENCHMARK_CORRUPTION_NAMES = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
VALIDATION_CORRUPTION_NAMES = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
# Native ports that did not pass the fidelity gate: `engine: auto` keeps them on reference.
NATIVE_NOT_DEFAULT = ("frost", "spatter")

L2_MAX = 16.0  # an L2 bound in [0, 1] pixel units may exceed 1
# name -> (norm, keyword hyperparameters with their defaults)
ATTACKS: dict[str, tuple[Norm, dict[str, Any]]] = {
    "fgsm": (Norm.LINF, {}),
    "linf_pgd": (Norm.LINF, {"steps": 10}),
    "l2_pgd": (Norm.L2, {"steps": 10}),
    "linf_bim": (Norm.LINF, {"steps": 10}),
    "l2_deepfool": (Norm.L2, {"steps": 50, "overshoot": 0.02}),
    "l2_cw": (Norm.L2, {"binary_search_steps": 5, "steps": 100, "stepsize": 0.01}),
    "linf_fmn": (Norm.LINF, {"steps": 100}),
    "l2_fmn": (Norm.L2, {"steps": 100}),
    "boundary": (Norm.L2, {"steps": 500, "init_directions": 100}),
    "autoattack_linf": (Norm.LINF, {"batch_size": 256}),
    "autoattack_l2": (Norm.L2, {"batch_size": 256}),
}


def _entries() -> dict[str, PerturbationSpec]:
    entries = [
        PerturbationSpec(name, Family.NOISE, StrengthAxis.EPSILON, 0.0, 1.0) for name in NOISE_NAMES
    ]
    entries += [
        PerturbationSpec(
            name,
            Family.CORRUPTION,
            StrengthAxis.SEVERITY,
            min(SEVERITIES),
            max(SEVERITIES),
            parameters={"engine": Engine.REFERENCE},
            engines=(Engine.REFERENCE, Engine.NATIVE),
            native_default=name not in NATIVE_NOT_DEFAULT,
        )
        for name in BENCHMARK_CORRUPTION_NAMES + VALIDATION_CORRUPTION_NAMES
    ]
    entries += [
        PerturbationSpec(
            name,
            Family.ADVERSARIAL,
            StrengthAxis.EPSILON,
            0.0,
            1.0 if norm is Norm.LINF else L2_MAX,
            norm=norm,
            parameters=parameters,
        )
        for name, (norm, parameters) in ATTACKS.items()
    ]
    return {entry.name: entry for entry in entries}


CATALOGUE: dict[str, PerturbationSpec] = _entries()


# --------------------------------------------------------------------------- lookups and checks


def catalogue_names(family: Family | None = None) -> list[str]:
    """The catalogued names, sorted; of one family only when `family` is given."""
    return sorted(n for n, e in CATALOGUE.items() if family is None or e.family is family)


def unknown_perturbation(name: str) -> PerturbationError:
    """The error for an unknown name: the valid names, grouped by family."""
    families = (Family.NOISE, Family.CORRUPTION, Family.ADVERSARIAL)
    valid = "; ".join(f"{f.value}: {', '.join(catalogue_names(f))}" for f in families)
    return PerturbationError(f"unknown perturbation {name!r}; valid are {valid}")


def catalogue_entry(name: str) -> PerturbationSpec:
    if name not in CATALOGUE:
        raise unknown_perturbation(name)
    return CATALOGUE[name]


def check_strength(
    name: str, axis: StrengthAxis, low: float, high: float, strength: float
) -> Strength:
    """The one check of a strength: an `int` severity, or a `float` ε within [low, high],
    else raise naming the bad value and the valid range."""
    if axis is StrengthAxis.SEVERITY:
        if strength not in SEVERITIES or isinstance(strength, bool):
            raise PerturbationError(
                f"{name}: severity {strength!r} is invalid; "
                f"valid severities: {', '.join(map(str, SEVERITIES))}"
            )
        return int(strength)  # 3.0 from a job's float strength is severity 3
    if (
        isinstance(strength, bool)
        or not isinstance(strength, int | float)
        or not (low <= strength <= high)
    ):
        raise PerturbationError(
            f"{name}: epsilon {strength!r} is out of range; valid: {low} ≤ epsilon ≤ {high}"
        )
    return float(strength)


def check_positive_parameter(name: str, parameter: str, value: Any, *, integral: bool) -> None:
    """An attack hyperparameter (steps, step sizes, overshoot, batch size) is a positive number
    of its declared kind: `steps=2.5` or `steps=True` is a mistake, not a 2."""
    kind_ok = (
        isinstance(value, int) if integral else isinstance(value, int | float)
    ) and not isinstance(value, bool)
    if not kind_ok or value <= 0:
        kind = "a positive integer" if integral else "a positive number"
        raise PerturbationError(f"{name}: {parameter} must be {kind}, got {value!r}")


def check_parameters(name: str, params: Mapping[str, Any]) -> None:
    """Keyword hyperparameters as the class's constructor would take them, without making it."""
    entry = catalogue_entry(name)
    unknown = sorted(set(params) - set(entry.parameters))
    if unknown:
        raise PerturbationError(
            f"bad parameters {dict(params)} for {name!r}: unexpected keyword argument(s) "
            f"{', '.join(map(repr, unknown))}; "
            f"valid parameters: {', '.join(entry.parameters) or 'none'}"
        )
    if entry.family is Family.ADVERSARIAL:
        for parameter, value in params.items():
            integral = isinstance(entry.parameters[parameter], int)
            check_positive_parameter(name, parameter, value, integral=integral)


def resolve_engine(
    name: str, engines: tuple[Engine, ...], native_default: bool, choice: Engine | str
) -> Engine:
    """The engine that serves `choice` for corruption `name`: `auto` is native where the native
    port passed the fidelity gate and reference elsewhere; `native` must exist."""
    try:
        engine = Engine(choice)
    except ValueError:
        raise PerturbationError(
            f"{name}: unknown corruption engine {choice!r}; "
            f"valid: {[engine.value for engine in Engine]}"
        ) from None
    if engine is Engine.AUTO:
        return Engine.NATIVE if native_default else Engine.REFERENCE
    if engine not in engines:
        native = [n for n, e in sorted(CATALOGUE.items()) if Engine.NATIVE in e.engines]
        raise PerturbationError(
            f"corruption {name!r} has no native engine; native ones: "
            f"{', '.join(native) or '(none)'}"
        )
    return engine


def engine_of(name: str, choice: Engine | str) -> Engine:
    """`resolve_engine` for a catalogued corruption."""
    entry = catalogue_entry(name)
    return resolve_engine(name, entry.engines, entry.native_default, choice)


def check_against_catalogue(entry: PerturbationSpec) -> None:
    """Raise unless `entry` (a heavy class's metadata) equals the catalogue's: called when a
    class registers, so a class and its catalogue entry can never disagree."""
    expected = CATALOGUE.get(entry.name)
    if expected is None:
        raise AssertionError(f"perturbation {entry.name!r} is not in robustness/catalogue.py")
    if entry != expected:
        differ = [
            f"{key}: class {getattr(entry, key)!r} != catalogue {getattr(expected, key)!r}"
            for key in PerturbationSpec.__dataclass_fields__
            if getattr(entry, key) != getattr(expected, key)
        ]
        raise AssertionError(
            f"perturbation {entry.name!r} disagrees with robustness/catalogue.py: "
            + "; ".join(differ)
        )
