"""Emphasis search: which mask transform buys the most robustness for the least clean accuracy.

The measurement of `iamt search` (Ray Tune drives it: `cluster/search.py`). No retraining: every
candidate is the trained model seen through another mask transform T (`iamt/transforms.py`).

1. `candidate_specs`: the grid of `search.space` (and its `compose` chains), a seeded sample of
   it when larger than `max_trials`, and always `identity`, the normal model, as the baseline.
2. `validation_set`: the **validation** split — never the test split, which the sweep reports
   on — clean and perturbed once, so every trial classifies exactly the same images. The
   conditions are by default the sweep's own, every family across its strengths (a seeded
   sample of `conditions_per_family` of each), perturbed by the sweep's own code
   (`robustness.jobs.perturb`) with the sweep's engine choice for each corruption.
3. `measure`: one candidate's clean accuracy, its mean accuracy over all perturbed sets and
   over each family's, and, optionally, its robust accuracy under one attack at one ε; all in
   points (0–100).
4. `summarize`: clean cost and gains against `identity` (pooled and per family), the Pareto
   front over (clean cost, each family's gain), and the choice by `search.rule`: by default
   the best worst-family gain (`max_min_gain`), else a weighted mean of the family gains or
   the pooled gain, among the transforms that cost at most `max_clean_cost` clean points and
   lose at most `max_family_loss` points in any family (ties: the cheaper, then by spec). A
   pooled score let one family's gain hide another's loss: the search chose a transform that
   helped corruptions and hurt noise on the test split.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from iamt.config import ConfigError
from iamt.data import AttributeDataset, as_tensors
from iamt.model import AttentionNet, feature_channels
from iamt.rundir import SEARCH_COLUMNS, SEARCH_REPORT, RunDirectory
from iamt.variants import parse_spec, variant_model
from iamt.vocabulary import IDENTITY, Family
from robustness.config import SEARCHED_FAMILIES, EvaluationConfig, SearchConfig, SearchRule
from robustness.front import front_variants, variant_names
from robustness.jobs import attack_attribute, corruption_params, perturb, predict_all
from robustness.perturbations import Attack, create_perturbation

RULES = {
    SearchRule.MAX_MIN_GAIN: "the largest worst-family gain (validation, points; a family's gain "
    "is the change in its mean accuracy over its perturbed sets)",
    SearchRule.WEIGHTED: "the largest weighted mean of the family gains (validation, points; "
    "weights {weights})",
    SearchRule.POOLED: "the largest gain in mean accuracy over every perturbed set (validation, "
    "points)",
}
RULE_LIMITS = (
    " among the transforms whose clean cost is at most {max_clean_cost:g} point(s) and that lose "
    "at most {max_family_loss:g} point(s) in any family; ties go to the smaller clean cost, "
    "then to the spec"
)


# --------------------------------------------------------------------------- candidates


def _grid(transform: str, parameters: Mapping[str, Sequence[float]]) -> list[str]:
    """Every spec of one transform's grid, e.g. topk {k: [4, 8], alpha: [2]} -> 2 specs."""
    names = sorted(parameters)
    return [
        f"{transform}:"
        + ",".join(f"{name}={value:g}" for name, value in zip(names, values, strict=True))
        for values in itertools.product(*(parameters[name] for name in names))
    ]


def candidate_specs(config: EvaluationConfig) -> list[str]:
    """`identity` first, then the grid (or a seeded sample of it), each validated against the
    model's channel count: a bad name, parameter or k fails here, before any work, as does a
    search with no condition to measure."""
    try:
        config.check_search_conditions()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    search = config.search
    grids = {name: _grid(name, parameters) for name, parameters in search.space.items()}
    specs = [spec for name in sorted(grids) for spec in grids[name]]
    for chain in search.compose:
        specs += ["+".join(parts) for parts in itertools.product(*(grids[n] for n in chain))]
    channels = feature_channels(config.model.backbone, config.model.widths)
    for spec in specs:
        parse_spec(spec, channels, "search.space")
    specs = sorted(set(specs) - {IDENTITY})
    if len(specs) > search.max_trials - 1:  # a seeded sample, so a rerun searches the same
        specs = sorted(random.Random(config.seed).sample(specs, search.max_trials - 1))
    return [IDENTITY, *specs]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ValidationSet:
    """What every trial classifies: validation images, clean and perturbed once."""

    images: Tensor  # (N, 3, H, W) clean validation images
    labels: Tensor  # (N, A)
    perturbed: dict[str, Tensor]  # "gaussian@0.1" -> (N, 3, H, W), the same N images
    sha256: str  # of the clean images' bytes: which images the search saw
    families: dict[str, Family]  # "gaussian@0.1" -> noise

    @property
    def n(self) -> int:
        return len(self.images)

    def to(self, device: torch.device) -> ValidationSet:
        """Images on `device` (where the model runs); labels stay on the CPU, where
        `predict_all` returns its predictions."""
        perturbed = {label: images.to(device) for label, images in self.perturbed.items()}
        return ValidationSet(
            self.images.to(device), self.labels, perturbed, self.sha256, self.families
        )


def images_sha256(images: Tensor) -> str:
    return hashlib.sha256(images.contiguous().cpu().numpy().tobytes()).hexdigest()


Condition = tuple[Family, str, tuple[tuple[str, Any], ...], int | float]


def search_conditions(config: EvaluationConfig, seed: int) -> list[Condition]:
    """(family, name, params, strength) of every perturbed set: each family's name × strength
    grid (the search's own lists, else the sweep's), a seeded sample of
    `search.conditions_per_family` of it when larger, in grid order."""
    types, strengths = config.search_noise()
    names, severities = config.search_corruptions()
    grids: list[list[Condition]] = [
        [(Family.NOISE, n, (), s) for n in types for s in strengths],
        [
            (Family.CORRUPTION, n, corruption_params(config.robustness.corruptions, n), s)
            for n in names
            for s in severities
        ],
    ]
    cap = config.search.conditions_per_family
    chosen: list[Condition] = []
    for grid in grids:
        if len(grid) > cap:
            keep = sorted(random.Random(seed).sample(range(len(grid)), cap))
            grid = [grid[k] for k in keep]
        chosen += grid
    return chosen


def validation_set(config: EvaluationConfig, val_set: AttributeDataset, seed: int) -> ValidationSet:
    """The first `search.n_samples` validation images, and each condition's perturbation of
    them, seeded from the run seed and the condition (not from the order of the list)."""
    images, labels = as_tensors(val_set, config.search.n_samples)
    perturbed, families = {}, {}
    for family, name, params, strength in search_conditions(config, seed):
        label = f"{name}@{strength:g}"
        condition_seed = int(hashlib.sha256(f"{seed}/{label}".encode()).hexdigest()[:8], 16)
        perturbed[label] = perturb(name, params, images, strength, seed=condition_seed)
        families[label] = family
    return ValidationSet(images, labels, perturbed, images_sha256(images), families)


# --------------------------------------------------------------------------- one trial


def _accuracy(model: torch.nn.Module, images: Tensor, labels: Tensor, batch_size: int) -> float:
    """Mean accuracy over attributes, in points."""
    correct = predict_all(model, images, batch_size) == labels  # (N, A)
    return float(correct.double().mean()) * 100


def measure(
    model: AttentionNet,
    importance: Tensor,
    spec: str,
    data: ValidationSet,
    search: SearchConfig,
    seed: int,
) -> dict[str, Any]:
    """One candidate on the validation set: clean, perturbed and (optionally) attacked."""
    channels = model.num_channels
    candidate = variant_model(model, parse_spec(spec, channels, "search"), importance).eval()
    robust = {
        label: _accuracy(candidate, images, data.labels, search.batch_size)
        for label, images in data.perturbed.items()
    }
    metrics: dict[str, Any] = {
        "spec": spec,
        "clean_accuracy": _accuracy(candidate, data.images, data.labels, search.batch_size),
        "robust_accuracy": sum(robust.values()) / len(robust),
        "adversarial_accuracy": float("nan"),
    }
    for family in (Family.NOISE, Family.CORRUPTION):
        mine = [value for label, value in robust.items() if data.families[label] is family]
        metrics[f"{family}_accuracy"] = sum(mine) / len(mine) if mine else float("nan")
    if search.attack is not None:
        metrics["adversarial_accuracy"] = _attacked_accuracy(candidate, data, search, seed)
    return metrics


def _attacked_accuracy(
    model: torch.nn.Module, data: ValidationSet, search: SearchConfig, seed: int
) -> float:
    """Robust accuracy (points) under the configured attack at its ε, one attribute at a time,
    with the same seed for every candidate: they face the same random starts."""
    assert search.attack is not None
    attack = create_perturbation(search.attack.name, **search.attack.params)
    assert isinstance(attack, Attack)
    epsilon = search.attack.epsilon
    with torch.enable_grad():
        clean = predict_all(model, data.images, search.batch_size) == data.labels  # (N, A)
        robust = []
        for a in range(data.labels.shape[1]):
            _, success = attack_attribute(attack, model, data.images, data.labels, a, epsilon, seed)
            robust.append(clean[:, a] & ~success)
    return float(torch.stack(robust, 1).double().mean()) * 100


# --------------------------------------------------------------------------- the result


def pareto_front(cost: Sequence[float], *gains: Sequence[float]) -> list[bool]:
    """True where no other point costs no more and gains no less in every objective, one of
    them strictly (NaN gains, families not measured, are left out)."""
    points = [(c, *g) for c, *g in zip(cost, *gains, strict=True)]
    objectives = [k for k in range(1, len(points[0])) if not any(p[k] != p[k] for p in points)]

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        no_worse = a[0] <= b[0] and all(a[k] >= b[k] for k in objectives)
        return no_worse and (a[0] < b[0] or any(a[k] > b[k] for k in objectives))

    return [not any(dominates(q, p) for q in points if q is not p) for p in points]


def summarize(trials: Sequence[Mapping[str, Any]], search: SearchConfig) -> pd.DataFrame:
    """One row per trial (sorted by spec, whatever order they finished in), with the cost and
    the gains against `identity` (pooled and per family), the worst family's gain, the rule's
    score, the Pareto flags over (cost, family gains) and the choice (`SEARCH_COLUMNS`)."""
    table = pd.DataFrame(list(trials)).sort_values("spec", ignore_index=True)
    if IDENTITY not in set(table["spec"]):
        raise ValueError("the search has no identity trial to compare against")
    for family in SEARCHED_FAMILIES:
        if f"{family}_accuracy" not in table:  # a family not measured
            table[f"{family}_accuracy"] = float("nan")
    baseline = table.set_index("spec").loc[IDENTITY]
    table["clean_cost"] = baseline["clean_accuracy"] - table["clean_accuracy"]
    table["robustness_gain"] = table["robust_accuracy"] - baseline["robust_accuracy"]
    gains = []
    for family in SEARCHED_FAMILIES:
        column = f"{family}_gain"
        table[column] = table[f"{family}_accuracy"] - baseline[f"{family}_accuracy"]
        if table[column].notna().all():
            gains.append(column)
    table["worst_family_gain"] = table[gains].min(axis=1)
    table["score"] = _score(table, gains, search)
    table["pareto"] = pareto_front(
        table["clean_cost"].tolist(), *(table[g].tolist() for g in gains)
    )
    eligible = table[
        (table["spec"] != IDENTITY)
        & (table["clean_cost"] <= search.max_clean_cost)
        & ~(table["worst_family_gain"] < -search.max_family_loss)  # NaN: no family measured
    ]
    table["chosen"] = False
    if not eligible.empty:
        best = eligible.sort_values(
            ["score", "clean_cost", "spec"], ascending=[False, True, True]
        ).index[0]
        table.loc[best, "chosen"] = True
    table["variant"] = variant_names(table, search)
    table["test_clean_cost"] = float("nan")  # filled after the test sweep (robustness.front)
    table["test_robustness_gain"] = float("nan")
    return table[SEARCH_COLUMNS]


def _score(table: pd.DataFrame, gains: list[str], search: SearchConfig) -> pd.Series:
    if search.rule is SearchRule.POOLED or not gains:
        return table["robustness_gain"]
    if search.rule is SearchRule.MAX_MIN_GAIN:
        return table["worst_family_gain"]
    weights = pd.Series(
        {g: search.weights.get(Family(g.removesuffix("_gain")), 1.0) for g in gains}
    )
    if weights.sum() <= 0:
        raise ConfigError("search.weights: the measured families' weights sum to 0")
    return (table[gains] * weights).sum(axis=1) / weights.sum()


def search_report(
    table: pd.DataFrame, search: SearchConfig, data: ValidationSet, val_size: int
) -> dict[str, Any]:
    """search.json: the split and images searched on, the rule, the front and the choice."""

    def record(row: pd.Series) -> dict[str, Any]:
        """A trial as JSON: NaN -> null, floats to 6 decimals (as search.csv shows them)."""
        return {
            key: (
                (None if value != value else round(value, 6)) if isinstance(value, float) else value
            )
            for key, value in row.items()
            if key not in ("pareto", "chosen")
        }

    chosen = table[table["chosen"]]
    choice = record(chosen.iloc[0]) if not chosen.empty else None
    return {
        "split": "val",
        "n": data.n,
        "val_size": val_size,
        "images_sha256": data.sha256,
        "conditions": sorted(data.perturbed),
        "attack": None if search.attack is None else search.attack.model_dump(mode="json"),
        "rule": rule_text(search),
        "rule_name": search.rule.value,
        "max_clean_cost": search.max_clean_cost,
        "max_family_loss": search.max_family_loss,
        "baseline": record(table[table["spec"] == IDENTITY].iloc[0]),
        "front": [record(row) for _, row in table[table["pareto"]].iterrows()],
        "chosen": choice,
        "variant": search.variant if choice is not None else None,
        "helps_on_validation": bool(choice is not None and choice["score"] > 0),
        "search_config": search.model_dump(mode="json"),
    }


def rule_text(search: SearchConfig) -> str:
    weights = {str(family): weight for family, weight in search.weights.items()} or "1 each"
    return RULES[search.rule].format(weights=weights) + RULE_LIMITS.format(
        max_clean_cost=search.max_clean_cost, max_family_loss=search.max_family_loss
    )


def searched_variants(run_dir: Path, config: EvaluationConfig) -> dict[str, str]:
    """{variant name: spec} of the searched transform the sweep evaluates on the test split
    and, with `search.evaluate_front`, of the other front members (front-1, …); empty when the
    config asks for no search, and without the choice when the search chose nothing."""
    if not config.search.enabled:
        return {}
    run = RunDirectory(run_dir)
    report = run.read_json(SEARCH_REPORT)
    if report is None:
        raise ConfigError(
            f"search.enabled is true but {run.search_report} does not exist: run "
            f"`iamt search {run_dir}` (or `iamt run`, which searches before the sweep)"
        )
    if report.get("search_config") != config.search.model_dump(mode="json"):
        raise ConfigError(
            f"{run.search_report} was searched with another search config: run "
            f"`iamt search {run_dir}` again"
        )
    chosen = report.get("chosen")
    choice = {} if chosen is None else {str(report["variant"]): str(chosen["spec"])}
    return {**choice, **front_variants(report)}


def search_is_current(run_dir: Path, config: EvaluationConfig) -> bool:
    """Whether the run already holds this very search's result (so a rerun skips it)."""
    try:
        searched_variants(run_dir, config)
    except ConfigError:
        return False
    return True
