"""The emphasis search: its candidates, Pareto front and rule (pure), and `iamt search` on Ray
Tune end to end: validation data only, the same table as measuring each candidate in this
process, and the chosen transform evaluated by the next sweep as one more variant."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from cluster.cli import execute
from cluster.config import parse_config
from iamt.config import ConfigError
from iamt.data import Split, as_tensors, load_split
from robustness.jobs import corruption_params, perturb
from robustness.runner import load_trained
from robustness.search import (
    IDENTITY,
    candidate_specs,
    images_sha256,
    measure,
    pareto_front,
    search_conditions,
    summarize,
    validation_set,
)
from tests.conftest import TINY

SEARCH: dict[str, Any] = {
    "space": {"topk": {"k": [2, 4], "alpha": [2.0]}, "power": {"gamma": [0.5]}},
    "compose": [["topk", "power"]],
    "n_samples": 48,
    "batch_size": 48,
    "noise_types": ["gaussian"],
    "noise_strengths": [0.1],
    "corruptions": ["pixelate"],
    "severities": [3],
    "attack": {"name": "fgsm", "epsilon": 0.03},
    "max_clean_cost": 5.0,
    "evaluate_front": True,
}


def test_candidates_are_the_grid_and_its_compositions_with_identity_first() -> None:
    config = parse_config({**TINY, "search": SEARCH})
    assert candidate_specs(config) == [
        IDENTITY,
        "power:gamma=0.5",
        "topk:alpha=2,k=2",
        "topk:alpha=2,k=2+power:gamma=0.5",
        "topk:alpha=2,k=4",
        "topk:alpha=2,k=4+power:gamma=0.5",
    ]
    sampled = parse_config({**TINY, "search": {**SEARCH, "max_trials": 3}})
    first = candidate_specs(sampled)
    assert len(first) == 3 and first[0] == IDENTITY and first == candidate_specs(sampled)


@pytest.mark.parametrize(
    ("search", "fragment"),
    [
        ({"space": {"topk": {"k": [99], "alpha": [2]}}}, "k=99"),
        ({"space": {"sharpen": {"k": [2]}}}, "sharpen"),
        ({"space": {"topk": {"k": [2], "gain": [2]}}}, "gain"),
        ({"compose": [["topk", "power"]], "space": {"topk": {"k": [2], "alpha": [2]}}}, "power"),
        ({"corruptions": ["fogg"]}, "fogg"),
        ({"attack": {"name": "fgsm", "epsilon": -1}}, "epsilon"),
    ],
)
def test_a_bad_search_space_is_refused_before_any_work(
    search: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        candidate_specs(parse_config({**TINY, "search": search}))


def test_the_pareto_front_and_the_rule() -> None:
    # (cost, gain): b dominates c; a and b and d trade cost for gain.
    assert pareto_front([0, 0.5, 0.6, 3], [0, 1, 0.9, 2]) == [True, True, False, True]
    trials = [
        {"spec": IDENTITY, "clean_accuracy": 90, "robust_accuracy": 50},
        {"spec": "a", "clean_accuracy": 89.5, "robust_accuracy": 51},  # cost 0.5, gain 1
        {"spec": "b", "clean_accuracy": 89.5, "robust_accuracy": 51},  # a tie: by spec
        {"spec": "c", "clean_accuracy": 87, "robust_accuracy": 53},  # gain 3, cost 3: too dear
    ]
    for trial in trials:  # both families move as the pooled accuracy does: every rule agrees
        trial.update(
            noise_accuracy=trial["robust_accuracy"],
            corruption_accuracy=trial["robust_accuracy"],
            adversarial_accuracy=float("nan"),
        )
    strict = parse_config({**TINY, "search": {**SEARCH, "max_clean_cost": 1.0}}).search
    chosen = summarize(trials, strict).set_index("spec")["chosen"]
    assert chosen.to_dict() == {IDENTITY: False, "a": True, "b": False, "c": False}
    loose = summarize(trials, parse_config({**TINY, "search": SEARCH}).search)
    assert loose.set_index("spec")["chosen"].to_dict()["c"]  # within 5 points: the biggest gain
    nothing = parse_config({**TINY, "search": {**SEARCH, "max_clean_cost": 0.1}}).search
    assert not summarize(trials, nothing)["chosen"].any()  # identity is never "chosen"


@pytest.mark.e2e
def test_iamt_search_on_tune_uses_validation_only_and_feeds_the_sweep(
    tiny_run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**TINY, "search": SEARCH}))
    config = parse_config({**TINY, "search": SEARCH})

    import cluster.search

    splits: list[Split] = []

    def validation_only(data: Any, split: Split, seed: int) -> Any:
        splits.append(split)
        if split is Split.TEST:
            raise AssertionError("the search touched the test split")
        return load_split(data, split, seed)

    monkeypatch.setattr(cluster.search, "load_split", validation_only)
    assert execute(["search", str(run_dir), "--quiet", "--set", "search.max_trials=6"]) == 0
    assert splits == [Split.VAL]

    table = pd.read_csv(run_dir / "search.csv", keep_default_na=False)
    report = json.loads((run_dir / "search.json").read_text())
    # The images searched on are the validation split's, not the test split's.
    val_images, _ = as_tensors(load_split(config.data, Split.VAL, config.seed), 48)
    test_images, _ = as_tensors(load_split(config.data, Split.TEST, config.seed), 48)
    assert report["images_sha256"] == images_sha256(val_images) != images_sha256(test_images)
    assert report["split"] == "val" and report["n"] == 48
    # Tune's trials give exactly what measuring every candidate here gives, in any order.
    model, importance = load_trained(run_dir)
    data = validation_set(config, load_split(config.data, Split.VAL, config.seed), 3)
    local = summarize(
        [
            measure(model, importance, spec, data, config.search, 3)
            for spec in candidate_specs(config)
        ],
        config.search,
    )
    expected = local.to_csv(index=False, lineterminator="\n", float_format="%.6g")
    assert (run_dir / "search.csv").read_text() == expected
    assert len(table) == 6 and table["spec"].iloc[0] == IDENTITY
    assert table["pareto"].astype(str).eq("True").any()
    chosen = report["chosen"]
    assert chosen is not None and chosen["clean_cost"] <= 5.0
    assert report["variant"] == "searched" and report["front"]
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert stored["search"]["enabled"] is True and stored["search"]["max_trials"] == 6

    # The next sweep evaluates the chosen transform on the test split as variant "searched".
    assert (
        execute(
            [
                "evaluate",
                str(run_dir),
                "--quiet",
                "--set",
                "robustness.corruptions.names=[]",
                "--set",
                "robustness.attacks.methods=[]",
                "--set",
                "robustness.noise.types=[gaussian]",
                "--set",
                "robustness.noise.n_samples=32",
            ]
        )
        == 0
    )
    results = pd.read_csv(run_dir / "results.csv")
    front = {m["variant"] for m in report["front"] if m["variant"].startswith("front-")}
    assert front == {f"front-{k}" for k in range(1, len(front) + 1)}
    assert set(results["variant"]) == {"normal", "emphasized", "searched", *front}
    # The front, re-measured on the test sweep: the same two quantities as on validation.
    remeasured = pd.read_csv(run_dir / "search.csv", keep_default_na=False).set_index("variant")
    clean_rows = results[results["family"] == "clean"].groupby("variant")
    clean = 100 * clean_rows["correct"].sum() / clean_rows["n"].sum()  # pooled over attributes
    for variant in ["searched", *front]:
        expected_cost = clean["normal"] - clean[variant]
        assert float(remeasured.loc[variant, "test_clean_cost"]) == pytest.approx(
            expected_cost, abs=1e-4
        )
        assert remeasured.loc[variant, "test_robustness_gain"] != ""
    assert float(remeasured.loc["normal", "test_clean_cost"]) == 0.0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["search_seconds"] > 0


@pytest.mark.parametrize("engine", ["reference", "native"])
def test_the_search_corrupts_with_the_sweeps_engine_choice(engine: str) -> None:
    """The search's perturbed set comes from the sweep's own `perturb`, with the engine the
    sweep would use for each corruption, overrides included (an earlier search ignored
    `engine_overrides` and could corrupt with another engine than the sweep)."""
    search = {**SEARCH, "corruptions": ["fog"], "severities": [2], "noise_types": []}
    robustness = {"corruptions": {"names": ["fog"], "engine_overrides": {"fog": engine}}}
    config = parse_config({**TINY, "search": search, "robustness": robustness})
    val_set = load_split(config.data, Split.VAL, config.seed)
    data = validation_set(config, val_set, config.seed)
    params = corruption_params(config.robustness.corruptions, "fog")
    assert dict(params).get("engine", "reference") == engine
    images, _ = as_tensors(val_set, config.search.n_samples)
    label = "fog@2"
    seed = int(hashlib.sha256(f"{config.seed}/{label}".encode()).hexdigest()[:8], 16)
    expected = perturb("fog", params, images, 2, seed=seed)
    assert torch.equal(data.perturbed[label], expected)
    other = "native" if engine == "reference" else "reference"
    other_engine = perturb("fog", (("engine", other),), images, 2, seed=seed)
    assert not torch.equal(data.perturbed[label], other_engine)


def _family_trials() -> list[dict[str, Any]]:
    """`pooled` gains most on average by losing noise; `balanced` gains a little in both."""
    rows = [
        # spec, clean, noise, corruption (points); 3 noise and 9 corruption sets pooled
        (IDENTITY, 90.0, 60.0, 70.0),
        ("pooled", 90.0, 57.0, 76.0),  # noise -3, corruption +6: pooled +3.75
        ("balanced", 90.0, 61.0, 71.0),  # +1 and +1: pooled +1
    ]
    return [
        {
            "spec": spec,
            "clean_accuracy": clean,
            "noise_accuracy": noise,
            "corruption_accuracy": corruption,
            "robust_accuracy": (3 * noise + 9 * corruption) / 12,
            "adversarial_accuracy": float("nan"),
        }
        for spec, clean, noise, corruption in rows
    ]


@pytest.mark.parametrize(
    ("rule", "extra", "expected"),
    [
        ("pooled", {"max_family_loss": 10.0}, "pooled"),  # today's rule trades noise away
        ("pooled", {}, "balanced"),  # ... unless the guard (2 points by default) stops it
        ("max_min_gain", {"max_family_loss": 10.0}, "balanced"),  # the worst family decides
        ("weighted", {"weights": {"noise": 1.0, "corruption": 1.0}}, "balanced"),
        ("weighted", {"weights": {"noise": 0.0}, "max_family_loss": 10.0}, "pooled"),
    ],
)
def test_the_rule_does_not_trade_one_family_away(
    rule: str, extra: dict[str, Any], expected: str
) -> None:
    search = parse_config({**TINY, "search": {**SEARCH, "rule": rule, **extra}}).search
    table = summarize(_family_trials(), search).set_index("spec")
    assert table.index[table["chosen"]].tolist() == [expected]
    assert table.loc["pooled", "noise_gain"] == -3 and table.loc["pooled", "corruption_gain"] == 6
    assert table.loc["pooled", "worst_family_gain"] == -3
    assert table.loc["balanced", "pareto"] and table.loc["pooled", "pareto"]  # neither dominates


def test_the_pareto_front_is_over_every_family_s_gain() -> None:
    # Same cost; b is better in one family and worse in the other than a: both on the front.
    assert pareto_front([0, 1, 1], [0, 2, 1], [0, 1, 2]) == [True, True, True]
    assert pareto_front([0, 1, 1], [0, 2, 1], [0, 2, 1]) == [True, True, False]
    nan = float("nan")
    assert pareto_front([0, 1], [0, 1], [nan, nan]) == [True, True]  # unmeasured: left out


def test_the_search_samples_the_sweep_s_own_conditions_by_default() -> None:
    config = parse_config(
        {
            **TINY,
            "search": {k: v for k, v in SEARCH.items() if k not in ("noise_types", "corruptions")},
            "robustness": {
                "noise": {"types": ["gaussian", "shot"], "strengths": [0.02, 0.1]},
                "corruptions": {"names": ["fog", "pixelate"], "severities": [1, 3, 5]},
            },
        }
    )
    conditions = search_conditions(config, seed=3)
    noise = [(c[1], c[3]) for c in conditions if c[0] == "noise"]
    assert noise == [("gaussian", 0.1), ("shot", 0.1)]  # search.noise_strengths, sweep's types
    corruption = {(c[1], c[3]) for c in conditions if c[0] == "corruption"}
    assert corruption == {("fog", 3), ("pixelate", 3)}  # the sweep's corruptions at [3]
    wide = config.model_copy(
        update={
            "search": config.search.model_copy(
                update={"severities": None, "noise_strengths": None, "conditions_per_family": 4}
            )
        }
    )
    sampled = search_conditions(wide, seed=3)
    assert sum(c[0] == "noise" for c in sampled) == 4  # the whole 2 × 2 grid
    corruptions = [(c[1], c[3]) for c in sampled if c[0] == "corruption"]
    assert len(corruptions) == 4 and set(corruptions) < {
        (n, s) for n in ("fog", "pixelate") for s in (1, 3, 5)
    }
    assert search_conditions(wide, seed=3) == sampled  # seeded


def test_a_search_with_nothing_to_measure_is_refused_before_any_work() -> None:
    nothing = {"noise": {"types": []}, "corruptions": {"names": []}}
    with pytest.raises(ConfigError, match="no noise and no corruption to measure"):
        parse_config({**TINY, "search": {"enabled": True}, "robustness": nothing})
    disabled = parse_config({**TINY, "robustness": nothing})  # a sweep without a search is fine
    with pytest.raises(ConfigError, match="no noise and no corruption to measure"):
        candidate_specs(disabled)  # what `iamt search` checks first
