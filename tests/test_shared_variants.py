"""One shared trunk and attention pass for every variant (`iamt.variants.SharedVariants`):
bit-identical to one forward per variant, for every registered mask transform and both mask
modes, in predictions, masks, drift and the rows of `run_job` (clean, noise, corruption and
transfer); and the per-variant fallback where the models are not views of one AttentionNet."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from iamt.config import MaskMode, ModelConfig
from iamt.data.base import AttributeSpec
from iamt.model import (
    Architecture,
    AttentionNet,
    AttentionOutput,
    EmphasizedAttentionNet,
    build_model,
)
from iamt.transforms import TRANSFORMS, MaskTransform, parse_transform
from iamt.variants import SharedVariants, shared_base
from iamt.vocabulary import NO_PERTURBATION, Family
from robustness.drift import MaskDrift, predict_variants_with_drift, predict_with_drift
from robustness.jobs import Job, predict_all, run_job

ATTRIBUTES = (
    AttributeSpec("shape", ("a", "b", "c")),
    AttributeSpec("colour", ("x", "y")),
    AttributeSpec("size", ("s", "m", "l", "xl")),
)
# One spec per registered family, with non-default parameters, and a composition.
SPECS = {
    "identity": "identity",
    "topk": "topk:k=3,alpha=2.5,clip=true",
    "suppress": "suppress:k=2,beta=0.25",
    "power": "power:gamma=0.7",
    "binarize": "binarize:tau=0.45",
    "compose": "binarize:tau=0.5+topk:k=2,alpha=3",
}
MODES = list(MaskMode)
IMAGES = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # (N, 3, H, W)
LABELS = torch.stack([torch.arange(10) % len(a.classes) for a in ATTRIBUTES], dim=1)  # (N, A)
_NOISE = 0.3 * torch.randn(IMAGES.shape, generator=torch.Generator().manual_seed(2))
NOISY = (IMAGES + _NOISE).clamp(0, 1)


def _model(mode: MaskMode) -> AttentionNet:
    """A tiny random-weight model (C = 8 channels at 4 × 4), with random BN statistics too,
    so that eval-mode BatchNorm is no identity."""
    config = ModelConfig.model_validate(
        {"widths": [4, 8], "attention_hidden": 4, "head_channels": 4, "mask_mode": mode.value}
    )
    architecture = Architecture.from_config(
        config, ATTRIBUTES, 16, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    )
    torch.manual_seed(0)
    model = build_model(architecture)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _variants(model: AttentionNet, names: list[str]) -> dict[str, nn.Module]:
    """`normal` first, then the emphasized views `names` (keys of SPECS)."""
    importance = torch.rand(len(ATTRIBUTES), 8, generator=torch.Generator().manual_seed(3))
    views = {n: model.with_transform(parse_transform(SPECS[n]), importance) for n in names}
    return {"normal": model, **{n: view.eval() for n, view in views.items()}}


def _reference(model: nn.Module, images: Tensor) -> AttentionOutput:
    """AttentionNet.forward as written before the split: one attribute at a time."""
    base, transform, rankings = _parts(model)
    features = base.trunk((images - base.mean) / base.std)
    logits, masks, attended = [], [], []
    for a, (attention, head) in enumerate(zip(base.attention, base.heads, strict=True)):
        mask = torch.sigmoid(attention(features))
        if transform is not None:
            mask = transform(mask, None if rankings is None else rankings[a])
        residual = base.architecture.mask_mode is MaskMode.RESIDUAL
        weighted = (1.0 + mask) * features if residual else mask * features
        logits.append(head(weighted))
        masks.append(mask)
        attended.append(weighted)
    return AttentionOutput(logits, masks, attended)


def _parts(model: nn.Module) -> tuple[AttentionNet, MaskTransform | None, Tensor | None]:
    if isinstance(model, AttentionNet):
        return model, None, None
    assert isinstance(model, EmphasizedAttentionNet)
    return model.base, model.transform, model.rankings


def _assert_same(first: AttentionOutput, second: AttentionOutput) -> None:
    for field in ("logits", "masks", "attended"):
        one, other = getattr(first, field), getattr(second, field)
        assert len(one) == len(other), field
        assert all(torch.equal(a, b) for a, b in zip(one, other, strict=True)), field


def _assert_same_drift(first: MaskDrift, second: MaskDrift) -> None:
    assert first.n == second.n
    np.testing.assert_array_equal(first.mask_cosine, second.mask_cosine)  # NaN equals NaN
    np.testing.assert_array_equal(
        first.importance_rank_correlation, second.importance_rank_correlation
    )


# --- the model split -------------------------------------------------------------------------


def test_the_spec_table_covers_every_registered_transform() -> None:
    assert set(SPECS) - {"compose"} == set(TRANSFORMS.names())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_transform_leaves_its_input_mask_untouched(name: str) -> None:
    # What lets one M_a serve every variant: no T writes into it.
    mask = torch.rand(2, 8, 4, 4, generator=torch.Generator().manual_seed(4))
    before, version = mask.clone(), mask._version
    parse_transform(SPECS[name])(mask, torch.randperm(8))
    assert mask._version == version and torch.equal(mask, before)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_shared_outputs_equal_per_variant_forwards(name: str, mode: MaskMode) -> None:
    # The variant under test first, `power` after it: a T writing into the shared masks
    # would change the outputs of the variants after it.
    models = _variants(_model(mode), [name, "power"] if name != "power" else [name])
    models = {name: models.pop(name), **models}
    variants = SharedVariants(models)
    assert variants.shared
    with torch.no_grad():
        shared = dict(variants.outputs(IMAGES, return_masks=True, return_attended=True))
        shared_masks = dict(variants.masks(IMAGES))
        for variant, model in models.items():
            alone = model(IMAGES, return_masks=True, return_attended=True)
            _assert_same(shared[variant], alone)
            _assert_same(shared[variant], _reference(model, IMAGES))
            masks = shared_masks[variant]
            assert masks is not None and alone.masks is not None
            assert all(torch.equal(a, b) for a, b in zip(masks, alone.masks, strict=True))


@pytest.mark.parametrize("mode", MODES)
def test_predictions_and_drift_equal_per_variant_ones(mode: MaskMode) -> None:
    models = _variants(_model(mode), [n for n in SPECS if n != "identity"])
    shared, separate = SharedVariants(models), SharedVariants(models, share_trunk=False)
    assert shared.shared and not separate.shared
    # Batches of 4 over 10 images, drift on the first 6: a partial batch of both passes.
    predicted = shared.predict(NOISY, 4)
    with_drift = predict_variants_with_drift(shared, IMAGES, NOISY, 4, drift_samples=6)
    reference = predict_variants_with_drift(separate, IMAGES, NOISY, 4, drift_samples=6)
    for name, model in models.items():
        alone, drift = predict_with_drift(model, IMAGES, NOISY, 4, drift_samples=6)
        assert torch.equal(predicted[name], predict_all(model, NOISY, 4))
        for predictions, other in (with_drift[name], reference[name]):
            assert torch.equal(predictions, alone)
            _assert_same_drift(other, drift)
        assert drift.n == 6


def test_the_trunk_runs_once_per_batch_for_every_variant() -> None:
    model = _model(MaskMode.RESIDUAL)
    models = _variants(model, ["topk", "power", "binarize"])
    calls: list[int] = []
    model.trunk.register_forward_hook(lambda *_: calls.append(1))
    SharedVariants(models).predict(IMAGES, 4)
    assert len(calls) == 3  # 3 batches
    calls.clear()
    predict_variants_with_drift(SharedVariants(models), IMAGES, NOISY, 4, drift_samples=6)
    assert len(calls) == 3 + 2  # perturbed batches, then clean ones of the first 6 images
    calls.clear()
    SharedVariants(models, share_trunk=False).predict(IMAGES, 4)
    assert len(calls) == 4 * 3  # separate models: each variant its own trunk


class _Plain(nn.Module):
    def forward(self, images: Tensor) -> AttentionOutput:
        return AttentionOutput([images.mean(dim=(1, 2, 3)).unsqueeze(1).repeat(1, 2)])


class _Subclass(AttentionNet):
    """May override forward: never shared."""


def test_models_that_are_not_views_of_one_base_run_separately() -> None:
    model = _model(MaskMode.RESIDUAL)
    other = _model(MaskMode.RESIDUAL)
    subclass = _Subclass(model.architecture).eval()
    topk = _variants(model, ["topk"])["topk"]
    assert shared_base([model, topk]) is model
    for models in (
        {"normal": model, "plain": _Plain()},
        {"normal": model, "other": _variants(other, ["topk"])["topk"]},
        {"normal": subclass},
        {"copy": copy.deepcopy(topk), "normal": model},
    ):
        variants = SharedVariants(models)
        assert not variants.shared
        predicted = variants.predict(IMAGES, 4)
        for name, net in models.items():
            assert torch.equal(predicted[name], predict_all(net, IMAGES, 4))
    training = SharedVariants({"normal": model.train(), "topk": topk.train()})
    assert not training.shared  # BN would update its statistics once per forward
    with training.evaluating():
        assert training.shared
    assert model.training and topk.training  # the modes are restored


# --- run_job ---------------------------------------------------------------------------------


def _job(family: Family, perturbation: str, variants: Mapping[str, nn.Module], **kw: Any) -> Job:
    names = tuple(a.name for a in ATTRIBUTES)
    return Job(family, perturbation, 1, 10, tuple(variants), names, 0, batch_size=4, **kw)


def _rows(job: Job, models: Mapping[str, nn.Module], **kwargs: Any) -> str:
    # JSON: NaN drift numbers compare equal, every float to the last bit.
    return json.dumps(run_job(job, models, IMAGES, LABELS, drift_samples=5, **kwargs))


@pytest.mark.parametrize(
    ("family", "perturbation", "strength"),
    [
        (Family.CLEAN, NO_PERTURBATION, None),
        (Family.NOISE, "gaussian", 0.2),
        (Family.CORRUPTION, "contrast", 3),
    ],
)
def test_run_job_rows_equal_those_of_separate_models(
    family: Family, perturbation: str, strength: float | None
) -> None:
    models = _variants(_model(MaskMode.RESIDUAL), ["topk", "suppress", "binarize"])
    job = _job(family, perturbation, models, strength=strength)
    rows = _rows(job, models)
    assert rows == _rows(job, models, share_trunk=False)
    # As a RobustBench user would have them: four full models, no weights shared.
    assert rows == _rows(job, {n: copy.deepcopy(m) for n, m in models.items()})
    drift_n = {row["drift_n"] for row in json.loads(rows)}
    assert drift_n == ({None} if family is Family.CLEAN else {5})


def test_transfer_and_minimisation_rows_equal_those_of_separate_models() -> None:
    models = _variants(_model(MaskMode.MULTIPLICATIVE), ["topk", "power"])
    fgsm = _job(Family.ADVERSARIAL, "fgsm", models, strength=0.05, transfer=True)
    rows = _rows(fgsm, models)
    assert sum(row["family"] == "transfer" for row in json.loads(rows)) == 3 * 2 * 3
    assert rows == _rows(fgsm, models, share_trunk=False)
    assert rows == _rows(fgsm, {n: copy.deepcopy(m) for n, m in models.items()})
    deepfool = _job(
        Family.ADVERSARIAL, "l2_deepfool", models, epsilons=(0.5,), params=(("steps", 3),)
    )
    assert _rows(deepfool, models) == _rows(deepfool, models, share_trunk=False)
