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

Once the user has corrected a lesion (a stack with trusted pixels of a
class), the doubt that matters is about *that* lesion: where it goes on in
the next slices, where its border is uncertain. :func:`near_lesion_scores`
then ranks first the slices whose doubt lies within reach of the regions
connected to the corrections, in 3D; the plain score only orders the rest.
(The real-scan benchmark's suggestions, scored the plain way, went to
tumour-free slices full of false positives far from the mass, which the
connected clean-up removes anyway, and reached the mass's own neighbours
late or never.)

Doubt cannot point at a mistake the network is sure of. After a round on one
slice of lung2's mass the network was confident there was *no* tumour on the
next two slices, where the mass grows, and its tumour "region connected to the
corrections" ran through soft tissue to the top of the stack, so the doubt
near it sent the user there. A lesion goes on through the slices, so
:func:`continuation_score` adds, for the slices within
:data:`CONTINUATION_SLICES` of a corrected lesion, how much of that lesion
(its footprint, copied onto the slice) the network
does *not* give to the lesion's class: a slice where the prediction loses the
lesion the user just drew next door ranks first.
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


#: slices either side of a listed slice whose score :func:`review_order` discounts
REVIEW_SPACING = 1
#: the factor applied to the score of a slice next to one already on the list
NEIGHBOUR_DISCOUNT = 0.5


def review_order(
    scores: Iterable[float],
    reviewed: Iterable[int] = (),
    top: int | None = None,
    spacing: int = REVIEW_SPACING,
    skip: Iterable[int] = (),
) -> list[tuple[int, float]]:
    """``(slice, score)`` of the unreviewed slices, most uncertain first (ties:
    lower slice first), spread out: the list is built greedily, and a slice
    within ``spacing`` of one already on it competes with
    :data:`NEIGHBOUR_DISCOUNT` times its score. Two neighbouring slices show
    nearly the same anatomy, so a user who corrects the first few of the list
    before the next round teaches the model more with slices apart; the most
    uncertain slice always comes first, and a neighbour still comes before a
    slice of less than half its score. A slice next to one already
    *reviewed* competes with the same discount: it shows nearly what the user
    has just corrected (after a round on lung2's slice 17 the benchmark's
    list sent the user to 16 and 18 on seed 1; with it, to 15 and 19). The scores returned
    are the slices' own. ``spacing=0`` is the plain ranking. ``skip``: slices
    left out without discounting their neighbours (no score)."""
    values = np.nan_to_num(np.array([float(v) for v in scores], dtype=np.float64), nan=0.0)
    checked = {int(z) for z in reviewed} & set(range(values.size))
    done = checked | ({int(z) for z in skip} & set(range(values.size)))
    left = values.size - len(done)
    if spacing <= 0:
        ranked = sorted((i for i in range(values.size) if i not in done), key=lambda i: (-values[i], i))
    else:
        effective = values.copy()
        effective[list(done)] = -np.inf
        discounted = np.zeros(values.size, dtype=bool)

        def discount_around(z: int) -> None:
            lo, hi = max(0, z - spacing), min(values.size, z + spacing + 1)
            fresh = ~discounted[lo:hi] & np.isfinite(effective[lo:hi])
            effective[lo:hi][fresh] *= NEIGHBOUR_DISCOUNT
            discounted[lo:hi] = True

        for z in sorted(checked):
            discount_around(z)
        ranked = []
        for _ in range(left if top is None else min(top, left)):
            z = int(np.argmax(effective))  # the first maximum: lower slice on ties
            ranked.append(z)
            effective[z] = -np.inf
            discount_around(z)
    listed = [(int(i), float(values[i])) for i in ranked]
    return listed[:top] if top is not None else listed


#: the weight of the plain score in :func:`near_lesion_scores` (it orders slices with no nearby doubt)
PLAIN_WEIGHT = 0.01


def lesion_reach(plane_shape: tuple[int, ...]) -> int:
    """In-plane reach (px) around a corrected lesion within which doubt counts: 3 % of the shorter side, at least 4."""
    return max(4, int(round(0.03 * min(plane_shape[-2:]))))


def near_lesion_scores(
    doubt: np.ndarray, focus: np.ndarray, plain: np.ndarray, reach: int | None = None, z_reach: int = 1
) -> np.ndarray:
    """Per-slice review scores of a (Z, Y, X) stack that rank doubt about the
    corrected lesions first.

    ``doubt``: per voxel, uncertainty times foreground probability (float in
    [0, 1], or uint8 holding 255 times that); ``focus``: bool, the regions of
    the corrected classes that connect to the corrections (trusted pixels
    included); ``plain``: the plain per-slice scores (:func:`slice_score`).
    A slice's score is the mean of its doubt within ``reach`` px in-plane and
    ``z_reach`` slices of ``focus``, plus :data:`PLAIN_WEIGHT` times its
    plain score; without any focus the plain scores are returned unchanged.
    """
    from scipy import ndimage

    focus = np.asarray(focus, dtype=bool)
    plain = np.asarray(plain, dtype=np.float64)
    if focus.ndim != 3 or not focus.any():
        return plain
    if doubt.shape != focus.shape or len(plain) != focus.shape[0]:
        raise ValueError(f"doubt {doubt.shape}, focus {focus.shape} and {len(plain)} scores do not match")
    reach = lesion_reach(focus.shape) if reach is None else int(reach)
    near = ndimage.maximum_filter(focus.view(np.uint8), size=(2 * z_reach + 1, 2 * reach + 1, 2 * reach + 1)) > 0
    scale = 255.0 if np.asarray(doubt).dtype == np.uint8 else 1.0
    plane_size = float(focus.shape[1] * focus.shape[2])
    scores = np.array([np.asarray(doubt[z])[near[z]].sum(dtype=np.float64) for z in range(len(plain))])
    return scores / scale / plane_size + PLAIN_WEIGHT * plain


#: slices either side of a corrected lesion onto which it is expected to go on
CONTINUATION_SLICES = 2


def lesion_continuation(seeds: dict[int, np.ndarray], z_reach: int = CONTINUATION_SLICES) -> dict[int, np.ndarray]:
    """Where each corrected lesion would go on: per foreground class of
    ``seeds`` (:func:`~.postprocess.seeds_from_corrections`, (Z, Y, X) bool
    masks), its seed pixels copied onto the slices within ``z_reach`` of
    them, less every pixel the user trusted (of any class: those need no
    review). The footprint is not widened in-plane: a ring of background
    around a large lesion would count on every neighbouring slice alike.
    ``{}`` for a 2D image or no seeds."""
    from scipy import ndimage

    masks = {c: np.asarray(m, dtype=bool) for c, m in seeds.items()}
    if not masks or next(iter(masks.values())).ndim != 3:
        return {}
    trusted = np.zeros(next(iter(masks.values())).shape, dtype=bool)
    for mask in masks.values():
        trusted |= mask
    expected = {}
    for class_id, mask in masks.items():
        if class_id == 0 or not mask.any():
            continue
        grown = ndimage.maximum_filter(mask.view(np.uint8), size=(2 * z_reach + 1, 1, 1)).astype(bool)
        expected[class_id] = grown & ~trusted
    return expected


def continuation_score(probabilities: np.ndarray, expected: dict[int, np.ndarray]) -> float:
    """One slice's share of pixels where a corrected lesion should go on
    (``expected``: ``{class id: bool (Y, X)}``) but the network gives its
    class little probability: the mean over the plane of ``expected`` times
    ``1 - P(class)`` (``probabilities`` (C, Y, X)), summed over the classes."""
    plane = probabilities.shape[-2] * probabilities.shape[-1]
    total = 0.0
    for class_id, where in expected.items():
        if 0 < class_id < probabilities.shape[0] and where.any():
            total += float((1.0 - np.clip(probabilities[class_id][where], 0.0, 1.0)).sum(dtype=np.float64))
    return total / plane if plane else 0.0
