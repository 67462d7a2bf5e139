"""The masked loss learns from trusted pixels only, and the metrics agree with hand counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.losses import masked_ce_dice_loss
from napari_unet.core.metrics import (
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_foreground_dice,
    score_from_confusion,
)


def _random_case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 8, 8, generator=gen)
    target = torch.randint(0, 3, (2, 8, 8), generator=gen)
    mask = torch.zeros(2, 8, 8)
    mask[:, 2:6, 1:5] = 1.0
    return logits, target, mask


@pytest.mark.parametrize("dice_weight", [0.0, 1.0])
def test_untrusted_pixels_change_neither_loss_nor_gradient(dice_weight):
    logits, target, mask = _random_case()
    logits = logits.requires_grad_(True)
    loss = masked_ce_dice_loss(logits, target, mask, dice_weight=dice_weight)
    loss.backward()
    grad = logits.grad.clone()

    untrusted = mask == 0
    # the gradient at untrusted pixels is exactly zero ...
    assert torch.all(grad.permute(0, 2, 3, 1)[untrusted] == 0)
    # ... and trusted pixels do get one
    assert grad.permute(0, 2, 3, 1)[~untrusted].abs().sum() > 0

    # anything at untrusted pixels (other logits, garbage labels, even inf) changes nothing
    other = logits.detach().clone()
    other.permute(0, 2, 3, 1)[untrusted] = torch.randn(int(untrusted.sum()), 3) * 50
    other[0, 0, 0, 0] = float("inf")
    labels = target.clone()
    labels[untrusted] = 255
    other.requires_grad_(True)
    loss2 = masked_ce_dice_loss(other, labels, mask, dice_weight=dice_weight)
    loss2.backward()
    assert torch.allclose(loss, loss2)
    assert torch.allclose(grad.permute(0, 2, 3, 1)[~untrusted], other.grad.permute(0, 2, 3, 1)[~untrusted])
    assert torch.all(other.grad.permute(0, 2, 3, 1)[untrusted] == 0)


def test_loss_equals_loss_on_trusted_crop():
    """A fully trusted crop and the same crop embedded in untrusted pixels give the same loss."""
    logits, target, _ = _random_case(1)
    mask = torch.zeros(2, 8, 8)
    mask[:, 2:6, 1:5] = 1
    full = masked_ce_dice_loss(logits, target, mask)
    crop = masked_ce_dice_loss(logits[:, :, 2:6, 1:5], target[:, 2:6, 1:5], None)
    assert torch.allclose(full, crop, atol=1e-6)


def test_all_zero_mask_is_zero_and_backpropagates():
    logits, target, _ = _random_case(2)
    logits.requires_grad_(True)
    loss = masked_ce_dice_loss(logits, target, torch.zeros(2, 8, 8))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_perfect_prediction_has_low_loss_and_bool_mask_works():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 20
    good = masked_ce_dice_loss(logits, target, torch.ones(1, 8, 8, dtype=torch.bool))
    bad = masked_ce_dice_loss(-logits, target, torch.ones(1, 8, 8, dtype=torch.bool))
    assert good.item() < 1e-3 < bad.item()


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="target shape"):
        masked_ce_dice_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


def test_metrics_by_hand():
    target = np.array([[0, 1, 1], [0, 2, 2]])
    pred = np.array([[0, 1, 0], [0, 2, 1]])
    dice = dice_per_class(pred, target, 4)
    assert dice[1] == pytest.approx(2 * 1 / (2 + 2))
    assert dice[2] == pytest.approx(2 * 1 / (1 + 2))
    assert np.isnan(dice[3])  # absent in both
    iou = iou_per_class(pred, target, 4)
    assert iou[1] == pytest.approx(1 / 3)
    assert mean_foreground_dice(pred, target, 4) == pytest.approx((0.5 + 2 / 3) / 2)
    mask = np.array([[1, 1, 0], [1, 1, 0]])
    assert dice_per_class(pred, target, 4, mask)[1:3] == pytest.approx([1.0, 1.0])
    assert np.isnan(mean_foreground_dice(np.zeros((2, 2)), np.zeros((2, 2)), 3))
    assert score_from_confusion(confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2)), 3)) == 1.0
    with pytest.raises(ValueError, match="class ids"):
        confusion_matrix(pred, target, 2)


def test_class_weight_is_a_weighted_mean_of_the_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 6))
    mask = torch.rand(2, 6, 6) > 0.3
    plain = masked_ce_dice_loss(logits, target, mask, dice_weight=0)
    ones = masked_ce_dice_loss(logits, target, mask, dice_weight=0, class_weight=torch.ones(3))
    torch.testing.assert_close(ones, plain)
    weights = torch.tensor([1.0, 5.0, 5.0])
    weighted = masked_ce_dice_loss(logits, target, mask, dice_weight=0, class_weight=weights)
    pixel = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    w = weights[target] * mask
    torch.testing.assert_close(weighted, (pixel * w).sum() / w.sum())
    # foreground pixels now pull harder on the gradient than background ones
    (grad_plain,) = torch.autograd.grad(plain, logits)
    (grad_weighted,) = torch.autograd.grad(weighted, logits)
    fg = (target > 0) & mask
    bg = (target == 0) & mask
    ratio_fg = grad_weighted.abs().sum(1)[fg].mean() / grad_plain.abs().sum(1)[fg].mean()
    ratio_bg = grad_weighted.abs().sum(1)[bg].mean() / grad_plain.abs().sum(1)[bg].mean()
    assert ratio_fg > 3 * ratio_bg
