"""Fine-tuning a model on a user's corrections (trusted pixels only).

::

    result = run_to_end(finetune_iter(image, labels, mask, model, max_seconds=60))
    new_model = result.model          # a copy; ``model`` is left untouched

``image`` is 2D (Y,X), RGB (Y,X,3), a stack (Z,Y,X) or a colour stack
(Z,Y,X,3); ``labels`` has the image's spatial shape and holds class ids;
``mask`` is nonzero where a label is trusted (painted, erased, filled, or on a
reviewed slice); without a mask every pixel is trusted. Only slices with
trusted pixels are used, and the loss ignores every untrusted pixel.

How a round works:

1. Every slice with trusted pixels becomes a :class:`Correction` (the slice
   normalised with the model's ``config.input``, its labels and mask) and
   goes into a :class:`ReplayBuffer`, replacing an older version of the same
   slice of the same image; corrections of earlier rounds stay in the buffer,
   so the model does not forget them.
2. A spatially blocked part of each slice's trusted pixels (about 15%, whole
   square blocks, with a guard band the training pixels stay out of) is held
   back as validation; the split of a slice is fixed once drawn.
3. Training crops (the whole slice up to 256 px, two a step) are centred on
   trusted training pixels (a third on a lesion, a quarter on pixels the
   network gets wrong), so a few brush strokes are seen as often as a whole
   reviewed slice; light augmentation; AdamW with warm-up and cosine decay;
   the network an instance-norm copy, widened where reduced precision runs.
4. It runs for the time budget (default 60 s on a CPU, 20 s on a GPU, turned
   into a step count after 30 steps) or a step count, and returns the last
   weights (``keep="last"``; ``keep="best"`` with an early stop is an option).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .augment import AugmentConfig, augment_sample
from .config import ClassInfo
from .device import autocast, resolve_device, resolve_precision
from .metrics import dice_without
from .model import to_instance_norm, widen
from .normalize import intensity_ranges, normalize_slice
from .train import Batch, TrainEvent, TrainOptions, TrainResult, copy_model, train_iter
from .versions import VALIDATION_FIGURE
from .weights import SegmentationModel

log = logging.getLogger(__name__)
#: Default time budgets in seconds.
CPU_SECONDS = 60.0
GPU_SECONDS = 20.0

#: Colours given to classes added by ``add_classes`` (cycled).
_NEW_CLASS_COLOURS = ("#30d158", "#0a84ff", "#bf5af2", "#ff9f0a", "#64d2ff", "#ff375f")


@dataclass(frozen=True)
class FinetuneOptions:
    """Knobs of a fine-tuning round; defaults suit a CPU and the bundled model.

    ``crop_size`` is the edge of a training crop in pixels (rounded up to the
    network's divisor, shrunk for small slices); ``val_fraction`` the share of
    trusted blocks held back for validation; ``val_block`` the largest block
    edge (smaller blocks are used when the corrections are small);
    ``max_val_blocks`` bounds validation cost; ``patience`` counts validation
    checks without improvement before an early stop.
    """

    #: peak learning rate; 5e-4 since 0.9.6, when the batch went from 4 crops
    #: to 2 (half the crops, half the rate): at 1e-3 with two 256-px crops the
    #: lung2 rounds' fit on their own slices swung between 0.04 and 0.35 every
    #: 10 steps, and k = 3 ended at 0.000 / 0.364 / 0.841 held-out Dice on
    #: three seeds against 0.845 / 0.857 / 0.850 at 5e-4
    lr: float = 5e-4
    weight_decay: float = 1e-4
    #: crops per step at the full crop size (2 of 256 px: twice the pixels of
    #: 0.9.5's 4 of 128 px); smaller slices get more (:func:`batch_for_crop`)
    batch_size: int = 2
    #: a round trains an instance-norm network, whose every layer normalises by
    #: the statistics of what it sees: crops much smaller than the tiles
    #: ``predict`` runs (512 px) teach it a contrast the whole slice does not
    #: have. After 0.9.5's 128-px crops, a lung2 round predicted its own
    #: corrected tumour at P = 0.8-0.99 in a 128-px crop and at 0.00-0.02 in the
    #: whole 512-px slice. So crops are the whole slice, up to 256 px
    crop_size: int = 256
    warmup_steps: int = 5
    val_every: int = 10
    #: where validation chooses nothing (``keep="last"`` and no early stop) it
    #: only reports, so it runs every this many steps (and before the first and
    #: after the last) instead of every ``val_every``: on ten corrected 512-px
    #: CT slices, a check every 10 steps took a fifth of a 60 s round
    report_every: int = 50
    #: validation checks without progress before a round stops early; ``None``
    #: (the default since 0.5) runs the whole budget, which ``keep="last"`` needs
    patience: int | None = None
    val_fraction: float = 0.15
    val_block: int = 64
    max_val_blocks: int = 48
    freeze_encoder: bool = False
    encoder_lr_scale: float = 1.0
    norm_eval: bool = True
    dice_weight: float = 1.0
    precision: str = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig.light)
    #: share of crops centred on a foreground pixel (over all corrections); a
    #: third, as nnU-Net oversamples foreground: with half of them, rounds on the
    #: real scans called more soft tissue "tumour" on slices nobody corrected
    foreground_crops: float = 0.33
    #: share of crops centred on a training pixel the network gets wrong
    error_crops: float = 0.25
    #: how often (in batches) the wrong pixels are recomputed
    error_refresh: int = 25
    #: fine-tune a batch-norm model as an instance-norm copy (same weights,
    #: :func:`~napari_unet.core.model.to_instance_norm`): on real MRI and CT
    #: its held-out Dice after a round is several times higher
    instance_norm: bool = True
    #: the weights a round returns: ``best`` on the held-back blocks, or
    #: ``last`` (the end of the schedule; the blocks still give the before/after
    #: figures and the regression check), or ``auto``: ``best`` (with the early
    #: stop) when the held-back blocks hold at least :data:`MIN_VAL_CLASS_PIXELS`
    #: pixels of every class the corrections mark, else ``last`` for the whole
    #: budget (blocks without the lesion can only reward predicting none of it).
    #: The default since 0.5 is ``last``: on the shared real scans (two seeds,
    #: 60 s rounds) "best" returned near-base weights whenever the blocks' Dice
    #: was a noisy 0.02-0.1, and rounds ended at 0 on a small lesion
    keep: str = "last"
    #: learning-rate schedule after the warm-up: ``cosine`` (decays to 5 % over
    #: the budget) or ``constant``
    schedule: str = "cosine"
    #: channels at full resolution of the network a round trains: a narrower
    #: model (the bundled one has 12) is first widened to this, computing the
    #: same function (:func:`~napari_unet.core.model.widen`; new channels start
    #: random with zero outgoing weights). ``None`` keeps the model's width;
    #: ``"auto"`` (the default since 0.8) widens to :data:`AUTO_WIDTH` where the
    #: round runs in reduced precision (a GPU, or a CPU with native bfloat16)
    #: and keeps the width in float32. On the shared real scans (3 seeds, bf16,
    #: 60 s) widening took the mean held-out Dice at k = 1/3/10 from
    #: 0.349/0.562/0.601 to 0.555/0.487/0.631; in float32 (one seed, about 90
    #: steps a round instead of 300) it was even (0.410/0.576/0.509 against
    #: 0.465/0.590/0.501). A widened model predicts about 3x slower (5x the FLOPs; 8x before 0.9.1's instance-norm kernel).
    widen_to: int | str | None = "auto"
    #: cross-entropy weight of every foreground class against background's 1.
    #: Tried at 3 and 10 on the breast lesion (seeds 0 and 1, k = 1 / 3):
    #: 0.444 / 0.305 and 0.450 / 0.370 against 0.362 / 0.314, within the noise
    foreground_weight: float = 1.0
    #: start the round from fresh random weights in the 1x1 head (the encoder
    #: and decoder kept): what the bundled head maps to each class goes
    #: (classes the corrections do not show are then learnt from scratch or
    #: lost). On the real scans
    #: (seed 0) it took breast1 from 0.59/0.33/0.48 to 0.84/0.90/0.71 at
    #: k = 1/3/10 and lung2 at k = 3/10 from 0.33/0.54 to 0.03/0.01, with far
    #: more liberal raw predictions: off by default (docs/real-scans.md)
    reset_head: bool = False
    #: turn the time budget into a step count after this many steps (at the
    #: speed of the steps since the warm-up: 25 steps, one hard-pixel refresh;
    #: :attr:`~napari_unet.core.train.TrainOptions.plan_after`), so the
    #: schedule follows steps and not the clock: a round that plans the same
    #: steps on the same corrections returns the same model. ``None``: the clock
    #: drives the schedule (before 0.9.4, when the same lung2 round scored 0.475
    #: in one run and 0.834 in another)
    plan_after: int | None = 30
    #: a round whose budget ends before it has learned a class the corrections
    #: mark (the share of that class's marked pixels on the corrected slices
    #: that the model calls it, :func:`class_scores`, below ``learned_fit``)
    #: trains on from where it is, as many steps again with a fresh warm-up and
    #: schedule, at most this many times, and stops extending when an extension
    #: does not raise the lowest share. Never with an explicit step count (a
    #: promise) or after a cancel. On the real lung1 CT, ten corrected slices
    #: with the nodule on one ended 60 s rounds at Dice 0 on those slices and 0
    #: on the held-out ones; a second round from that model fitted it (0.23) and
    #: scored 0.81 held-out. ``0`` turns it off
    extend_unlearned: int = 2
    #: the share of a marked class found on the corrected slices (recall) below
    #: which it counts as not learned yet. Recall since 0.9.11, Dice before: a
    #: round that calls all of the lesion and more around it has a low Dice, and
    #: training on made it timid on the next slices (lung1 k = 3, seed 0: 0.255
    #: held-out extended, 0.818 with recall, which does not extend it)
    learned_fit: float = 0.5
    #: return the average of the weights over the last this share of a round's
    #: steps (:attr:`~napari_unet.core.train.TrainOptions.average_tail`, with
    #: ``keep="last"``) instead of the last weights; ``None``: the last weights.
    #: Off: on the real scans (five runs each of breast1/lung2 k = 10, lung2 and
    #: brain1 k = 3 at fixed steps) the last half's average scored the same mean
    #: with half again the spread (sd 0.030 against 0.020; docs/real-scans.md)
    average_tail: float | None = None

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.widen_to not in (None, "auto") and not (
            isinstance(self.widen_to, int) and not isinstance(self.widen_to, bool) and 1 <= self.widen_to <= 512
        ):
            raise ValueError(f"widen_to must be 'auto', None or 1..512 channels, got {self.widen_to!r}")
        if not (math.isfinite(self.foreground_weight) and 0.0 < self.foreground_weight <= 1000.0):
            raise ValueError(f"foreground_weight must be in (0, 1000], got {self.foreground_weight}")
        if self.keep not in ("auto", "best", "last"):
            raise ValueError(f"keep must be 'auto', 'best' or 'last', got {self.keep!r}")
        if not 0.0 <= self.val_fraction < 0.9:
            raise ValueError(f"val_fraction must be in [0, 0.9), got {self.val_fraction}")
        if self.crop_size < 8:
            raise ValueError(f"crop_size must be at least 8, got {self.crop_size}")
        if self.val_block < 4:
            raise ValueError(f"val_block must be at least 4, got {self.val_block}")
        if self.report_every < 1:
            raise ValueError(f"report_every must be at least 1, got {self.report_every}")
        if not (isinstance(self.extend_unlearned, int) and 0 <= self.extend_unlearned <= 10):
            raise ValueError(f"extend_unlearned must be 0..10 extensions, got {self.extend_unlearned!r}")
        if not 0.0 <= self.learned_fit <= 1.0:
            raise ValueError(f"learned_fit must be in [0, 1], got {self.learned_fit}")
        if self.average_tail is not None and not 0.0 < self.average_tail <= 1.0:
            raise ValueError(f"average_tail must be in (0, 1] or None, got {self.average_tail}")


#: the width ``FinetuneOptions(widen_to="auto")`` widens to where reduced precision runs
AUTO_WIDTH = 32


def _round_width(options: FinetuneOptions, device: torch.device) -> int | None:
    """The width a round trains at (``None``: the model's own)."""
    if options.widen_to != "auto":
        return options.widen_to
    return AUTO_WIDTH if resolve_precision(options.precision, device) != torch.float32 else None


@dataclass
class Correction:
    """One corrected slice, ready for training (arrays owned by the buffer)."""

    key: str
    plane: np.ndarray  # (C, H, W) float32, normalised
    labels: np.ndarray  # (H, W) int64
    train_mask: np.ndarray  # (H, W) float32
    val_mask: np.ndarray  # (H, W) bool
    val_blocks: list[tuple[int, int, int]]  # (y0, x0, edge) of held-back blocks
    round: int
    train_coords: np.ndarray = field(init=False, repr=False)
    class_coords: dict[int, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ys, xs = np.nonzero(self.train_mask > 0)
        self.train_coords = np.stack([ys, xs], axis=1).astype(np.int32)
        classes = self.labels[ys, xs]
        self.class_coords = {int(c): np.flatnonzero(classes == c) for c in np.unique(classes)}

    @property
    def trusted_pixels(self) -> int:
        return int(len(self.train_coords) + self.val_mask.sum())


class ReplayBuffer:
    """Corrections kept across fine-tuning rounds of one session.

    Keep one per session and pass it to every round: earlier corrections stay
    in the training (and validation) set, so a later round does not undo what
    an earlier one learned. A slice corrected again replaces its older
    version. ``max_slices`` bounds memory: the oldest corrections go first.
    """

    def __init__(self, max_slices: int = 256) -> None:
        self.max_slices = max_slices
        self.entries: dict[str, Correction] = {}
        self.rounds = 0
        self.channels: int | None = None

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def trusted_pixels(self) -> int:
        return sum(e.trusted_pixels for e in self.entries.values())

    def add(self, correction: Correction) -> None:
        if self.channels is not None and correction.plane.shape[0] != self.channels:
            raise ValueError(
                f"the replay buffer holds {self.channels}-channel corrections; this model reads "
                f"{correction.plane.shape[0]} channels (start a new buffer for a new model type)"
            )
        self.channels = correction.plane.shape[0]
        self.entries.pop(correction.key, None)
        self.entries[correction.key] = correction
        while len(self.entries) > self.max_slices:
            self.entries.pop(next(iter(self.entries)))

    def clear(self) -> None:
        self.entries.clear()
        self.rounds = 0
        self.channels = None


@dataclass
class FinetuneResult:
    """The outcome of one round. ``model`` is a new model (a copy)."""

    model: SegmentationModel
    val_dice_before: float | None
    val_dice_after: float | None
    trusted_pixels: int
    slices: int
    seconds: float
    history: list[TrainEvent]
    steps: int = 0
    stop_reason: str = ""
    validation_pixels: int = 0
    replay_slices: int = 0
    train: TrainResult | None = None
    notes: list[str] = field(default_factory=list)
    #: foreground classes the round trained on that the held-back blocks hold
    #: (almost) none of: the validation Dice says nothing about them
    blind_classes: list[int] = field(default_factory=list)
    #: with blind classes: their Dice on the corrected slices' training pixels,
    #: for the base and the new model (:func:`corrections_fit`), else ``None``
    fit_before: float | None = None
    fit_after: float | None = None
    #: with blind classes: the validation Dice of the other classes (the blind
    #: ones counted as background), for the base and the new model; ``None``
    #: when no other foreground class is marked or predicted there
    val_other_before: float | None = None
    val_other_after: float | None = None
    #: steps trained past the budget because a marked class was not learned yet
    #: (``FinetuneOptions.extend_unlearned``)
    extra_steps: int = 0
    #: without blind classes, when the validation Dice after the round is below
    #: :data:`STUCK_VALIDATION`: the classes the corrections mark, whose fit on
    #: the corrected slices is then in ``fit_before`` / ``fit_after`` (a round
    #: can learn the lesion and still miss the few held-back pixels at its edge)
    stuck_classes: list[int] = field(default_factory=list)

    def _names(self, classes: list[int]) -> str:
        names = {c.id: c.name for c in self.model.config.classes}
        return " or ".join(names.get(c, f"class {c}") for c in classes)

    def _blind_names(self) -> str:
        return self._names(self.blind_classes)

    def fit_names(self) -> str:
        """The names of the classes ``fit_before`` / ``fit_after`` measure (blind, else stuck)."""
        return self._names(self.blind_classes or self.stuck_classes)

    def fit_text(self) -> str:
        """``tumor Dice 0.050 -> 0.830 on the slices it learned from`` when the
        fit beside a stuck validation figure was measured, else ""."""
        if self.blind_classes or not self.stuck_classes or self.fit_before is None or self.fit_after is None:
            return ""
        return (f"{self.fit_names()} Dice {self.fit_before:.3f} -> {self.fit_after:.3f} "
                f"on the slices it learned from")

    def validation_caveat(self) -> str:
        """`` (the held-back pixels hold almost no tumor: ...)`` when the
        validation figure cannot see a class the round learned, or `` (no
        pixel was held back: ...)`` when there is none, else ""; with the
        blind classes' Dice on the corrected slices when known."""
        if not self.blind_classes:
            fit = self.fit_text()
            return f" (the round missed the held-back pixels; {fit})" if fit else ""
        if not self.validation_pixels:
            text = " (no pixel was held back for validation"
        else:
            text = f" (the held-back pixels hold almost no {self._blind_names()}: this figure cannot tell whether the round learned it"
        if self.fit_before is not None and self.fit_after is not None:
            text += (f"; on the slices it learned from, {self._blind_names()} Dice "
                     f"{self.fit_before:.3f} -> {self.fit_after:.3f}")
        return text + ")"

    def gate_scores(self) -> tuple[float | None, float | None, str]:
        """(new, base, what) for the regression gate: the validation Dice; but
        when the held-back pixels cannot see a class the round learned, that
        class's Dice on every trusted pixel of the corrected slices (a fit to
        what the user marked, where false alarms in the held-back pixels count
        in proportion: a round that forgot the lesion is held back, where blind
        validation figures of 0 -> 0 would promote anything, and a round that
        learned it is not held back for one false pixel there, which takes a
        blind validation figure from 1 to 0). The other classes' validation
        Dice still counts when it falls."""
        validation = (self.val_dice_after, self.val_dice_before, VALIDATION_FIGURE)
        if not self.blind_classes or self.fit_before is None or self.fit_after is None:
            return validation
        others = (self.val_other_after, self.val_other_before, OTHERS_FIGURE)
        if _fell(*others[:2]):
            return others
        return self.fit_after, self.fit_before, f"{self._blind_names()} Dice on the slices it learned from"

    @property
    def regressed(self) -> bool:
        """Whether the new model scores lower than its base by
        :meth:`gate_scores` (a user should hear about it before using it)."""
        return _fell(*self.gate_scores()[:2])


#: what :meth:`FinetuneResult.gate_scores` compares when the blind classes are set aside
OTHERS_FIGURE = "validation Dice of the other classes on the held-back trusted pixels"


def _fell(after: float | None, before: float | None) -> bool:
    return before is not None and after is not None and after < before - REGRESSION_TOLERANCE


#: A validation Dice this much below the base's counts as a regression.
REGRESSION_TOLERANCE = 1e-3

#: a validation Dice after a round below this is reported with the round's fit
#: on the corrected slices (:attr:`FinetuneResult.stuck_classes`)
STUCK_VALIDATION = 0.05


# ------------------------------------------------------------- preparation
def _layout(image: np.ndarray, labels: np.ndarray) -> tuple[bool, bool]:
    """(is_volume, is_rgb) for an image/labels pair, or a clear ValueError."""
    from .predict import image_layout, spatial_shape

    layout = image_layout(tuple(image.shape))
    spatial = spatial_shape(tuple(image.shape), layout)
    if tuple(labels.shape) != tuple(spatial):
        raise ValueError(
            f"labels shape {tuple(labels.shape)} differs from the image's spatial shape {tuple(spatial)}"
        )
    return layout.startswith("Z"), layout.endswith("C")


#: the share of a class's trusted pixels on a slice that validation blocks
#: (with their guard bands) must leave for training
MIN_TRAIN_SHARE = 0.5
#: a class with fewer trusted pixels on a slice (a 20-pixel lesion) gives none
#: of them to a smaller validation block: each is worth more for training
MIN_SPARE_PIXELS = 100


def _block_split(
    trusted: np.ndarray, rng: np.random.Generator, options: FinetuneOptions, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """Hold back whole blocks of trusted pixels: (train_mask, val_mask, blocks).

    The block edge shrinks (down to 8 px) until at least 10 blocks hold
    trusted pixels, so small corrections still get a split; fewer than 3
    blocks means no validation for this slice. Training pixels keep a guard
    band of ``edge // 8`` pixels away from validation blocks, so labels of a
    held-back block do not leak through neighbouring training pixels.

    With ``labels``, the split is stratified: every foreground class gets one
    held-back block that contains it, so validation can tell a model that
    finds the structure from one that predicts background everywhere. No
    block is held back (stratified or drawn at random for the rest) if it
    would leave some class with less than :data:`MIN_TRAIN_SHARE` of its
    trusted pixels on the slice for training, outside the held-back blocks and
    their guard bands. (It used to be "any pixel": a 64-px block over a lung
    tumour one slice showed left 6 of its 1 751 pixels to learn from.)
    :func:`prepare_corrections` gives a class back to training whole when
    the blocks of all its slices hold too little of it to judge it.
    """
    empty = np.zeros_like(trusted, dtype=bool)
    if options.val_fraction == 0:
        return trusted.astype(np.float32), empty, []
    edge = options.val_block
    while True:
        counts = _block_counts(trusted, edge)
        occupied = np.argwhere(counts > 0)
        if len(occupied) >= 10 or edge <= 8:
            break
        edge //= 2
    if len(occupied) < 3:
        return trusted.astype(np.float32), empty, []
    n_val = max(1, int(round(options.val_fraction * len(occupied))))
    classes = [int(c) for c in np.unique(labels[trusted]) if c != 0] if labels is not None else []

    #: smaller blocks held back for a class no block of the slice's edge can spare
    extra: list[tuple[int, int, int]] = []

    def regions(picks: list[int], more: list[tuple[int, int, int]] = ()) -> tuple[np.ndarray, np.ndarray]:
        val_region = np.zeros_like(trusted, dtype=bool)
        guard_region = np.zeros_like(trusted, dtype=bool)
        squares = [(int(by) * edge, int(bx) * edge, edge) for by, bx in occupied[picks]] + [*extra, *more]
        for y0, x0, e in squares:
            g = max(1, e // 8)
            val_region[y0 : y0 + e, x0 : x0 + e] = True
            guard_region[max(0, y0 - g) : y0 + e + g, max(0, x0 - g) : x0 + e + g] = True
        return val_region, guard_region

    class_pixels = {c: int((trusted & (labels == c)).sum()) for c in classes}

    def keeps_training(picks: list[int], more: list[tuple[int, int, int]] = ()) -> bool:
        """Every class keeps at least :data:`MIN_TRAIN_SHARE` of its trusted pixels
        for training, outside the held-back blocks and their guard bands."""
        if not classes:
            return True
        train = trusted & ~regions(picks, more)[1]
        return all(
            (train & (labels == c)).sum() >= max(1, MIN_TRAIN_SHARE * class_pixels[c]) for c in classes
        )

    picked: list[int] = []
    for cls in classes:  # one held-back block per foreground class, when it can spare one
        if len(picked) >= n_val:
            break
        per_block = _block_counts(trusted & (labels == cls), edge)[occupied[:, 0], occupied[:, 1]]
        if any(per_block[i] > 0 for i in picked):
            continue
        for i in rng.permutation(np.flatnonzero(per_block > 0)):
            if keeps_training([*picked, int(i)]):
                picked.append(int(i))
                break
        else:  # a compact lesion inside one block: hold back a smaller block at its edge
            small = edge // 2 if class_pixels[cls] >= MIN_SPARE_PIXELS else 0
            while small >= 8 and not _spare_small_block(trusted & (labels == cls), small, rng, picked,
                                                          keeps_training, extra):
                small //= 2
    for i in rng.permutation(len(occupied)):
        if len(picked) >= n_val:
            break
        if int(i) not in picked and keeps_training([*picked, int(i)]):
            picked.append(int(i))
    if not picked and not extra:
        return trusted.astype(np.float32), empty, []
    val_region, guard_region = regions(picked)
    blocks = [(int(by) * edge, int(bx) * edge, edge) for by, bx in occupied[picked]] + extra
    val_mask = trusted & val_region
    train_mask = trusted & ~guard_region
    if not train_mask.any():  # never hold back everything
        return trusted.astype(np.float32), empty, []
    return train_mask.astype(np.float32), val_mask, blocks


def _spare_small_block(region, edge, rng, picked, keeps_training, extra) -> bool:
    """Add to ``extra`` one ``edge``-sized block holding some of ``region`` that
    ``keeps_training`` allows; whether one was found."""
    counts = _block_counts(region, edge)
    for by, bx in rng.permutation(np.argwhere(counts > 0)):
        block = (int(by) * edge, int(bx) * edge, edge)
        if keeps_training(picked, [block]):
            extra.append(block)
            return True
    return False


def _block_counts(trusted: np.ndarray, edge: int) -> np.ndarray:
    h, w = trusted.shape
    ph, pw = -h % edge, -w % edge
    padded = np.pad(trusted, ((0, ph), (0, pw)))
    return padded.reshape((h + ph) // edge, edge, (w + pw) // edge, edge).sum(axis=(1, 3))


def _fingerprint(plane: np.ndarray) -> str:
    data = np.ascontiguousarray(plane)
    digest = hashlib.blake2b(data.tobytes(), digest_size=12)
    digest.update(str((data.shape, data.dtype.str)).encode())
    return digest.hexdigest()


class UnknownClassError(ValueError):
    """Labels use class ids the model does not have. The message advises the
    Python API's ``add_classes=True``; ``summary`` is the message without the
    advice, for front ends that name the option differently (the CLI's ``--add-classes``)."""

    api_option = "add_classes"

    def __init__(self, summary: str):
        self.summary = summary
        super().__init__(f"{summary}; fine-tune with add_classes=True to add a class")

    def __reduce__(self):  # picklable with its own argument
        return type(self), (self.summary,)


def _check_classes(trusted_labels: np.ndarray, model: SegmentationModel, add_classes: bool) -> int:
    """How many classes must be added (0 if none); raises for bad ids."""
    if trusted_labels.size == 0:
        return 0
    low, high = int(trusted_labels.min()), int(trusted_labels.max())
    if low < 0:
        raise ValueError(f"labels must be class ids >= 0, found {low}")
    k = model.config.architecture.num_classes
    if high < k:
        return 0
    if not add_classes:
        names = ", ".join(f"{c.id} {c.name}" for c in model.config.classes)
        raise UnknownClassError(
            f"the labels use class id {high}, but model {model.config.name!r} knows only {k} classes ({names})"
        )
    return high - k + 1


def _grow_classes(model: SegmentationModel, extra: int) -> None:
    """Add ``extra`` output classes to ``model`` (head channels + config)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.net.add_classes(extra)
    old = model.config
    k = old.architecture.num_classes
    classes = list(old.classes) + [
        ClassInfo(k + i, f"class {k + i}", _NEW_CLASS_COLOURS[(k + i) % len(_NEW_CLASS_COLOURS)]) for i in range(extra)
    ]
    model.config = old.replace(architecture=model.net.config, classes=tuple(classes))


#: most crops in a step (:func:`batch_for_crop`)
MAX_BATCH = 4


def batch_for_crop(options: FinetuneOptions, crop: int) -> int:
    """Crops per step: ``options.batch_size`` at the full crop size, more where
    the slices are smaller than the crop, to keep the pixels a step sees, up
    to :data:`MAX_BATCH` (the crop then already holds the whole slice, so
    further crops only repeat it). A breast MRI of 120 x 45 px trains on four
    crops of 128 px, as before 0.9.6; a CT of 512 px on two of 256 px."""
    scaled = round(options.batch_size * (options.crop_size / crop) ** 2)
    return max(options.batch_size, min(MAX_BATCH, scaled))


def round_crop(largest: int, crop_size: int, divisor: int) -> int:
    """A round's crop edge: the largest corrected slice's longer side, at most
    ``crop_size``, both rounded up to the network's ``divisor``."""
    return min(_round_up(crop_size, divisor), _round_up(largest, divisor))


def _round_up(value: int, divisor: int) -> int:
    return int(math.ceil(value / divisor) * divisor)


def _crop(entry: Correction, y0: int, x0: int, size: int, mask: np.ndarray) -> Batch:
    """A ``size`` x ``size`` window at (y0, x0) that may stick out of the slice:
    outside pixels are mirrored in the image and untrusted."""
    _, h, w = entry.plane.shape
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + size), min(w, x0 + size)
    pad = ((ys - y0, y0 + size - ye), (xs - x0, x0 + size - xe))
    image = entry.plane[:, ys:ye, xs:xe]
    labels = entry.labels[ys:ye, xs:xe]
    weights = mask[ys:ye, xs:xe]
    if any(p for pair in pad for p in pair):
        mode = "reflect" if min(image.shape[1:]) > max(max(pad[0]), max(pad[1])) else "symmetric"
        try:
            image = np.pad(image, ((0, 0), *pad), mode=mode)
        except ValueError:
            image = np.pad(image, ((0, 0), *pad), mode="edge")
        labels = np.pad(labels, pad)
        weights = np.pad(weights, pad)
    return image, labels, weights


class CorrectionSampler:
    """``sample_batch`` for :func:`~napari_unet.core.train.train_iter`: crops
    centred on trusted training pixels of the buffer's corrections.

    A share ``foreground`` of the crops is centred on a foreground pixel: a
    foreground class is drawn uniformly among those present anywhere in the
    buffer, then a correction holding it (square-root weighted by its pixel
    count), then one of its pixels. So a lesion of 20 pixels on one of ten
    corrected slices is in a crop as often as a large one: this is what lets a
    round learn a small lesion. The other crops are centred anywhere on the
    trusted pixels (corrections square-root weighted by their pixel count).
    """

    def __init__(
        self,
        entries: list[Correction],
        crop: int,
        augment: AugmentConfig,
        foreground: float = 0.5,
        errors: float = 0.0,
        net: torch.nn.Module | None = None,
        refresh_every: int = 25,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.entries = [e for e in entries if len(e.train_coords)]
        if not self.entries:
            raise ValueError("no trusted pixels left for training")
        self.crop = crop
        self.augment = augment
        self.foreground = foreground
        # square-root weighting: a few brush strokes on one slice still count
        weights = np.sqrt([len(e.train_coords) for e in self.entries])
        self.weights = weights / weights.sum()
        self.by_class: dict[int, tuple[list[int], np.ndarray]] = {}
        for i, entry in enumerate(self.entries):
            for cls, members in entry.class_coords.items():
                if cls != 0 and len(members):
                    self.by_class.setdefault(cls, ([], []))[0].append(i)
                    self.by_class[cls][1].append(np.sqrt(len(members)))
        self.by_class = {c: (ids, np.asarray(w) / np.sum(w)) for c, (ids, w) in self.by_class.items()}
        # hard examples: a share ``errors`` of the crops is centred on training
        # pixels the network currently gets wrong (refreshed every
        # ``refresh_every`` batches), so a structure it confuses with a lesion
        # elsewhere on the corrected slices (bright scalp, an organ's edge) is
        # seen as often as the lesion itself
        self.errors = errors if net is not None else 0.0
        self.net = net
        # the wrong pixels are found in the round's own precision: bfloat16
        # halves the cost of predicting ten 512-px planes on a CPU
        self.dtype = dtype
        self.refresh_every = max(1, refresh_every)
        self.calls = 0
        self.error_coords: list[np.ndarray] = [np.zeros(0, np.int64) for _ in self.entries]
        self.error_weights: np.ndarray | None = None
        self._next_refresh = 0

    #: planes predicted per refresh after the first (which does them all): with ten
    #: corrected 512-px slices a full refresh cost about a quarter of a round's time
    REFRESH_PLANES = 3

    def refresh_errors(self) -> None:
        """Predict corrections' whole planes and keep their wrong training pixels:
        all of them the first time, then the next :attr:`REFRESH_PLANES` in turn."""
        net = self.net
        modes = [m.training for m in net.modules()]
        device = next(net.parameters()).device
        net.eval()
        first = self.calls == 0
        count = len(self.entries) if first else min(self.REFRESH_PLANES, len(self.entries))
        chosen = [(self._next_refresh + i) % len(self.entries) for i in range(count)]
        self._next_refresh = (self._next_refresh + count) % len(self.entries)
        coords = list(self.error_coords)
        try:
            with torch.inference_mode(), autocast(device, self.dtype):
                for index in chosen:
                    entry = self.entries[index]
                    pred = _predict_around(net, entry.plane, entry.train_mask > 0, device)
                    wrong = np.flatnonzero(pred[tuple(entry.train_coords.T)] != entry.labels[tuple(entry.train_coords.T)])
                    coords[index] = wrong
        finally:
            for m, mode in zip(net.modules(), modes):
                m.training = mode
        weights = [np.sqrt(len(wrong)) for wrong in coords]
        total = float(np.sum(weights))
        self.error_coords = coords
        self.error_weights = np.asarray(weights) / total if total > 0 else None

    def _centre(self, rng: np.random.Generator) -> tuple[Correction, int]:
        if self.error_weights is not None and rng.random() < self.errors:
            i = int(rng.choice(len(self.entries), p=self.error_weights))
            wrong = self.error_coords[i]
            return self.entries[i], int(wrong[rng.integers(len(wrong))])
        if self.by_class and rng.random() < self.foreground:
            classes = sorted(self.by_class)
            cls = classes[int(rng.integers(len(classes)))]
            ids, weights = self.by_class[cls]
            entry = self.entries[ids[int(rng.choice(len(ids), p=weights))]]
            members = entry.class_coords[cls]
            return entry, int(members[rng.integers(len(members))])
        entry = self.entries[int(rng.choice(len(self.entries), p=self.weights))]
        return entry, int(rng.integers(len(entry.train_coords)))

    def __call__(self, rng: np.random.Generator, n: int) -> Batch:
        if self.errors and self.calls % self.refresh_every == 0:
            self.refresh_errors()
        self.calls += 1
        xs, ys, ms = [], [], []
        for _ in range(n):
            entry, index = self._centre(rng)
            cy, cx = entry.train_coords[index]
            jitter = self.crop // 4
            y0 = int(cy) - self.crop // 2 + int(rng.integers(-jitter, jitter + 1))
            x0 = int(cx) - self.crop // 2 + int(rng.integers(-jitter, jitter + 1))
            image, labels, mask = _crop(entry, y0, x0, self.crop, entry.train_mask)
            image, labels, mask = augment_sample(image, labels, mask, rng, self.augment)
            xs.append(image)
            ys.append(labels)
            ms.append(mask)
        return np.stack(xs), np.stack(ys).astype(np.int64), np.stack(ms)


def _predict_plane(net: torch.nn.Module, plane: np.ndarray, device: Any) -> np.ndarray:
    """Argmax class of every pixel of one normalised (C, H, W) plane (padded
    to the network's divisor); the caller sets eval mode and inference mode."""
    _, h, w = plane.shape
    divisor = net.config.divisor if hasattr(net, "config") else 16
    ph, pw = -h % divisor, -w % divisor
    x = np.pad(plane, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
    logits = net(torch.from_numpy(np.ascontiguousarray(x))[None].to(device))
    return logits[0, :, :h, :w].argmax(0).cpu().numpy()


#: pixels of context kept around the trusted pixels when a round predicts a
#: corrected plane for itself (errors to sample, the fit before/after)
CONTEXT_MARGIN = 64


def _predict_around(net: torch.nn.Module, plane: np.ndarray, where: np.ndarray, device: Any,
                    margin: int = CONTEXT_MARGIN) -> np.ndarray:
    """Argmax class of the pixels in the bounding box of ``where`` (with
    ``margin`` pixels of context), -1 elsewhere. A 200-px patch corrected on a
    1411-px photo is predicted as a 328-px crop, not the whole photo (which
    took most of a widened round's budget); a whole corrected slice is
    predicted whole, as before."""
    pred = np.full(where.shape, -1, np.int64)
    ys, xs = np.nonzero(where)
    if ys.size == 0:
        return pred
    h, w = where.shape
    y0, y1 = max(0, int(ys.min()) - margin), min(h, int(ys.max()) + 1 + margin)
    x0, x1 = max(0, int(xs.min()) - margin), min(w, int(xs.max()) + 1 + margin)
    pred[y0:y1, x0:x1] = _predict_plane(net, plane[:, y0:y1, x0:x1], device)
    return pred


def corrections_fit(net: torch.nn.Module, entries: list[Correction], classes: list[int]) -> float | None:
    """Mean of :func:`class_fits` over ``classes`` (``None`` when none has a score)."""
    scores = [f for f in class_fits(net, entries, classes).values() if f is not None]
    return float(np.mean(scores)) if scores else None


def class_fits(net: torch.nn.Module, entries: list[Correction], classes: list[int]) -> dict[int, float | None]:
    """Dice of each of ``classes`` on every trusted pixel of the corrections: how
    well ``net`` reproduces what the user marked on the slices the round
    learned from (the training pixels were seen in training, so it is a fit,
    not a test; the held-back ones, where these classes are (almost) absent,
    count what the model calls them there as false alarms, in proportion).
    ``None`` for a class no such pixel is predicted or marked as."""
    return class_scores(net, entries, classes)[0]


def class_scores(
    net: torch.nn.Module, entries: list[Correction], classes: list[int]
) -> tuple[dict[int, float | None], dict[int, float | None]]:
    """``(fits, found)`` from one prediction of the corrected slices: each
    class's Dice there (:func:`class_fits`) and its recall, the share of the
    pixels marked as it that ``net`` calls it (``None`` where none is marked)."""
    modes = [m.training for m in net.modules()]
    device = next(net.parameters()).device
    net.eval()
    overlap = dict.fromkeys(classes, 0)
    called = dict.fromkeys(classes, 0)
    marked = dict.fromkeys(classes, 0)
    try:
        with torch.inference_mode():
            for entry in entries:
                trusted = (entry.train_mask > 0) | entry.val_mask
                pred, truth = _predict_around(net, entry.plane, trusted, device)[trusted], entry.labels[trusted]
                for c in classes:
                    overlap[c] += int(np.count_nonzero((pred == c) & (truth == c)))
                    called[c] += int(np.count_nonzero(pred == c))
                    marked[c] += int(np.count_nonzero(truth == c))
    finally:
        for m, mode in zip(net.modules(), modes):
            m.training = mode
    fits = {c: (2 * overlap[c] / (called[c] + marked[c]) if called[c] + marked[c] else None) for c in classes}
    found = {c: (overlap[c] / marked[c] if marked[c] else None) for c in classes}
    return fits, found


#: held-back pixels a class needs for validation to judge it (``keep="auto"``)
MIN_VAL_CLASS_PIXELS = 20


def blind_classes(entries: list[Correction], validation: list[Batch]) -> list[int]:
    """Foreground classes the corrections train on that the held-back
    validation pixels (almost) do not contain: a validation score cannot
    tell whether the round learned them."""
    trained: set[int] = set()
    for entry in entries:
        trained.update(int(v) for v in np.unique(entry.labels[entry.train_mask > 0]) if v)
    seen = _class_pixels((labels, mask > 0) for _, labels, mask in validation)
    return sorted(c for c in trained if seen.get(c, 0) < MIN_VAL_CLASS_PIXELS)


def _class_pixels(pairs) -> dict[int, int]:
    """``{class id: pixels}`` over ``(labels, bool mask)`` pairs."""
    seen: dict[int, int] = {}
    for labels, mask in pairs:
        values, counts = np.unique(labels[mask], return_counts=True)
        for v, n in zip(values, counts):
            seen[int(v)] = seen.get(int(v), 0) + int(n)
    return seen


def validation_batches(entries: list[Correction], divisor: int, max_blocks: int, batch: int = 8) -> list[Batch]:
    """Crops around the held-back blocks (with context), masked to validation
    pixels, in batches of equal-size crops. At most ``max_blocks`` blocks
    (an even subsample of them) keep the cost of a validation check bounded."""
    blocks = [(e, b) for e in entries for b in e.val_blocks]
    if not blocks:
        return []
    if len(blocks) > max_blocks:
        keep = np.linspace(0, len(blocks) - 1, max_blocks).round().astype(int)
        blocks = [blocks[i] for i in keep]
    by_size: dict[int, list[Batch]] = {}
    for entry, (y0, x0, edge) in blocks:
        margin = max(16, edge // 2)
        size = _round_up(edge + 2 * margin, divisor)
        offset = (size - edge) // 2
        mask = np.zeros(entry.labels.shape, np.float32)
        mask[y0 : y0 + edge, x0 : x0 + edge] = entry.val_mask[y0 : y0 + edge, x0 : x0 + edge]
        by_size.setdefault(size, []).append(_crop(entry, y0 - offset, x0 - offset, size, mask))
    batches = []
    for crops in by_size.values():
        for i in range(0, len(crops), batch):
            part = crops[i : i + batch]
            batches.append(
                (
                    np.stack([c[0] for c in part]).astype(np.float32),
                    np.stack([c[1] for c in part]).astype(np.int64),
                    np.stack([c[2] for c in part]).astype(np.float32),
                )
            )
    return batches


def prepare_corrections(
    image,
    labels,
    mask,
    model: SegmentationModel,
    options: FinetuneOptions,
    seed: int,
    round_index: int,
) -> tuple[list[Correction], int]:
    """Normalise every slice with trusted pixels into a :class:`Correction`.

    Returns the corrections and the number of trusted pixels. Raises
    ``ValueError`` for mismatched shapes or when nothing is trusted.
    """
    image = np.asarray(image) if not hasattr(image, "shape") else image
    labels = np.asarray(labels)
    volume, rgb = _layout(image, labels)
    if mask is None:
        trusted_all = np.ones(labels.shape, dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != labels.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the labels shape {labels.shape}")
        trusted_all = mask != 0
    total = int(trusted_all.sum())
    if total == 0:
        raise ValueError("no trusted pixels: correct some pixels or mark a slice reviewed first")
    config = model.config
    ranges = intensity_ranges(image, config.input, rgb)
    planes = range(labels.shape[0]) if volume else [None]
    split = []
    for z in planes:
        trusted = trusted_all[z] if z is not None else trusted_all
        if not trusted.any():
            continue
        raw = np.asarray(image[z] if z is not None else image)
        plane = normalize_slice(raw, ranges, config.architecture.in_channels, config.input)
        slice_labels = np.asarray(labels[z] if z is not None else labels)
        key = f"{_fingerprint(raw)}:{z if z is not None else 0}"
        split_rng = np.random.default_rng([seed, int(key[:8], 16)])
        train_mask, val_mask, blocks = _block_split(trusted, split_rng, options, slice_labels)
        safe_labels = np.where(trusted, slice_labels, 0).astype(np.int64)
        split.append((key, plane, safe_labels, train_mask, val_mask, blocks))
    _train_on_what_validation_cannot_judge(split)
    corrections = [
        Correction(key=key, plane=np.ascontiguousarray(plane, dtype=np.float32), labels=safe_labels,
                   train_mask=train_mask, val_mask=val_mask, val_blocks=blocks, round=round_index)
        for key, plane, safe_labels, train_mask, val_mask, blocks in split
    ]
    return corrections, total


def _train_on_what_validation_cannot_judge(split: list[tuple]) -> None:
    """In place: a foreground class of which the held-back blocks of all the
    slices hold fewer than :data:`MIN_VAL_CLASS_PIXELS` pixels (validation is
    blind to it anyway) trains on every pixel of it, the held-back and the
    guard-band ones too. The split used to hold back 5 pixels of a 161-pixel
    lung nodule (the real lung1 case) and lose 40 more to the guard bands: a
    blind validation figure and a starved lesion at once. Left as split when
    no other held-back pixel would remain (the user marked only the lesion):
    the round then keeps its blind validation and the version gate its fit on
    the corrected slices. ``split``: (key,
    plane, labels, train_mask, val_mask, blocks) per slice, labels 0 where
    not trusted."""
    present = {int(c) for _, _, labels, _, _, _ in split for c in np.unique(labels) if c}
    held = _class_pixels((labels, val_mask) for _, _, labels, _, val_mask, _ in split)
    blind = [c for c in sorted(present) if held.get(c, 0) < MIN_VAL_CLASS_PIXELS]
    if not blind or not any((val_mask & ~np.isin(labels, blind)).any() for _, _, labels, _, val_mask, _ in split):
        return  # nothing else held back (only the lesion was marked): the split stays, the fit judges it
    for _, _, labels, train_mask, val_mask, _ in split:
        own = np.isin(labels, blind)
        train_mask[own] = 1.0
        val_mask[own] = False


# ------------------------------------------------------------------ the round
def finetune_iter(
    image,
    labels,
    mask=None,
    model: SegmentationModel | str | None = None,
    *,
    max_seconds: float | None = None,
    steps: int | None = None,
    device: str = "auto",
    seed: int = 0,
    replay: ReplayBuffer | None = None,
    add_classes: bool = False,
    options: FinetuneOptions | None = None,
    stop: Callable[[], bool] | None = None,
    reference: SegmentationModel | None = None,
) -> Generator[TrainEvent, None, FinetuneResult]:
    """Fine-tune a copy of ``model`` on the trusted pixels, one event per step.

    Args:
        image: (Y,X), (Y,X,3), (Z,Y,X) or (Z,Y,X,3) raw intensities.
        labels: class ids, the image's spatial shape.
        mask: nonzero where ``labels`` is trusted; ``None`` trusts every pixel.
        model: the model to start from (left unchanged); a folder or bundled
            name is loaded; ``None`` loads the default bundled model.
        max_seconds: time budget; default 60 s on a CPU, 20 s on a GPU (only
            when ``steps`` is not given either).
        steps: step budget (with ``max_seconds``, whichever comes first).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        seed: seeds the validation split, crops and augmentation.
        replay: a :class:`ReplayBuffer` kept across rounds of a session; this
            round's corrections are added to it and its earlier ones trained on.
        add_classes: grow the model's head when the labels use class ids
            beyond its classes (otherwise that is a ``ValueError``).
        options: further knobs (:class:`FinetuneOptions`).
        stop: asked before every step; once it returns True the round ends
            gracefully and returns the best weights so far
            (``stop_reason="cancelled"``).
        reference: the model the result is compared with ("before", and the
            regression check); default ``model``. A round that retrains the
            session's starting model on every correction so far passes the
            model the user has now, so "better" means better than that.

    Yields:
        :class:`~napari_unet.core.train.TrainEvent` after every step (closing
        the generator also cancels: the result then is lost, the input model
        unchanged).

    Returns:
        A :class:`FinetuneResult`; ``result.model`` holds the best weights and
        a config with provenance.
    """
    from .weights import load_model

    start = time.perf_counter()
    options = options or FinetuneOptions()
    base = model if isinstance(model, SegmentationModel) else load_model(model, "cpu")
    torch_device = resolve_device(device)
    replay = replay if replay is not None else ReplayBuffer()

    labels_array = np.asarray(labels)
    mask_array = None if mask is None else np.asarray(mask)
    _layout(image, labels_array)
    if mask_array is not None and mask_array.shape != labels_array.shape:
        raise ValueError(f"mask shape {mask_array.shape} differs from the labels shape {labels_array.shape}")
    trusted_values = labels_array[mask_array != 0] if mask_array is not None else labels_array
    extra = _check_classes(trusted_values, base, add_classes)

    new = copy_model(base)
    converted = options.instance_norm and new.config.architecture.norm == "batch"
    if converted:
        net = to_instance_norm(new.net)
        new = SegmentationModel(config=new.config.replace(architecture=net.config), net=net, source=new.source)
    if options.reset_head:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            new.net.head.reset_parameters()
            torch.nn.init.zeros_(new.net.head.bias)
    width = _round_width(options, torch_device)
    if width and new.config.architecture.norm != "group" and new.config.architecture.base_channels < width:
        net = widen(new.net, width, seed=seed)
        new = SegmentationModel(config=new.config.replace(architecture=net.config), net=net, source=new.source)
    if extra:
        _grow_classes(new, extra)
    round_index = replay.rounds + 1
    corrections, trusted = prepare_corrections(image, labels_array, mask_array, new, options, seed, round_index)
    for correction in corrections:
        replay.add(correction)
    replay.rounds = round_index
    entries = list(replay.entries.values())
    arch = new.config.architecture
    for entry in entries:
        if int(entry.labels.max()) >= arch.num_classes:
            raise ValueError(
                f"a correction kept from an earlier round uses class id {int(entry.labels.max())}, "
                f"beyond this model's {arch.num_classes} classes; clear the replay buffer"
            )

    largest = max(max(e.plane.shape[1:]) for e in entries)
    crop = round_crop(largest, options.crop_size, arch.divisor)
    batch = batch_for_crop(options, crop)
    sampler = CorrectionSampler(
        entries, crop, options.augment, foreground=options.foreground_crops,
        errors=options.error_crops, net=new.net, refresh_every=options.error_refresh,
        dtype=resolve_precision(options.precision, torch_device),
    )
    validation = validation_batches(entries, arch.divisor, options.max_val_blocks)
    validation_pixels = int(sum(b[2].sum() for b in validation))
    keep, patience = options.keep, options.patience
    # without held-back pixels (``val_fraction=0``, or slices too small for a
    # block) every class is blind: the gate then compares the fit
    blind = blind_classes(entries, validation)
    if keep == "auto":
        keep = "last" if blind or not validation else "best"
        if blind:
            patience = None

    if max_seconds is None and steps is None:
        max_seconds = CPU_SECONDS if torch_device.type == "cpu" else GPU_SECONDS
    patience = patience if validation and steps is None else None  # an explicit step count is a promise
    reporting_only = keep == "last" and patience is None
    train_options = TrainOptions(
        max_steps=steps,
        max_seconds=max_seconds,
        batch_size=batch,
        lr=options.lr,
        weight_decay=options.weight_decay,
        warmup_steps=options.warmup_steps,
        schedule=options.schedule,
        val_every=max(options.val_every, options.report_every) if reporting_only else options.val_every,
        plan_round=options.val_every,
        patience=patience,
        device=str(torch_device),
        precision=options.precision,
        seed=seed,
        freeze_encoder=options.freeze_encoder,
        encoder_lr_scale=options.encoder_lr_scale,
        norm_eval=options.norm_eval,
        dice_weight=options.dice_weight,
        initial_is_candidate=False,
        keep=keep,
        class_weight=None if options.foreground_weight == 1.0 else
        (1.0,) + (float(options.foreground_weight),) * (arch.num_classes - 1),
        plan_after=options.plan_after,
        average_tail=options.average_tail,
    )
    result = yield from train_iter(new, sampler, validation or None, train_options, stop=stop)
    budget_steps = result.steps
    fits = None  # per-class fit of the returned weights, when the extension measured it
    if steps is None and options.extend_unlearned:
        result, fits = yield from _until_learned(
            new, sampler, validation or None, train_options, result, entries, options, stop)
    compared = reference if reference is not None else base
    if (converted or reference is not None) and validation and result.initial_val_dice is not None and not extra:
        # "before" is the compared model as it is (the round may have started
        # from an instance-norm copy, or from another model)
        from .train import validation_dice

        result.initial_val_dice = validation_dice(compared, validation, "cpu")
    new.net.to("cpu")
    seconds = time.perf_counter() - start

    base_rounds = int(base.config.provenance.get("rounds", 0)) if base.config.provenance else 0
    provenance = {
        "kind": "finetune",
        "base_model": base.config.name,
        "base_source": base.source,
        **({"compared_with": reference.config.name} if reference is not None else {}),
        "trusted_pixels": trusted,
        "slices": len(corrections),
        "replay_slices": len(entries),
        "replay_trusted_pixels": replay.trusted_pixels,
        "validation_pixels": validation_pixels,
        "rounds": base_rounds + 1,
        "session_round": round_index,
        "val_dice_before": _round_or_none(result.initial_val_dice),
        "val_dice_after": _round_or_none(result.best_val_dice),
        "seconds": round(seconds, 2),
        "steps": result.steps,
        "extra_steps": result.steps - budget_steps,
        "averaged_steps": result.averaged_steps,
        "crop": crop,
        "batch": batch,
        "best_step": result.best_step,
        "stop_reason": result.stop_reason,
        "device": result.device,
        "precision": result.precision,
        "seed": seed,
        "added_classes": extra,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    name = base.config.name if base.config.name.endswith("-finetuned") else f"{base.config.name}-finetuned"
    new.config = new.config.replace(name=name, provenance=provenance)
    new.source = "finetune"
    finished = FinetuneResult(
        model=new,
        val_dice_before=result.initial_val_dice,
        val_dice_after=result.best_val_dice,
        trusted_pixels=trusted,
        slices=len(corrections),
        seconds=seconds,
        history=result.history,
        steps=result.steps,
        stop_reason=result.stop_reason,
        validation_pixels=validation_pixels,
        replay_slices=len(entries),
        train=result,
        notes=list(result.notes),
        blind_classes=list(blind),
        extra_steps=result.steps - budget_steps,
    )
    if not blind and validation and finished.val_dice_after is not None and finished.val_dice_after < STUCK_VALIDATION:
        # a figure near 0 on a few held-back pixels says little of a round that
        # may have learned the lesion everywhere else: report the fit beside it
        finished.stuck_classes = _marked_classes(entries)
    # classes the held-back pixels cannot judge (blind) or judged near 0 (stuck): how well do they fit?
    fitted = blind or finished.stuck_classes
    if fitted:
        finished.fit_before = corrections_fit(compared.net, entries, fitted)
        if fits is not None and set(fitted) <= set(fits):  # measured already: no second prediction
            known = [fits[c] for c in fitted if fits[c] is not None]
            finished.fit_after = float(np.mean(known)) if known else None
        else:
            finished.fit_after = corrections_fit(new.net, entries, fitted)
        provenance["fit_dice_before"] = _round_or_none(finished.fit_before)
        provenance["fit_dice_after"] = _round_or_none(finished.fit_after)
    if blind:
        provenance["blind_classes"] = list(blind)
    if blind and validation:
        from .train import validation_matrix

        if not extra:  # a base without the added classes cannot be scored on them
            finished.val_other_before = dice_without(validation_matrix(compared, validation, "cpu")[0], blind)
        finished.val_other_after = dice_without(validation_matrix(new, validation, "cpu")[0], blind)
        provenance["val_other_dice_before"] = _round_or_none(finished.val_other_before)
        provenance["val_other_dice_after"] = _round_or_none(finished.val_other_after)
    if finished.regressed:
        after, before, what = finished.gate_scores()
        finished.notes.append(
            f"the new model scores lower than its base ({what}: {before:.3f} -> {after:.3f}); "
            "keep the base model, or correct more slices and fine-tune again"
        )
        log.warning(finished.notes[-1])
        provenance["regressed"] = True
    return finished


def _marked_classes(entries: list[Correction]) -> list[int]:
    """The foreground classes the corrections mark on their training pixels."""
    return sorted({int(c) for e in entries for c in np.unique(e.labels[e.train_mask > 0]) if c})


def _until_learned(model, sampler, validation, train_options: TrainOptions, result: TrainResult,
                   entries: list[Correction], options: FinetuneOptions, stop
                   ) -> Generator[TrainEvent, None, tuple[TrainResult, dict[int, float | None] | None]]:
    """Train on while a class the corrections mark is not learned on the
    corrected slices (``FinetuneOptions.extend_unlearned``); returns the whole
    run's result and the per-class fit of its weights (``None`` when not
    measured). Events go on counting steps and seconds from the budget's."""
    if result.stop_reason != "time":  # cancelled, or an explicit step count
        return result, None
    marked = _marked_classes(entries)
    if not marked:
        return result, None
    names = {c.id: c.name for c in model.config.classes}
    fits, found = class_scores(model.net, entries, marked)
    first_found = min(f or 0.0 for f in found.values())
    chunk = max(result.steps, 1)
    for extension in range(1, options.extend_unlearned + 1):
        low = {c: f or 0.0 for c, f in found.items() if (f or 0.0) < options.learned_fit}
        if not low:
            break
        lowest = min(low.values())
        stage = (f"{' and '.join(names.get(c, f'class {c}') for c in low)} not learned yet "
                 f"(found {lowest:.0%} of it on the corrected slices): training on, "
                 f"{extension} of {options.extend_unlearned}")
        log.info(stage)
        done = train_options.start_step + result.steps
        more_options = replace(train_options, start_step=done, max_steps=done + chunk, max_seconds=None,
                               plan_after=None, seed=train_options.seed + extension)
        offset = result.seconds
        part_run = train_iter(model, sampler, validation, more_options, stop=stop)
        try:
            while True:
                event = next(part_run)
                yield replace(event, elapsed=event.elapsed + offset, stage=stage)
        except StopIteration as finished:
            part = finished.value
        finally:
            part_run.close()
        result = replace(
            result,
            history=result.history + [replace(e, elapsed=e.elapsed + offset, stage=stage) for e in part.history],
            best_val_dice=part.best_val_dice,
            steps=result.steps + part.steps,
            seconds=offset + part.seconds,
            stop_reason="cancelled" if part.stop_reason == "cancelled" else result.stop_reason,
            best_step=part.best_step,
            notes=result.notes + part.notes,
            averaged_steps=part.averaged_steps,
        )
        if part.stop_reason == "cancelled":
            return result, None  # the weights moved since the last fit: not measured
        fits, found = class_scores(model.net, entries, marked)
        if min(f or 0.0 for f in found.values()) <= lowest:
            break  # no progress: more of the same will not help
    if result.steps > chunk:
        result.notes.append(
            f"the budget ended before the round had learned what the corrections mark "
            f"(it found {first_found:.0%} of a marked class on the corrected slices): it trained "
            f"{result.steps - chunk} more steps, to {min(f or 0.0 for f in found.values()):.0%}"
        )
    return result, fits


def _round_or_none(value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), 4)


def finetune(
    image,
    labels,
    mask=None,
    model: SegmentationModel | str | None = None,
    *,
    max_seconds: float | None = None,
    steps: int | None = None,
    device: str = "auto",
    seed: int = 0,
    replay: ReplayBuffer | None = None,
    add_classes: bool = False,
    options: FinetuneOptions | None = None,
    events: Callable[[TrainEvent], object] | None = None,
    stop: Callable[[], bool] | None = None,
    return_result: bool = False,
    reference: SegmentationModel | None = None,
) -> SegmentationModel | FinetuneResult:
    """Fine-tune and return the new model (or the full :class:`FinetuneResult`
    with ``return_result=True``); ``events`` receives every
    :class:`~napari_unet.core.train.TrainEvent`. See :func:`finetune_iter`."""
    gen = finetune_iter(
        image,
        labels,
        mask,
        model,
        max_seconds=max_seconds,
        steps=steps,
        device=device,
        seed=seed,
        replay=replay,
        add_classes=add_classes,
        options=options,
        stop=stop,
        reference=reference,
    )
    from .predict import run_to_end

    result: FinetuneResult = run_to_end(gen, events)
    return result if return_result else result.model


__all__ = [
    "CPU_SECONDS",
    "GPU_SECONDS",
    "Correction",
    "CorrectionSampler",
    "FinetuneOptions",
    "FinetuneResult",
    "ReplayBuffer",
    "finetune",
    "finetune_iter",
    "prepare_corrections",
    "validation_batches",
]
