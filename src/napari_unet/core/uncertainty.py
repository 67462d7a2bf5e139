"""Where the model is unsure, and which slices to review first.

The uncertainty of a pixel is the entropy of its class probabilities divided
by ``log(K)`` for ``K`` classes: 0 when one class has all the probability, 1
when every class is equally likely. It costs one pass over the probabilities
the predictor has already blended (no extra network runs).

A slice's score (what the predictor reports) is the mean over its pixels of
the uncertainty times the probability that the pixel is not background:
doubt about a lesion or a vessel counts, doubt about empty background texture
hardly does (plain mean entropy, tried first, sent the real-scan benchmark's
first suggestions to tumour-free slices at the top of the head). Ranking
slices by it, highest first, gives a "review next" list; slices a user has
already reviewed drop out (:func:`review_order`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: probabilities below this are treated as 0 in the entropy (0 log 0 = 0)
_EPS = 1e-12


def normalized_entropy(probabilities: np.ndarray, axis: int = 0) -> np.ndarray:
    """Per-pixel entropy of ``probabilities`` (classes along ``axis``) over ``log(K)``, float32 in [0, 1]."""
    p = np.asarray(probabilities, dtype=np.float32)
    k = p.shape[axis]
    if k < 2:
        return np.zeros(np.delete(p.shape, axis), np.float32)
    clipped = np.clip(p, _EPS, 1.0)
    entropy = -(p * np.log(clipped)).sum(axis=axis)
    return np.clip(entropy / np.log(k), 0.0, 1.0).astype(np.float32)


def slice_score(entropy_plane: np.ndarray, foreground: np.ndarray | None = None) -> float:
    """The review score of one slice: the mean of its normalised entropy, each
    pixel weighted by ``foreground`` (the probability that it is not
    background) when given, so that doubt about a structure counts and doubt
    about empty background texture hardly does."""
    plane = np.asarray(entropy_plane, dtype=np.float64)
    if not plane.size:
        return 0.0
    if foreground is not None:
        plane = plane * np.clip(np.asarray(foreground, dtype=np.float64), 0.0, 1.0)
    return float(plane.mean())


def slice_scores(uncertainty: np.ndarray) -> np.ndarray:
    """Unweighted scores (mean uncertainty) of every slice of a (Z, Y, X) map (a 2D map is one slice)."""
    u = np.asarray(uncertainty)
    if u.ndim == 2:
        return np.array([slice_score(u)])
    return np.array([slice_score(u[z]) for z in range(u.shape[0])])


def review_order(scores: Iterable[float], reviewed: Iterable[int] = (), top: int | None = None) -> list[tuple[int, float]]:
    """``(slice, score)`` of the unreviewed slices, most uncertain first (ties: lower slice first)."""
    done = {int(z) for z in reviewed}
    ranked = sorted(((i, float(s)) for i, s in enumerate(scores) if i not in done), key=lambda t: (-t[1], t[0]))
    return ranked[:top] if top is not None else ranked
