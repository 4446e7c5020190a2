"""The answer to "Does emphasis help?", generated from the numbers and never beyond them.

`verdict(summary)` reads the family-level paired differences of summary.csv (variant − normal
on the same test images, with 95% bootstrap CIs and McNemar p-values) and says, per emphasized
variant and family, where the difference is significant: better when the whole CI is above 0
and the Holm-adjusted p (`p_holm`, over every family-level test of that variant: Holm 1979) is
below 0.05, worse when the CI is below 0 with the same p, and "no significant difference"
otherwise. The CI accounts for images that recur across a family's perturbations (a cluster
bootstrap), the adjustment for the number of tests. A run written before `p_holm` existed is
read by its CIs alone, and the verdict says so.

A variant (the normal model included) that fails a gradient-masking check (UNRELIABLE_IF_FAILED:
zero or non-finite input gradients, a logit scale off by a factor of two, black-box or
decision-based attacks beating the gradient attacks, robust accuracy rising with ε, a
minimisation attack disagreeing with FGSM) has its adversarial sentences marked "unreliable", as
RobustBench marks models whose evaluation may be broken.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import pandas as pd

from iamt.vocabulary import NORMAL, UNRELIABLE_IF_FAILED, VERDICT_FAMILIES, Family


class Outcome(StrEnum):
    BETTER = "better"
    WORSE = "worse"
    NO_DIFFERENCE = "no significant difference"


ALPHA = 0.05  # the family-wise error rate of each variant's verdict


def outcome(ci_low: float, ci_high: float, p_holm: float | None = None) -> Outcome:
    """Significant only when the 95% CI excludes 0 and, where known, the Holm-adjusted p is
    below ALPHA (None or NaN: an older run without the adjustment)."""
    if p_holm is not None and p_holm == p_holm and p_holm >= ALPHA:
        return Outcome.NO_DIFFERENCE
    if ci_low > 0:
        return Outcome.BETTER
    if ci_high < 0:
        return Outcome.WORSE
    return Outcome.NO_DIFFERENCE


def _points(value: float) -> str:
    return f"{value * 100:+.2f}"


def _label(family: str) -> str:
    labels: dict[str, str] = {
        Family.CORRUPTION: "corruptions",
        Family.ADVERSARIAL: "adversarial attacks",
        Family.TRANSFER: "attacks crafted on the normal model (transfer)",
    }
    return labels.get(family, family)


def _attribute_list(rows: pd.DataFrame) -> str:
    items = [
        f"{row.attribute} ({_points(row.difference)} points, 95% CI "
        f"[{_points(row.diff_ci_low)}, {_points(row.diff_ci_high)}])"
        for row in rows.itertuples()
    ]
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1]


def family_sentence(variant: str, family: str, rows: pd.DataFrame) -> tuple[str, Outcome | None]:
    """One sentence for one variant and family, and its overall outcome (None: mixed)."""
    adjusted = rows["p_holm"] if "p_holm" in rows.columns else pd.Series(None, index=rows.index)
    outcomes = [
        outcome(low, high, None if pd.isna(p) else float(p))
        for low, high, p in zip(rows["diff_ci_low"], rows["diff_ci_high"], adjusted, strict=True)
    ]
    rows = rows.assign(outcome=outcomes)
    parts = []
    for kind in (Outcome.BETTER, Outcome.WORSE):
        chosen = rows[rows["outcome"] == kind]
        if not chosen.empty:
            parts.append(f"significantly {kind.value} on {_attribute_list(chosen)}")
    neutral = rows[rows["outcome"] == Outcome.NO_DIFFERENCE]
    if not neutral.empty:
        names = ", ".join(neutral["attribute"].astype(str))
        parts.append(f"no significant difference on {names}")
    kinds = set(outcomes) - {Outcome.NO_DIFFERENCE}
    overall = Outcome.NO_DIFFERENCE if not kinds else (kinds.pop() if len(kinds) == 1 else None)
    return f"Under {_label(family)}, {variant} is " + "; ".join(parts) + ".", overall


def _compared(summary: pd.DataFrame) -> pd.DataFrame:
    """The family-level rows that pair an emphasized variant with the normal model."""
    needed = {"level", "variant", "family", "attribute", "difference", "diff_ci_low"}
    if not needed.issubset(summary.columns):
        summary = pd.DataFrame(columns=sorted(needed | {"diff_ci_high"}))
    return summary[
        (summary["level"] == "family")
        & summary["family"].isin(VERDICT_FAMILIES)
        & (summary["variant"] != NORMAL)
        & summary["difference"].notna()
        & summary["diff_ci_low"].notna()
    ]


def _conclusion(variant: str, overall: list[tuple[str, Outcome | None]]) -> str:
    """What one variant does, over the families: helps, hurts, mixed, or no difference."""
    helped = [_label(family) for family, result in overall if result is Outcome.BETTER]
    hurt = [_label(family) for family, result in overall if result is Outcome.WORSE]
    mixed = [_label(family) for family, result in overall if result is None]
    if not helped and not hurt and not mixed:
        return f"{variant}: no significant difference from the normal model"
    pieces = []
    if helped:
        pieces.append(f"helps under {', '.join(helped)}")
    if hurt:
        pieces.append(f"hurts under {', '.join(hurt)}")
    if mixed:
        pieces.append(f"helps some attributes and hurts others under {', '.join(mixed)}")
    return f"{variant}: " + "; ".join(pieces)


def _search_sentence(search: dict[str, Any], evaluated: set[str]) -> str:
    """Where the searched transform came from, and whether the test split has judged it."""
    chosen, name = search["chosen"], search.get("variant")
    gains = [
        f"{family} {chosen[f'{family}_gain']:+.2f}"
        for family in (Family.NOISE, Family.CORRUPTION, Family.ADVERSARIAL)
        if chosen.get(f"{family}_gain") is not None
    ]
    predicted = ", ".join(gains) or f"pooled {chosen['robustness_gain']:+.2f}"
    return (
        f" The emphasis search chose {chosen['spec']} on the validation split "
        f"(gains {predicted} points at a clean cost of {chosen['clean_cost']:+.2f} points); "
        + (
            f"the sentences on {name} above are its test-split result, on images the "
            "search never saw."
            if name in evaluated
            else "it has not been evaluated on the test split yet."
        )
    )


def unreliable(summary: pd.DataFrame) -> dict[str, list[str]]:
    """variant -> the failed masking checks, as "check (attribute)", for every variant that
    fails one; read from the family-level adversarial rows of summary.csv."""
    columns = [f"sanity_{check}" for check in UNRELIABLE_IF_FAILED]
    if not {"level", "family", *columns}.issubset(summary.columns):
        return {}
    rows = summary[(summary["level"] == "family") & (summary["family"] == Family.ADVERSARIAL)]
    failed: dict[str, list[str]] = {}
    for row in rows.sort_values(["variant", "attribute"]).itertuples():
        for check, column in zip(UNRELIABLE_IF_FAILED, columns, strict=True):
            value = getattr(row, column)
            if value is False or str(value).lower() == "false":
                failed.setdefault(str(row.variant), []).append(f"{check} ({row.attribute})")
    return failed


def _unreliable_sentence(failed: dict[str, list[str]]) -> str:
    if not failed:
        return ""
    named = "; ".join(f"{variant}: {', '.join(checks)}" for variant, checks in failed.items())
    return (
        f" Unreliable under attacks: {named}. A failed gradient-masking check means the "
        "gradient attacks may over- or under-state this model's robustness, so its adversarial "
        "sentences above, and any comparison with it, should not be trusted without a stronger "
        "or gradient-free attack."
    )


def verdict(summary: pd.DataFrame, search: dict[str, Any] | None = None) -> str:
    """The paragraph: one sentence per variant × family, a conclusion, and the caveats."""
    rows = _compared(summary)
    if rows.empty:
        return (
            "No paired comparison of an emphasized variant with the normal model is in this "
            "run yet, so the question stays open."
        )
    failed = unreliable(summary)
    suspect = set(failed) & {NORMAL}  # a masked normal model undermines every comparison
    sentences: list[str] = []
    conclusions: list[str] = []
    for variant, by_variant in rows.groupby("variant", sort=True):
        overall: list[tuple[str, Outcome | None]] = []
        marked = suspect | ({str(variant)} & set(failed))
        for family in VERDICT_FAMILIES:
            part = by_variant[by_variant["family"] == family].sort_values("attribute")
            if part.empty:
                continue
            sentence, result = family_sentence(str(variant), family, part)
            if marked and family is Family.ADVERSARIAL:
                sentence = f"(Unreliable: {', '.join(sorted(marked))}.) {sentence}"
            sentences.append(sentence)
            overall.append((family, result))
        conclusion = _conclusion(str(variant), overall)
        conclusions.append(conclusion + (" (unreliable under attacks)" if marked else ""))
    text = " ".join(sentences) + " In short, " + "; ".join(conclusions) + "."
    if search and search.get("chosen"):
        text += _search_sentence(search, set(rows["variant"]))
    return text + _unreliable_sentence(failed) + _caveat(rows)


def _caveat(rows: pd.DataFrame) -> str:
    if "p_holm" in rows.columns and rows["p_holm"].notna().any():
        tests = int(rows.groupby("variant")["p_holm"].count().max())
        return (
            f" Significant means a 95% CI that excludes 0 and a McNemar p below {ALPHA:g} "
            f"after Holm's correction over each variant's {tests} family-level tests; "
            "differences are on the same test images (paired)."
        )
    return (
        " Each CI is for one attribute and family and is not corrected for multiple "
        "comparisons (this run predates the Holm-adjusted p); differences are on the same "
        "test images (paired)."
    )
