"""Overlap metrics on label arrays (NumPy), optionally over trusted pixels only.

All metrics come from one confusion matrix, so a whole validation set can be
accumulated batch by batch with :func:`confusion_matrix` and scored once.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(pred, target, num_classes: int, mask=None) -> np.ndarray:
    """(K, K) int64 counts, rows = target class, columns = predicted class.

    Pixels where ``mask`` is 0/False are left out; class ids outside
    ``0..num_classes-1`` raise ``ValueError``.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != target.shape:
            raise ValueError(f"mask shape {mask.shape} differs from target shape {target.shape}")
        keep = mask != 0
        pred = pred[keep]
        target = target[keep]
    pred = pred.ravel().astype(np.int64)
    target = target.ravel().astype(np.int64)
    if pred.size:
        lo = min(pred.min(), target.min())
        hi = max(pred.max(), target.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"class ids must be in 0..{num_classes - 1}, found {lo}..{hi}")
    counts = np.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def dice_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Dice per class from a confusion matrix; NaN for a class absent in both."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    denom = matrix.sum(axis=0) + matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def iou_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Intersection over union per class; NaN for a class absent in both."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def dice_per_class(pred, target, num_classes: int, mask=None) -> np.ndarray:
    """Dice of every class 0..K-1 (float64 array), NaN where a class is absent
    from both prediction and target (within ``mask``)."""
    return dice_from_confusion(confusion_matrix(pred, target, num_classes, mask))


def iou_per_class(pred, target, num_classes: int, mask=None) -> np.ndarray:
    """Intersection over union of every class, NaN where absent from both."""
    return iou_from_confusion(confusion_matrix(pred, target, num_classes, mask))


def mean_foreground_dice(pred, target, num_classes: int, mask=None) -> float:
    """Mean Dice over the classes 1..K-1 that occur in prediction or target.

    NaN when no foreground class occurs in either (nothing to score).
    """
    return score_from_confusion(confusion_matrix(pred, target, num_classes, mask), fallback=False)


def score_from_confusion(matrix: np.ndarray, fallback: bool = True) -> float:
    """Mean foreground Dice of a confusion matrix.

    With ``fallback`` a set with no foreground in prediction or target (e.g.
    only erased false positives were trusted) scores the background Dice
    instead, so a validation score is always a number when any pixel counted.
    """
    dice = dice_from_confusion(matrix)
    foreground = dice[1:]
    if np.all(np.isnan(foreground)):
        if fallback and not np.isnan(dice[0]):
            return float(dice[0])
        return float("nan")
    return float(np.nanmean(foreground))


def dice_without(matrix: np.ndarray, classes) -> float | None:
    """Mean foreground Dice of a confusion matrix with ``classes`` counted as
    background (in target and prediction); ``None`` when no other foreground
    class is marked or predicted."""
    merged = np.array(matrix, dtype=np.int64, copy=True)
    for c in (c for c in classes if c < len(merged)):
        merged[0, :] += merged[c, :]
        merged[c, :] = 0
        merged[:, 0] += merged[:, c]
        merged[:, c] = 0
    dice = dice_from_confusion(merged)[1:]
    scores = [float(d) for c, d in enumerate(dice, start=1) if c not in classes and not np.isnan(d)]
    return float(np.mean(scores)) if scores else None
