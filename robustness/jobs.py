"""Jobs: frozen specs of one unit of robustness work, and the pure function that runs one.

A `Job` names a data shard, a perturbation, its strength and the variants to evaluate. Its
`job_id` is a stable hash of the spec, and its seed is derived from that hash, so the same
config always yields the same jobs, ids and random draws — in one process or on Ray, in any
order. `run_job(job, models, images, labels)` is pure: given the same inputs it returns the
same rows.

- clean, noise and corruption jobs perturb the shard once and evaluate every variant on it;
  variants that are views of one AttentionNet share its trunk and attention pass per batch
  (`iamt.variants.SharedVariants`), with outputs bit-identical to one forward per variant;
- fixed-ε attack jobs craft adversarials against each variant itself (one attribute at a
  time) and, when `transfer` is on, evaluate them on every other variant (`transfer` rows,
  again one shared pass for all the targets);
- minimisation attack jobs find each sample's smallest adversarial perturbation once and
  report robust accuracy at every configured ε from those distances.

Each row carries `outcomes`: the per-sample correctness as a '0'/'1' string over the shard.
It stays in the part files (not in results.csv) and lets the summary pair variants sample by
sample (bootstrap CIs, McNemar).

Rows also carry the attention drift of their variant and attribute (`robustness.drift`):
`mask_cosine` and `importance_rank_correlation` between the masks on the clean shard and on the
perturbed one. Noise and corruption rows compare the shard with its perturbed version, white-box
rows of fixed-ε attacks with the adversarials crafted on that variant for that attribute. Clean,
transfer and minimisation-attack rows leave them empty (no single perturbed image set).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from iamt.variants import SharedVariants
from iamt.vocabulary import NO_PERTURBATION, Engine, Family, StrengthAxis
from robustness.config import (
    AttackConfig,
    AttacksConfig,
    CorruptionConfig,
    Precision,
    RobustnessConfig,
)
from robustness.drift import MaskDrift, mask_drift, predict_variants_with_drift
from robustness.metrics import attack_success_rate, median_distance
from robustness.perturbations import (
    Attack,
    FixedEpsilonAttack,
    ImagePerturbation,
    MinimisationAttack,
    create_perturbation,
    get_perturbation_class,
)
from robustness.perturbations.attacks import attribute_view
from robustness.precision import autocast

# Images of each shard the attention drift is measured on, unless the config says otherwise.
DRIFT_SAMPLES: int = RobustnessConfig.model_fields["drift_samples"].default
Params = tuple[tuple[str, Any], ...]  # a perturbation's keyword parameters, sorted by name


@dataclass(frozen=True)
class Job:
    family: Family
    perturbation: str  # registry name, or "none" for clean
    shard_start: int  # samples [shard_start, shard_stop) of the evaluation split
    shard_stop: int
    variants: tuple[str, ...]
    attribute_names: tuple[str, ...]
    run_seed: int
    strength: int | float | None = None  # severity (int) or ε; None: clean / minimisation
    epsilons: tuple[float, ...] = ()  # minimisation attacks: report at each of these
    params: Params = ()  # perturbation hyperparameters, sorted by name
    transfer: bool = False
    batch_size: int = 500
    precision: Precision = Precision.FP32  # robustness.precision

    def spec(self) -> dict[str, Any]:
        spec = asdict(self)
        spec["family"] = self.family.value
        if self.strength is not None:
            # The hashed form writes every strength as a float, as ids (and the seeds derived
            # from them) have always been computed: a severity 3 hashes as 3.0.
            spec["strength"] = float(self.strength)
        # fp32 jobs keep the ids they had before there was a choice; a bf16 job says so.
        if self.precision is Precision.FP32:
            del spec["precision"]
        else:
            spec["precision"] = self.precision.value
        return spec

    @property
    def axis(self) -> StrengthAxis:
        """The column of this job's strength: its perturbation's own axis (clean: none, so
        either; epsilon is as good as any)."""
        if self.family is Family.CLEAN:
            return StrengthAxis.EPSILON
        return get_perturbation_class(self.perturbation).axis

    @property
    def job_id(self) -> str:
        return _digest(self.spec())

    @property
    def seed(self) -> int:
        """The job's random draws; the same at either precision, so a bf16 sweep perturbs
        exactly the images its fp32 twin does (a paired comparison of the two)."""
        spec = self.spec()
        spec.pop("precision", None)
        return int(_digest(spec), 16) % 2**31

    @property
    def n(self) -> int:
        return self.shard_stop - self.shard_start

    def describe(self) -> str:
        strength = "" if self.strength is None else f"@{self.strength:g}"
        return f"{self.perturbation}{strength}[{self.shard_start}:{self.shard_stop}]"


def _digest(spec: Mapping[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _encode(correct: Tensor) -> str:
    return "".join("1" if bool(c) else "0" for c in correct.tolist())


def predict_all(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """(N, A) predicted class per attribute, on the CPU (where the outcomes are counted)."""
    return SharedVariants({"model": model}).predict(images, batch_size)["model"]


def _row(
    job: Job,
    variant: str,
    attribute: str,
    correct: Tensor,
    *,
    family: Family | None = None,
    epsilon: float | None = None,
    source_variant: str | None = None,
    success_rate: float | None = None,
    median: float | None = None,
    drift: MaskDrift | None = None,  # of this row's variant; the row's attribute is read
) -> dict[str, Any]:
    strength = epsilon if epsilon is not None else job.strength
    attribute_index = job.attribute_names.index(attribute)
    corruption = job.family is Family.CORRUPTION
    return {
        "job_id": job.job_id,
        "variant": variant,
        "attribute": attribute,
        "family": (family or job.family).value,
        "perturbation": job.perturbation,
        StrengthAxis.SEVERITY.column: strength if job.axis is StrengthAxis.SEVERITY else None,
        StrengthAxis.EPSILON.column: strength if job.axis is StrengthAxis.EPSILON else None,
        "source_variant": source_variant,
        "n": int(correct.numel()),
        "correct": int(correct.sum()),
        "success_rate": success_rate,
        "median_distance": median,
        "seed": job.seed,
        "shard_start": job.shard_start,
        "engine": dict(job.params).get("engine", Engine.REFERENCE.value) if corruption else None,
        "mask_cosine": None if drift is None else drift.mask_cosine[attribute_index],
        "importance_rank_correlation": (
            None if drift is None else drift.importance_rank_correlation[attribute_index]
        ),
        "drift_n": None if drift is None else drift.n,
        "outcomes": _encode(correct),
    }


def run_job(
    job: Job,
    models: Mapping[str, nn.Module],
    images: Tensor,
    labels: Tensor,
    *,
    device: torch.device | str = "cpu",
    drift_samples: int = DRIFT_SAMPLES,
    share_trunk: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate one job. `images` (N, 3, H, W) / `labels` (N, A) are the whole evaluation split;
    the job takes its shard. Returns one row per (variant, attribute[, ε, source]).
    `drift_samples`: the attention drift is measured on the shard's first this many images
    (`robustness.drift_samples`; 0: not at all).
    `share_trunk`: variants that are views of one AttentionNet run its trunk and attention
    once per batch of model-independent images (the same rows); False evaluates each variant
    as a separate full model, as a RobustBench user would (the benchmark's baseline).

    The models must already be on `device`; the shard is perturbed and classified there, and
    the outcomes are counted on the CPU."""
    missing = [v for v in job.variants if v not in models]
    if missing:
        raise KeyError(f"job {job.job_id} needs variants {missing}; given {sorted(models)}")
    # A copy: `images` may be a read-only view of Ray's object store.
    x = images[job.shard_start : job.shard_stop].to(device, copy=True)  # (n, 3, H, W)
    y = labels[job.shard_start : job.shard_stop].cpu()  # (n, A)
    variants = SharedVariants({v: models[v] for v in job.variants}, share_trunk=share_trunk)
    if job.family in (Family.CLEAN, Family.NOISE, Family.CORRUPTION):
        return _run_image_job(job, variants, x, y, drift_samples)
    attack = create_perturbation(job.perturbation, **dict(job.params))
    with autocast(job.precision, x.device):  # the attacks' forwards and backwards too
        if isinstance(attack, MinimisationAttack):
            return _run_minimisation_job(job, attack, variants, x, y)
        assert isinstance(attack, FixedEpsilonAttack)
        return _run_fixed_epsilon_job(job, attack, variants, x, y, drift_samples)


def perturb(
    perturbation: str, params: Params, images: Tensor, strength: int | float, *, seed: int
) -> Tensor:
    """`images` under a model-independent perturbation (noise or a corruption) with `params`,
    at `strength`, seeded by `seed`: the one way the sweep and the search perturb images."""
    instance = create_perturbation(perturbation, **dict(params))
    assert isinstance(instance, ImagePerturbation), f"{perturbation} is not image-only"
    return instance(images, strength, seed=seed)


def corruption_params(corruptions: CorruptionConfig, name: str) -> Params:
    """The parameters of corruption `name` under the configured engine choice (`engine`,
    `engine_overrides`). The reference engine is the perturbation's default, so its jobs keep
    the ids they had before there was a choice; a native job says so in its params (and id)."""
    engine = corruptions.engine_for(name)
    return (("engine", engine.value),) if engine is not Engine.REFERENCE else ()


def attack_attribute(
    attack: Attack,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attribute: int,
    epsilon: float,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Adversarials of `x` against one attribute of `model` at `epsilon`, and where the attack
    succeeded ((n,) bool, on the CPU). `seed + attribute` seeds it, the same for every variant:
    they face the same random starts."""
    outcome = attack(
        attribute_view(model, attribute),
        x,
        y[:, attribute].to(x.device),
        [epsilon],
        seed=seed + attribute,
    )
    return outcome.adversarials[epsilon], outcome.success[epsilon].cpu()


def _run_image_job(
    job: Job, variants: SharedVariants, x: Tensor, y: Tensor, drift_samples: int
) -> list[dict[str, Any]]:
    clean = job.family is Family.CLEAN
    if clean:
        perturbed = x
    else:  # generated once for every variant
        assert job.strength is not None
        perturbed = perturb(job.perturbation, job.params, x, job.strength, seed=job.seed)
    results: Mapping[str, tuple[Tensor, MaskDrift | None]]
    with autocast(job.precision, x.device):  # the images are perturbed in float32, above
        if clean or drift_samples == 0:  # no drift to measure
            predicted = variants.predict(perturbed, job.batch_size)
            results = {variant: (predictions, None) for variant, predictions in predicted.items()}
        else:
            # One pass over the perturbed shard gives the predictions and the masks; the
            # clean shard costs one extra pass over its first `drift_samples` images.
            results = predict_variants_with_drift(
                variants, x, perturbed, job.batch_size, drift_samples=drift_samples
            )
    rows: list[dict[str, Any]] = []
    for variant in job.variants:
        predictions, drift = results[variant]
        correct = predictions == y  # (n, A)
        rows += [
            _row(job, variant, name, correct[:, a], drift=drift)
            for a, name in enumerate(job.attribute_names)
        ]
    return rows


def _run_fixed_epsilon_job(
    job: Job,
    attack: FixedEpsilonAttack,
    variants: SharedVariants,
    x: Tensor,
    y: Tensor,
    drift_samples: int,
) -> list[dict[str, Any]]:
    assert job.strength is not None
    epsilon = float(job.strength)
    clean = {v: p == y for v, p in variants.predict(x, job.batch_size).items()}
    rows = []
    for a, name in enumerate(job.attribute_names):
        for source in job.variants:
            adversarial, success = attack_attribute(
                attack, variants.models[source], x, y, a, epsilon, job.seed
            )
            robust = clean[source][:, a] & ~success
            # The masks of the attacked attribute, clean vs this variant's own adversarials.
            drift = None
            if drift_samples > 0:
                drift = mask_drift(
                    variants.models[source],
                    x,
                    adversarial,
                    job.batch_size,
                    attributes=[a],
                    drift_samples=drift_samples,
                )
            success_rate = attack_success_rate(clean[source][:, a], success)
            rows.append(_row(job, source, name, robust, success_rate=success_rate, drift=drift))
            if job.transfer:
                rows += _transfer_rows(job, variants, clean, adversarial, y, a, source)
    return rows


def _transfer_rows(
    job: Job,
    variants: SharedVariants,
    clean: Mapping[str, Tensor],
    adversarial: Tensor,
    y: Tensor,
    a: int,
    source: str,
) -> list[dict[str, Any]]:
    """The adversarials crafted on `source` for attribute `a`, on every other variant (one
    shared pass for all of them)."""
    targets = [target for target in job.variants if target != source]
    predicted = variants.only(targets).predict(adversarial, job.batch_size)
    rows = []
    for target in targets:
        target_correct = predicted[target][:, a] == y[:, a]
        fooled = clean[target][:, a] & ~target_correct
        rows.append(
            _row(
                job,
                target,
                job.attribute_names[a],
                clean[target][:, a] & target_correct,
                family=Family.TRANSFER,
                source_variant=source,
                success_rate=attack_success_rate(clean[target][:, a], fooled),
            )
        )
    return rows


def _run_minimisation_job(
    job: Job, attack: MinimisationAttack, variants: SharedVariants, x: Tensor, y: Tensor
) -> list[dict[str, Any]]:
    predicted = variants.predict(x, job.batch_size)
    rows = []
    for variant in job.variants:
        clean = predicted[variant] == y
        for a, name in enumerate(job.attribute_names):
            outcome = attack(
                attribute_view(variants.models[variant], a),
                x,
                y[:, a].to(x.device),
                list(job.epsilons),
                seed=job.seed + a,
            )
            assert outcome.distances is not None
            distances = outcome.distances.cpu()
            median = median_distance(distances.numpy(), clean[:, a].numpy())
            for epsilon in job.epsilons:
                broken = distances <= epsilon
                rows.append(
                    _row(
                        job,
                        variant,
                        name,
                        clean[:, a] & ~broken,
                        epsilon=epsilon,
                        success_rate=attack_success_rate(clean[:, a], broken),
                        median=median,
                    )
                )
    return rows


def shards(n_samples: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n_samples)) for s in range(0, n_samples, shard_size)]


@dataclass(frozen=True)
class _Expansion:
    """What every job of one sweep shares, and how its samples are sharded."""

    robustness: RobustnessConfig
    common: Mapping[str, Any]
    n_available: int

    def shards(self, n: int) -> list[tuple[int, int]]:
        return shards(min(n, self.n_available), self.robustness.shard_size)

    def jobs(self, family: Family, name: str, n: int, **fields: Any) -> list[Job]:
        return [Job(family, name, a, b, **fields, **self.common) for a, b in self.shards(n)]


def expand_sweep(
    robustness: RobustnessConfig,
    *,
    variants: Sequence[str],
    attribute_names: Sequence[str],
    n_available: int,
    run_seed: int,
    attack_variants: Sequence[str] | None = None,
) -> list[Job]:
    """All jobs of a `RobustnessConfig`, in a stable order. Sample counts are capped by the
    size of the evaluation split (`n_available`). `attack_variants`: the variants the attacks
    craft against (default: all); an attack costs a whole attack per variant, where the
    image jobs share one trunk pass among them all."""
    common = {
        "variants": tuple(variants),
        "attribute_names": tuple(attribute_names),
        "run_seed": run_seed,
        "batch_size": robustness.batch_size,
        "precision": robustness.precision,
    }
    sweep = _Expansion(robustness, common, n_available)
    largest = max(
        robustness.noise.n_samples, robustness.corruptions.n_samples, robustness.attacks.n_samples
    )
    jobs = sweep.jobs(Family.CLEAN, NO_PERTURBATION, largest)
    for name in robustness.noise.types:
        for strength in robustness.noise.strengths:
            jobs += sweep.jobs(
                Family.NOISE, name, robustness.noise.n_samples, strength=float(strength)
            )
    corruptions = robustness.corruptions
    for name in corruptions.resolved_names():
        params = corruption_params(corruptions, name)
        for severity in corruptions.severities:
            jobs += sweep.jobs(
                Family.CORRUPTION, name, corruptions.n_samples, strength=severity, params=params
            )
    attacked = tuple(variants if attack_variants is None else attack_variants)
    attack_sweep = _Expansion(robustness, {**common, "variants": attacked}, n_available)
    for method in robustness.attacks.methods:
        jobs += _attack_jobs(attack_sweep, robustness.attacks, method, transfer=len(attacked) > 1)
    return jobs


def _attack_jobs(
    sweep: _Expansion, attacks: AttacksConfig, method: AttackConfig, *, transfer: bool
) -> list[Job]:
    """A minimisation attack: one job per shard, reported at every ε; a fixed-ε attack: one
    job per shard and ε."""
    attack = create_perturbation(method.name, **method.params)
    params = tuple(sorted(method.params.items()))
    epsilons = tuple(float(e) for e in attacks.epsilons_for(method))
    n = method.n_samples or attacks.n_samples
    if isinstance(attack, MinimisationAttack):
        return sweep.jobs(Family.ADVERSARIAL, method.name, n, epsilons=epsilons, params=params)
    jobs: list[Job] = []
    for start, stop in sweep.shards(n):
        jobs += [
            Job(
                Family.ADVERSARIAL,
                method.name,
                start,
                stop,
                strength=epsilon,
                params=params,
                transfer=attacks.transfer and transfer,
                **sweep.common,
            )
            for epsilon in epsilons
        ]
    return jobs


__all__ = [
    "NO_PERTURBATION",
    "Job",
    "attack_attribute",
    "corruption_params",
    "expand_sweep",
    "perturb",
    "predict_all",
    "run_job",
    "shards",
]
