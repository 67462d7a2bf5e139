"""Clean-up of a predicted stack with what the user corrected.

After a fine-tuning round on a few corrected slices, the network finds the
corrected lesion again on the neighbouring slices, but it also fires on
anatomy that no corrected slice showed (the skull vertex above a brain
tumour, the heart next to a lung mass): many small, confident regions that
the user would have to erase one by one. A lesion is one connected piece of
tissue through the slices, so in a stack the regions of a class that do not
connect, in 3D, to any pixel the user trusted as that class are almost
always such false alarms.

:func:`keep_connected` removes them. It changes only:

* stacks (a 2D image has no slices to propagate through);
* classes the user corrected in this scan (a class without a trusted pixel is
  left as predicted: there is nothing to connect to);
* regions touching no trusted pixel of their class; they become background,
  and :class:`Removed` says how many and how large, so the user is told.

Connectivity is judged on the labels the user sees after a round: their own
labels on the pixels they trusted, the prediction elsewhere. So a lesion the
network finds on the slice next to a corrected one stays when it touches the
lesion the user drew there, even where the network's own output on the
corrected slice missed it.

Connectivity is the full 3x3x3 neighbourhood: slices are often thick (5-7 mm)
and a lesion's outline moves by a pixel or two from one slice to the next.
``bridge=1`` also joins a region that goes on, in-plane, two slices further,
through one slice where the network missed it (never across a pixel the user
trusted). It is off by default: on the real-scan benchmark (three seeds, 45
rounds, scored with and without it on the same predictions) it took one
lung2 round from 0.00 to 0.61 (the mass found again from slice 20, missed on
19) and the same cell of another seed from 0.46 to 0.00 (with nothing
connected, strict connectivity leaves every region as predicted; bridged, a
small region connects and everything else goes), and cost 0.01-0.13 on four
more by joining false regions to the lesion: a net loss.

Because the clean-up takes away what a liberal prediction gets wrong far from
the user's lesion, the region it keeps may also be *widened*: the predictor
passes ``candidates``, the background pixels where a foreground class still
has at least :data:`GROW_PROBABILITY` of the probability, and those that
connect to the user's lesion (through the kept region or other candidates)
join it. After a 60 s round on a few slices the network is under-confident
away from them: on the shared real tumours (two seeds, 18 rounds) the held-out
lesion often has a tumour probability of 0.15-0.5, so argmax alone kept too
little of it, or none at all when the part it did find did not touch the
corrected slice. Candidates never cross a pixel the user trusted (an erased
pixel stops the growth) and are only added when the class has a kept region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_FULL = np.ones((3, 3, 3), dtype=bool)

#: Slices a lesion may skip and still count as one piece (``keep_connected``'s
#: default ``bridge``): with 1, a region of the class that goes on, in-plane,
#: two slices further connects through one slice where the network missed it
#: (never through a pixel the user trusted). Off (0) by default: measured on
#: the real scans it rescued one round and cost as much on others (module notes).
BRIDGE_SLICES = 0

#: Default foreground probability from which a background pixel connected to
#: the user's lesion joins it (see the module notes; ``docs/finetune.md`` has
#: the measurements: 0.5 is argmax only, lower widens more).
GROW_PROBABILITY = 0.15


@dataclass(frozen=True)
class Removed:
    """Regions of one class left out because they touch no trusted pixel of it."""

    class_id: int
    regions: int
    voxels: int
    kept_regions: int
    #: less certain voxels (``candidates``) that joined the kept regions
    grown: int = 0
    #: False when no predicted region touches the seeds (the class was left as predicted)
    connected: bool = True


def grow_candidates(probs: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Per pixel, the foreground class with the highest probability where the
    label is background and that probability is at least ``threshold``, else 0.

    ``probs`` is (C, ...) with class 0 the background, ``labels`` the argmax
    labels (...); returns uint8 of the labels' shape (what
    :func:`keep_connected` takes as ``candidates``)."""
    foreground = probs[1:]
    if foreground.shape[0] == 0:
        return np.zeros(labels.shape, np.uint8)
    best = foreground.argmax(axis=0)
    top = np.take_along_axis(foreground, best[None], axis=0)[0]
    return np.where((labels == 0) & (top >= threshold), best + 1, 0).astype(np.uint8)


def seeds_from_corrections(
    trusted_labels: np.ndarray, trusted_mask: np.ndarray, classes=None
) -> dict[int, np.ndarray]:
    """``{class id: bool mask}`` of the pixels the user trusted as each class
    (every non-background class present, or only ``classes``), and under key
    0 the pixels trusted as background (where present); ``{}`` when no
    foreground class is trusted."""
    trusted_labels = np.asarray(trusted_labels)
    trusted_mask = np.asarray(trusted_mask, dtype=bool)
    if trusted_labels.shape != trusted_mask.shape:
        raise ValueError(f"labels {trusted_labels.shape} and trust mask {trusted_mask.shape} differ in shape")
    values = np.unique(trusted_labels[trusted_mask])
    wanted = {int(v) for v in values if v != 0}
    if classes is not None:
        wanted &= {int(c) for c in classes}
    if not wanted:  # nothing to connect to: no seeds at all (callers test ``if seeds``)
        return {}
    if 0 in values:
        wanted.add(0)
    return {c: trusted_mask & (trusted_labels == c) for c in sorted(wanted)}


def _bridged(mask: np.ndarray, trusted: np.ndarray, slices: int) -> np.ndarray:
    """``mask`` with every voxel also copied onto the next ``slices`` slices
    (not onto trusted pixels), so that two parts of a region with up to
    ``slices`` empty slices between them touch (the copy reaches the slice
    next to the far part); the copies only join components, they are never
    labelled."""
    if slices <= 0 or mask.shape[0] < 2:
        return mask
    out = mask.copy()
    reach = mask.copy()
    for _ in range(slices):
        step = np.zeros_like(reach)
        step[1:] = reach[:-1] & ~trusted[1:]
        out |= step
        reach = step
    return out


def keep_connected(
    labels: np.ndarray, seeds: dict[int, np.ndarray], candidates: np.ndarray | None = None,
    bridge: int = BRIDGE_SLICES,
) -> list[Removed]:
    """Set to background, in place, every predicted region of a seeded class
    that does not connect in 3D to a seed pixel of that class; return what was
    removed (one :class:`Removed` per seeded class, even when nothing went).

    ``seeds`` as :func:`seeds_from_corrections` gives them: ``{class id: bool
    mask}``, key 0 for pixels trusted as background. Connectivity runs through
    the labels as the user will see them (trusted pixels as trusted, the
    prediction elsewhere); trusted pixels are never changed. ``labels`` is a
    (Z, Y, X) stack; a 2D image is returned unchanged (an empty list). A class
    none of whose predicted regions connects to its seeds is left as
    predicted: removing everything would hide that the model disagrees.
    ``bridge``: empty slices a region may skip and still connect (not
    through trusted pixels); 0 for strict 3D connectivity.
    """
    if labels.ndim != 3 or not seeds:
        return []
    if candidates is not None and candidates.shape != labels.shape:
        raise ValueError(f"candidates {candidates.shape} differ from the labels {labels.shape}")
    trusted = np.zeros(labels.shape, dtype=bool)
    for class_id, seed in seeds.items():
        seed = np.asarray(seed, dtype=bool)
        if seed.shape != labels.shape:
            raise ValueError(f"seeds of class {class_id} {seed.shape} differ from the labels {labels.shape}")
        trusted |= seed
    report = []
    for class_id, seed in seeds.items():
        if class_id == 0:
            continue
        seed = np.asarray(seed, dtype=bool)
        predicted = (labels == class_id) & ~trusted
        extra = None  # candidates of this class: background pixels nobody trusted
        if candidates is not None:
            extra = (candidates == class_id) & ~trusted & (labels == 0)
        members = predicted if extra is None else predicted | extra
        components, count = ndimage.label(_bridged(members | seed, trusted, bridge), structure=_FULL)
        touched = np.unique(components[seed])
        keep = np.zeros(count + 1, dtype=bool)
        keep[touched[touched != 0]] = True
        predicted_in = np.unique(components[predicted])
        predicted_in = predicted_in[predicted_in != 0]
        regions_in = np.unique(components[members])  # regions with argmax or candidate pixels
        kept = int(keep[regions_in[regions_in != 0]].sum())
        if kept == 0:  # no predicted region reaches the user's: left as predicted
            report.append(Removed(class_id, 0, 0, int(predicted_in.size), connected=False))
            continue
        drop = predicted & ~keep[components]
        labels[drop] = 0
        grown = 0
        if extra is not None:  # candidates reaching the seeds join, also without an argmax pixel
            joined = extra & keep[components]
            grown = int(joined.sum())
            labels[joined] = class_id
        removed_regions = int(predicted_in.size) - int(keep[predicted_in].sum())
        report.append(Removed(class_id, removed_regions, int(drop.sum()), kept, grown))
    return report


def describe(report: list[Removed], names: dict[int, str] | None = None) -> str:
    """One line for the user, e.g. "kept the tumor regions connected to your
    corrections (1), widened by 310 less certain voxels; left out 12 others
    (3,401 voxels)"; it says so when no region of a class touches the
    corrections (left as predicted); "" when nothing was removed or added."""
    parts = []
    for item in report:
        name = (names or {}).get(item.class_id, f"class {item.class_id}")
        if not item.connected:
            if item.kept_regions:
                parts.append(
                    f"no predicted {name} region touches your corrections; "
                    f"left as predicted ({item.kept_regions} region{'s' if item.kept_regions != 1 else ''})"
                )
            continue
        if item.regions == 0 and item.grown == 0:
            continue
        text = (
            f"kept the {name} region{'s' if item.kept_regions != 1 else ''} connected to your corrections "
            f"({item.kept_regions})"
        )
        if item.grown:
            text += f", widened by {item.grown:,} less certain voxels"
        if item.regions:
            text += f"; left out {item.regions} other{'s' if item.regions != 1 else ''} ({item.voxels:,} voxels)"
        parts.append(text)
    return "; ".join(parts)
