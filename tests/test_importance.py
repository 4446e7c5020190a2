"""Channel importance and the attention localisation ratio."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iamt.config import ImportanceMethod, ModelConfig
from iamt.data import TensorAttributeDataset
from iamt.data.shapes import SHAPES_ATTRIBUTES, make_shapes
from iamt.importance import (
    channel_importance,
    importance_from_table,
    importance_table,
    localisation_ratio,
)
from iamt.model import Architecture, AttentionNet, AttentionOutput, build_model


def _model() -> AttentionNet:
    torch.manual_seed(0)
    config = ModelConfig(widths=[8, 16], attention_hidden=8, head_channels=8)
    return build_model(
        Architecture.from_config(config, SHAPES_ATTRIBUTES, 32, (0.5,) * 3, (0.25,) * 3)
    ).eval()


def test_mean_mask_importance_is_the_mean_activation_per_channel() -> None:
    model, data = _model(), make_shapes(50, seed=0)
    importance = channel_importance(model, data, batch_size=16)
    assert importance.shape == (4, 16)
    with torch.no_grad():
        masks = model(data.images, return_masks=True).masks
    assert masks is not None
    expected = torch.stack([m.mean(dim=(0, 2, 3)) for m in masks])
    torch.testing.assert_close(importance, expected, rtol=1e-5, atol=1e-6)


def test_gradient_importance_weights_masks_by_the_true_logit_gradient() -> None:
    model, data = _model(), make_shapes(40, seed=0)
    importance = channel_importance(model, data, method=ImportanceMethod.GRADIENT, batch_size=40)
    output = model(data.images, return_masks=True, return_attended=True)
    assert output.masks is not None and output.attended is not None
    a = 2
    true_logit = output.logits[a].gather(1, data.labels[:, a : a + 1]).sum()
    (grad,) = torch.autograd.grad(true_logit, output.attended[a])
    expected = (output.masks[a].detach() * grad.abs()).mean(dim=(0, 2, 3))
    torch.testing.assert_close(importance[a], expected, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(importance, channel_importance(model, data))


def test_importance_table_ranks_and_round_trips() -> None:
    importance = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.2]])
    table = importance_table(importance, ["a", "b"])
    assert list(table.columns) == ["attribute", "channel", "score", "rank"]
    ranks = table.set_index(["attribute", "channel"])["rank"]
    assert [ranks[("a", c)] for c in range(3)] == [3, 1, 2]
    assert [ranks[("b", c)] for c in range(3)] == [1, 2, 3]  # ties broken by channel index
    torch.testing.assert_close(importance_from_table(table, ["a", "b"]), importance)
    torch.testing.assert_close(importance_from_table(table, ["b", "a"]), importance.flip(0))


class _RedAttention(nn.Module):
    """A model whose masks are the red channel, downsampled: attention on red pixels."""

    def __init__(self, invert: bool) -> None:
        super().__init__()
        self.invert = invert
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images: Tensor, *, return_masks: bool = False) -> AttentionOutput:
        red = F.avg_pool2d(images[:, :1], 4).expand(-1, 8, -1, -1)  # (B, 8, h, w)
        mask = 1 - red if self.invert else red
        return AttentionOutput(logits=[], masks=[mask, torch.full_like(mask, 0.5)])


@pytest.mark.parametrize("invert", [False, True])
def test_localisation_ratio_sees_where_the_masks_are(invert: bool) -> None:
    objects = torch.zeros(6, 1, 32, 32, dtype=torch.bool)
    objects[:, :, 8:20, 8:20] = True
    images = objects.float().expand(-1, 3, -1, -1).clone()
    data = TensorAttributeDataset(
        images,
        torch.zeros(6, 2, dtype=torch.long),
        SHAPES_ATTRIBUTES[:2],
        object_masks=objects,
    )
    ratio = localisation_ratio(_RedAttention(invert), data, batch_size=4)
    assert set(ratio) == {"shape", "colour"}
    assert ratio["colour"] == pytest.approx(1.0)  # a uniform mask has no preference
    if invert:
        assert ratio["shape"] < 0.1
    else:
        assert ratio["shape"] > 10


def test_localisation_ratio_needs_object_masks() -> None:
    data = make_shapes(4, seed=0)
    data.object_masks = None
    with pytest.raises(ValueError, match="object masks"):
        localisation_ratio(_model(), data)
