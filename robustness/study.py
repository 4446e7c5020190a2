"""Study statistics: does an effect of emphasis hold across training seeds?

A study's members are grid points × training seeds, each a full run directory. For every grid
point × variant × family × attribute (and pooled over attributes, `all`) this module computes

- each seed's paired effect (variant − normal on the same (condition, image) pairs of its own
  results.csv) with its image bootstrap CI, as `summary.csv` computes it for one run;
- the effect across seeds (the mean of the seeds' effects) with a 95 % hierarchical bootstrap
  CI that resamples seeds, then images within each seed (`metrics.hierarchical_bootstrap`), and
  its two-sided bootstrap p-value, Holm-adjusted over every row of the table;
- sign consistency: how many seeds' own CIs lie above 0, and how many below;
- the between-seed standard deviation of the normal model's accuracy;
- and, per variant × family × attribute, the difference of effects between grid points.

Transfer rows (adversarials crafted on another variant) are left out: each family's effect is
the variant's own white-box (or model-independent) accuracy against normal's.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from iamt.rundir import STUDY_COLUMNS, STUDY_GRID_COLUMNS, STUDY_SEED_COLUMNS
from iamt.vocabulary import NORMAL, POOLED_ATTRIBUTE, StudyVerdict
from robustness.metrics import hierarchical_bootstrap, holm, paired_difference
from robustness.results import paired_outcomes

POOLED = POOLED_ATTRIBUTE  # the attribute label of a row pooled over attributes
ALPHA = 0.05  # the verdicts' family-wise error rate (Holm)
CONFIDENCE = 0.95  # of every interval
CELL_KEY = ("grid_point", "variant", "family", "attribute")  # a row of study.csv is one cell
N_BOOT = 2000
HELPS, HURTS, NO_EFFECT = StudyVerdict.HELPS, StudyVerdict.HURTS, StudyVerdict.NO_EFFECT


@dataclass(frozen=True)
class MemberResults:
    """One member's part rows (per-sample outcomes, the `outcomes` column), with where it sits
    in the study."""

    member: str
    grid_point: str
    seed: int
    results: pd.DataFrame


@dataclass(frozen=True)
class SeedCell:
    """One seed's paired outcomes in one (variant, family, attribute) cell."""

    normal_correct: np.ndarray  # (n,) bool, per (condition, image)
    variant_correct: np.ndarray  # (n,) bool, the same pairs
    image_ids: np.ndarray  # (n,) the clusters

    @property
    def differences(self) -> np.ndarray:
        """(n,) int: variant − normal, each −1, 0 or +1."""
        return self.variant_correct.astype(np.int64) - self.normal_correct.astype(np.int64)


def seed_cells(results: pd.DataFrame) -> dict[tuple[str, str, str], SeedCell]:
    """(variant, family, attribute) -> the member's paired outcomes, per attribute and pooled
    over attributes (the same image is one cluster across attributes)."""
    own = results[results["source_variant"].isna()]
    normal = own[own["variant"] == NORMAL]
    cells: dict[tuple[str, str, str], SeedCell] = {}
    for (variant, family), rows in own[own["variant"] != NORMAL].groupby(["variant", "family"]):
        pooled: list[SeedCell] = []
        for attribute, group in rows.groupby("attribute", sort=True):
            theirs = normal[(normal["family"] == family) & (normal["attribute"] == attribute)]
            paired = paired_outcomes(group, theirs)
            if paired is None:
                continue
            cell = SeedCell(*paired)
            cells[(str(variant), str(family), str(attribute))] = cell
            pooled.append(cell)
        if pooled:
            cells[(str(variant), str(family), POOLED)] = SeedCell(
                np.concatenate([c.normal_correct for c in pooled]),
                np.concatenate([c.variant_correct for c in pooled]),
                np.concatenate([c.image_ids for c in pooled]),
            )
    return cells


def _seed_row(
    member: MemberResults, key: tuple[str, str, str], cell: SeedCell
) -> dict[str, object]:
    variant, family, attribute = key
    normal = cell.normal_correct
    comparison = paired_difference(normal, cell.variant_correct, clusters=cell.image_ids)
    return {
        "grid_point": member.grid_point,
        "seed": member.seed,
        "member": member.member,
        "variant": variant,
        "family": family,
        "attribute": attribute,
        "effect": float(cell.differences.mean()),
        "ci_low": comparison.ci_low,
        "ci_high": comparison.ci_high,
        "normal_accuracy": float(normal.mean()),
    }


def verdict(effect: float, p_holm: float) -> str:
    if np.isnan(p_holm) or p_holm >= ALPHA:
        return NO_EFFECT.value
    return (HELPS if effect > 0 else HURTS if effect < 0 else NO_EFFECT).value


@dataclass
class StudyTables:
    study: pd.DataFrame  # STUDY_COLUMNS
    seeds: pd.DataFrame  # STUDY_SEED_COLUMNS
    grid: pd.DataFrame  # STUDY_GRID_COLUMNS


def study_tables(members: Sequence[MemberResults], *, n_boot: int = N_BOOT) -> StudyTables:
    """The study's three tables from its members' results (see the module docstring)."""
    seed_rows: list[dict[str, object]] = []
    grouped: dict[tuple[str, str, str, str], list[tuple[SeedCell, dict[str, object]]]] = {}
    for member in members:
        for key, cell in seed_cells(member.results).items():
            row = _seed_row(member, key, cell)
            seed_rows.append(row)
            grouped.setdefault((member.grid_point, *key), []).append((cell, row))
    rows, replicates = [], {}
    for index, (cell_key, entries) in enumerate(sorted(grouped.items())):
        cells = [cell for cell, _ in entries]
        # A seed per cell: the grid comparison treats the cells' bootstraps as independent.
        effect = hierarchical_bootstrap(
            [c.differences for c in cells],
            [c.image_ids for c in cells],
            n_boot=n_boot,
            seed=index,
            confidence=CONFIDENCE,
        )
        replicates[cell_key] = effect.replicates
        mine = pd.DataFrame([row for _, row in entries])  # this cell's seeds
        accuracy = mine["normal_accuracy"]
        rows.append(
            {
                **dict(
                    zip(("grid_point", "variant", "family", "attribute"), cell_key, strict=True)
                ),
                "n_seeds": len(cells),
                "effect": effect.effect,
                "ci_low": effect.ci_low,
                "ci_high": effect.ci_high,
                "p_value": effect.p_value,
                "seeds_above_0": int((mine["ci_low"] > 0).sum()),
                "seeds_below_0": int((mine["ci_high"] < 0).sum()),
                "normal_accuracy": float(accuracy.mean()),
                "normal_accuracy_sd": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else np.nan,
            }
        )
    seeds = pd.DataFrame(seed_rows, columns=STUDY_SEED_COLUMNS)
    study = pd.DataFrame(rows, columns=[c for c in STUDY_COLUMNS if c not in ("p_holm", "verdict")])
    study["p_holm"] = holm(study["p_value"].to_numpy()) if len(study) else []
    study["verdict"] = [
        verdict(e, p) for e, p in zip(study["effect"], study["p_holm"], strict=True)
    ]
    return StudyTables(study[STUDY_COLUMNS], seeds, grid_differences(study, replicates))


def grid_differences(
    study: pd.DataFrame, replicates: dict[tuple[str, str, str, str], np.ndarray]
) -> pd.DataFrame:
    """Effect at grid point b − effect at grid point a, per variant × family × attribute, with
    the percentile CI of the difference of the two (independent) hierarchical bootstraps."""
    rows = []
    for (variant, family, attribute), cells in study.groupby(
        ["variant", "family", "attribute"], sort=True
    ):
        points = list(cells.itertuples())
        for first, second in itertools.combinations(points, 2):
            difference = (
                replicates[(second.grid_point, variant, family, attribute)]
                - replicates[(first.grid_point, variant, family, attribute)]
            )
            tail = (1 - CONFIDENCE) / 2
            low, high = np.quantile(difference, [tail, 1 - tail])
            rows.append(
                {
                    "variant": variant,
                    "family": family,
                    "attribute": attribute,
                    "grid_point_a": first.grid_point,
                    "grid_point_b": second.grid_point,
                    "difference": second.effect - first.effect,
                    "ci_low": float(low),
                    "ci_high": float(high),
                }
            )
    return pd.DataFrame(rows, columns=STUDY_GRID_COLUMNS)
