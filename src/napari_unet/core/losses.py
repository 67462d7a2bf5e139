"""Segmentation losses restricted to trusted pixels.

In the human-in-the-loop setting only some pixels are known to be right: the
ones a user painted, erased or filled, and the slices they marked reviewed.
Everything else is the model's own unchecked prediction and must not teach
it anything. :func:`masked_ce_dice_loss` therefore weights every pixel by a
trust mask: a pixel with weight 0 contributes exactly nothing to the loss or
to its gradient, whatever its logits or label are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Added to the Dice numerator and denominator; small, so that a class with a
#: handful of trusted pixels still gets a meaningful gradient.
DICE_SMOOTH = 1e-5


def masked_ce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    dice_weight: float = 1.0,
    ignore_empty_classes: bool = True,
    include_background: bool = False,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy plus soft Dice over trusted pixels only.

    Args:
        logits: (N, K, H, W) raw network outputs (any float dtype; computed in float32).
        target: (N, H, W) integer class ids. Values at untrusted pixels are
            never read, so they may be anything (e.g. 255 for "unknown").
        mask: (N, H, W) trust weights, bool or float in [0, 1]; ``None``
            trusts every pixel. Pixels with weight 0 contribute nothing, to
            the value and to the gradient.
        dice_weight: weight of the Dice term (0 gives plain masked cross-entropy).
        ignore_empty_classes: leave classes that have no trusted pixel in the
            batch out of the Dice mean (their Dice is undefined; cross-entropy
            still pushes their probability down where other classes are trusted).
        include_background: also average the Dice of class 0 (off by default,
            as in nnU-Net: background dominates and cross-entropy covers it).
        class_weight: (K,) cross-entropy weight of each class (``None``: all
            1); the cross-entropy is then the weighted mean over trusted pixels.

    Returns:
        A scalar tensor. With an all-zero mask it is 0 and still backpropagates
        (zero gradients, never NaN).
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be (N, K, H, W), got shape {tuple(logits.shape)}")
    n, k, h, w = logits.shape
    if tuple(target.shape) != (n, h, w):
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    logits = logits.float()
    if mask is None:
        weight = torch.ones((n, h, w), dtype=torch.float32, device=logits.device)
    else:
        if tuple(mask.shape) != (n, h, w):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits {tuple(logits.shape)}")
        weight = mask.to(device=logits.device, dtype=torch.float32)
    trusted = weight > 0
    # untrusted labels may be out of range; replace them by a valid id they never count
    safe_target = torch.where(trusted, target.long(), torch.zeros_like(target, dtype=torch.long))

    # untrusted logits are replaced before any arithmetic: even an inf or NaN
    # there then yields an exact zero gradient instead of poisoning the weights
    logits = torch.where(trusted[:, None], logits, torch.zeros_like(logits))
    log_probs = F.log_softmax(logits, dim=1)
    pixel_ce = -log_probs.gather(1, safe_target[:, None]).squeeze(1)
    ce_weight = weight
    if class_weight is not None:
        ce_weight = weight * class_weight.to(device=logits.device, dtype=torch.float32)[safe_target]
    pixel_ce = torch.where(trusted, pixel_ce * ce_weight, torch.zeros_like(pixel_ce))
    if mask is None and class_weight is None:
        ce = pixel_ce.mean()
    else:
        ce = pixel_ce.sum() / ce_weight.sum().clamp_min(1e-6)
    if dice_weight == 0:
        return ce

    probs = torch.where(trusted[:, None], log_probs.exp(), torch.zeros_like(log_probs))
    one_hot = F.one_hot(safe_target, k).permute(0, 3, 1, 2).float()
    wk = weight[:, None]
    dims = (0, 2, 3)  # batch Dice: one score per class over the whole batch
    intersection = (probs * one_hot * wk).sum(dims)
    predicted = (probs * wk).sum(dims)
    present = (one_hot * wk).sum(dims)
    dice = (2 * intersection + DICE_SMOOTH) / (predicted + present + DICE_SMOOTH)
    use = torch.ones(k, dtype=torch.bool, device=logits.device)
    if not include_background and k > 1:
        use[0] = False
    if ignore_empty_classes:
        use = use & (present > 0)
    if not bool(use.any()):
        # nothing to score: a zero that keeps the graph connected
        return ce + 0.0 * dice.sum()
    dice_loss = 1.0 - dice[use].mean()
    return ce + dice_weight * dice_loss
