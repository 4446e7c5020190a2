"""Clean accuracy of every variant on the test split, with Wilson 95% CIs (`clean.csv`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from iamt.config import MethodConfig
from iamt.model import AttentionNet
from iamt.rundir import CLEAN_COLUMNS
from iamt.train import predict_correct
from iamt.transforms import MaskTransform
from iamt.variants import variant_model
from robustness.metrics import wilson_interval


def clean_accuracy(
    config: MethodConfig,
    model: AttentionNet,
    variants: Mapping[str, MaskTransform],
    importance: torch.Tensor,
    dataset: Any,
) -> pd.DataFrame:
    """One row per variant × attribute (`CLEAN_COLUMNS`): n, correct, accuracy, CI."""
    rows = []
    for variant, transform in variants.items():
        correct = predict_correct(variant_model(model, transform, importance), dataset)  # (N, A)
        for a, attribute in enumerate(model.architecture.attribute_names):
            n, hits = int(correct.shape[0]), int(correct[:, a].sum())
            low, high = wilson_interval(hits, n)
            rows.append(
                {
                    "run": config.name,
                    "dataset": config.data.name.value,
                    "variant": variant,
                    "transform": transform.spec(),
                    "attribute": attribute,
                    "n": n,
                    "correct": hits,
                    "accuracy": hits / n,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows, columns=CLEAN_COLUMNS)
