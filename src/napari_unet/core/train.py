"""The training engine: one loop for training from scratch and for fine-tuning.

API (headless; no Qt, no napari)::

    options = TrainOptions(max_steps=2000, max_seconds=None, batch_size=8, lr=1e-3)
    gen = train_iter(model, sample_batch, validation, options, checkpoint=None)
    for event in gen:          # one TrainEvent per optimisation step: a cancel point
        ...                    # gen.close() cancels; the model keeps the best weights
    # or: result = run_training(model, sample_batch, validation, options, callback=print)

* ``model``: a :class:`~napari_unet.core.weights.SegmentationModel`; it is
  trained **in place** (copy it first to keep the original; fine-tuning does).
* ``sample_batch(rng, n) -> (x, y, mask)``: ``x`` (N,C,H,W) float32 normalised
  images, ``y`` (N,H,W) int64 class ids, ``mask`` (N,H,W) float32 trust
  weights (0 = ignored by the loss). ``rng`` is a ``numpy.random.Generator``
  seeded from ``options.seed``; ``n`` is the batch size (it may shrink after an
  out-of-memory error). H and W must be multiples of ``2**depth``.
* ``validation``: a list of ``(x, y, mask)`` batches of the same kind (fixed),
  or ``None``. Validation Dice is the mean foreground Dice over trusted pixels
  of the whole list (:func:`validation_dice`), checked before the first step,
  every ``val_every`` steps and after the last. The starting weights count as
  a candidate for "best" unless ``initial_is_candidate=False``.
* ``checkpoint(model, event)``: called every ``options.checkpoint_every``
  steps and once at the end, with the model holding its **best weights so far**
  (in eval mode); save it with ``save_model(model, folder, overwrite=True)``,
  which is atomic. Training resumes afterwards with the current weights.
* ``stop() -> bool`` (optional): asked before every step; True ends the run
  gracefully with ``stop_reason="cancelled"`` and a full result.
* The generator returns a :class:`TrainResult` (``StopIteration.value``;
  :func:`run_training` hands it back directly). Whether it ends normally, is
  closed (napari's ``thread_worker`` quit does that) or raises, the model ends
  up holding the best weights seen (by validation Dice; by smoothed training
  loss without validation) and in eval mode.

Loss: :func:`~napari_unet.core.losses.masked_ce_dice_loss`. Optimiser: AdamW
with linear warm-up and cosine decay over the step or time budget (whichever
runs out first). Precision ``auto``: float16 autocast with a GradScaler on
CUDA, float16 on MPS, bfloat16 autocast on CPUs with native bfloat16, float32
otherwise. An out-of-memory error halves the batch and retries.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .device import autocast, empty_cache, is_out_of_memory, resolve_device, resolve_precision
from .losses import masked_ce_dice_loss
from .metrics import confusion_matrix, score_from_confusion
from .model import set_norm_eval
from .weights import SegmentationModel

log = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]
SampleBatch = Callable[[np.random.Generator, int], Batch]

#: The training loop's clock (a module attribute, so a test can replace it).
_clock = time.perf_counter

#: Stop after this many consecutive steps with a non-finite loss.
MAX_BAD_STEPS = 20


@dataclass(frozen=True)
class TrainOptions:
    """Knobs of one training run, with defaults that suit fine-tuning on a CPU.

    At least one of ``max_steps`` and ``max_seconds`` must be set; with both,
    whichever is reached first ends the run, and the learning-rate schedule
    follows whichever is further along.
    """

    #: optimisation steps to run (``None``: only the time budget counts)
    max_steps: int | None = 500
    #: wall-clock budget in seconds, validation included (``None``: no limit)
    max_seconds: float | None = None
    batch_size: int = 8
    #: peak learning rate of AdamW
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: steps of linear warm-up from ``lr / 10`` to ``lr``
    warmup_steps: int = 10
    #: ``cosine`` decays to ``lr * min_lr_ratio`` over the budget; ``constant`` keeps it
    schedule: str = "cosine"
    min_lr_ratio: float = 0.05
    #: validate every this many steps (also before the first and after the last)
    val_every: int = 20
    #: stop when this many validations in a row bring no improvement (``None``: never)
    patience: int | None = None
    #: improvement smaller than this does not count
    min_delta: float = 1e-4
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    #: train the decoder and head only; encoder weights and norm statistics fixed
    freeze_encoder: bool = False
    #: the encoder's learning rate as a fraction of ``lr`` (discriminative
    #: fine-tuning: general low-level features move slowly, the decoder adapts)
    encoder_lr_scale: float = 1.0
    #: keep batch-norm running statistics fixed (tiny fine-tuning batches)
    norm_eval: bool = False
    #: weight of the Dice term of the loss (0: cross-entropy only)
    dice_weight: float = 1.0
    #: clip the gradient norm to this (``None``: no clipping)
    grad_clip: float | None = 5.0
    #: call the ``checkpoint`` hook every this many steps (``None``: only at the end)
    checkpoint_every: int | None = None
    #: resume the step count and schedule from here (for a resumed run)
    start_step: int = 0
    #: whether the starting weights compete for "best" (validated before step 1).
    #: ``False`` (fine-tuning) always returns trained weights, so a regression
    #: gate can compare them with the starting model honestly.
    initial_is_candidate: bool = True
    #: which weights the run returns: ``best`` (best validation Dice, or lowest
    #: smoothed loss without validation) or ``last`` (the end of the schedule;
    #: validation is then only measured and reported, and with a few small
    #: held-back blocks it is too noisy to choose weights by)
    keep: str = "best"
    #: cross-entropy weight of each class (``None``: equal)
    class_weight: tuple[float, ...] | None = None
    #: with a time budget, after this many steps the budget becomes a fixed
    #: step count: the steps that fit in ``max_seconds`` at the speed of the
    #: steps since the warm-up (less the validation checks still to come),
    #: rounded to the nearest multiple of ``plan_round`` (``None``:
    #: ``val_every``). Until then the rate stays at its peak and
    #: afterwards the schedule follows the steps, not the clock, so two runs
    #: that plan the same count train the same model. ``None``: the clock
    #: drives the schedule.
    plan_after: int | None = None
    #: a planned run that slows down still stops at this multiple of ``max_seconds``
    plan_slack: float = 1.5
    #: the plan's step count is a multiple of this (``None``: ``val_every``), so
    #: that a small jitter in the measured speed plans the same count
    plan_round: int | None = None
    #: with ``keep="last"``: return the uniform average of the weights over
    #: the last this share of the run's steps (tail averaging) instead of the
    #: last weights; ``None``: the last weights. Needs a known step count
    #: (``max_steps`` or the plan); a run that ends before the averaging began
    #: returns its last weights
    average_tail: float | None = None

    def __post_init__(self) -> None:
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("set max_steps, max_seconds or both: training needs a budget")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 < self.encoder_lr_scale <= 1.0:
            raise ValueError(f"encoder_lr_scale must be in (0, 1], got {self.encoder_lr_scale}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.val_every < 1:
            raise ValueError(f"val_every must be >= 1, got {self.val_every}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 or None, got {self.checkpoint_every}")
        if self.plan_after is not None and self.plan_after < 1:
            raise ValueError(f"plan_after must be >= 1 or None, got {self.plan_after}")
        if self.plan_slack < 1.0:
            raise ValueError(f"plan_slack must be >= 1, got {self.plan_slack}")
        if self.plan_round is not None and self.plan_round < 1:
            raise ValueError(f"plan_round must be >= 1 or None, got {self.plan_round}")
        if self.average_tail is not None and not 0.0 < self.average_tail <= 1.0:
            raise ValueError(f"average_tail must be in (0, 1] or None, got {self.average_tail}")


@dataclass(frozen=True)
class TrainEvent:
    """What happened in one optimisation step (``step`` counts from 1).

    ``val_dice`` is set on steps where validation ran, else ``None``;
    ``best_val_dice`` is the best so far (``None`` without validation);
    ``improved`` says whether this step's weights became the kept best.
    """

    step: int
    max_steps: int | None
    elapsed: float
    loss: float
    lr: float
    val_dice: float | None
    best_val_dice: float | None
    improved: bool
    max_seconds: float | None = None
    batch_size: int = 0
    #: what the run is doing beyond its budget, for progress displays ("" normally;
    #: a fine-tuning round that has not learned a marked class yet says so)
    stage: str = ""

    @property
    def fraction(self) -> float:
        """How much of the budget is spent, 0..1 (for progress bars)."""
        parts = []
        if self.max_steps:
            parts.append(self.step / self.max_steps)
        if self.max_seconds:
            parts.append(self.elapsed / self.max_seconds)
        return min(1.0, max(parts)) if parts else 0.0


@dataclass
class TrainResult:
    """The end of a run. ``model`` holds the best weights; ``stop_reason`` is
    ``steps``, ``time``, ``early-stop`` or ``cancelled``."""

    model: SegmentationModel
    history: list[TrainEvent]
    best_val_dice: float | None
    steps: int
    seconds: float
    stop_reason: str
    initial_val_dice: float | None = None
    best_step: int = 0
    precision: str = "float32"
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)
    #: the time budget as a step count (``plan_after``), ``None`` when not planned
    planned_steps: int | None = None
    #: steps whose weights were averaged into the returned ones (``average_tail``; 0: the last weights)
    averaged_steps: int = 0


# ------------------------------------------------------------------- helpers
def _to_tensors(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y, mask = batch
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"a batch's images must be (N,C,H,W), got shape {x.shape}")
    y = np.asarray(y)
    mask = np.asarray(mask, dtype=np.float32)
    if y.shape != (x.shape[0], *x.shape[2:]) or mask.shape != y.shape:
        raise ValueError(f"labels {y.shape} and mask {mask.shape} must be (N,H,W) for images {x.shape}")
    non_blocking = device.type == "cuda"
    return (
        torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=non_blocking),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)).to(device, non_blocking=non_blocking),
        torch.from_numpy(np.ascontiguousarray(mask)).to(device, non_blocking=non_blocking),
    )


def validation_matrix(
    model: SegmentationModel,
    validation: Sequence[Batch],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(confusion, intersection, total)`` of ``model`` over the trusted
    pixels of all batches: the (K, K) confusion matrix of the argmax (rows the
    target class) and, per class, the soft-Dice sums of the softmax
    probabilities. The network's train/eval mode is restored afterwards."""
    device = resolve_device(device)
    net = model.net
    was_training = net.training
    k = model.config.architecture.num_classes
    matrix = np.zeros((k, k), dtype=np.int64)
    inter = np.zeros(k)
    total = np.zeros(k)
    net.eval()
    try:
        with torch.inference_mode():
            for batch in validation:
                x, y, mask = _to_tensors(batch, device)
                with autocast(device, dtype):
                    logits = net(x)
                probs = torch.softmax(logits.float(), dim=1)
                one_hot = torch.nn.functional.one_hot(y, k).permute(0, 3, 1, 2).float()
                w = mask[:, None]
                inter += (probs * one_hot * w).sum(dim=(0, 2, 3)).double().cpu().numpy()
                total += ((probs + one_hot) * w).sum(dim=(0, 2, 3)).double().cpu().numpy()
                pred = logits.argmax(dim=1).cpu().numpy()
                matrix += confusion_matrix(pred, y.cpu().numpy(), k, mask.cpu().numpy())
    finally:
        net.train(was_training)
    return matrix, inter, total


def validation_scores(
    model: SegmentationModel,
    validation: Sequence[Batch],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """``(dice, soft_dice)`` of ``model`` over the trusted pixels of all batches.

    ``dice`` is :func:`validation_dice`. ``soft_dice`` is the Dice of the
    softmax probabilities, averaged over the foreground classes present in the
    targets (the background's when there is none): it rises while a model is
    still learning a structure it does not yet predict, so it breaks ties
    between weights whose hard Dice is the same (typically 0 early on).
    """
    matrix, inter, total = validation_matrix(model, validation, device, dtype)
    k = matrix.shape[0]
    if matrix.sum() == 0:
        return float("nan"), float("nan")
    present = matrix.sum(axis=1) > 0
    classes = [c for c in range(1, k) if present[c]] or [0]
    soft = float(np.mean([2 * inter[c] / max(total[c], 1e-9) for c in classes]))
    return score_from_confusion(matrix, fallback=True), soft


def validation_dice(
    model: SegmentationModel,
    validation: Sequence[Batch],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """Mean foreground Dice of ``model`` over the trusted pixels of all batches.

    One confusion matrix accumulates over the whole list, so small batches do
    not get a louder voice. A set with no foreground in either prediction or
    target scores the background Dice. NaN when no pixel is trusted. The
    network's train/eval mode is restored afterwards.
    """
    return validation_scores(model, validation, device, dtype)[0]


#: A relative soft-Dice gain smaller than this does not count as progress
#: while the hard Dice is unchanged.
SOFT_GAIN = 0.02
#: While validation Dice is still 0, a smoothed training loss this much below
#: its best (relative) counts as progress for the early stop.
LOSS_PROGRESS = 0.02


def _lr_factor(options: TrainOptions, step: int, elapsed: float, planned: int | None = None) -> float:
    """Multiplier of ``options.lr`` before ``step`` (0-based) at ``elapsed`` seconds.

    Warm-up and schedule count from ``options.start_step``: a resumed run
    (a new training stage) warms up again and anneals over its own steps.
    ``planned`` (a time budget turned into steps, see ``plan_after``) makes
    the schedule follow the steps only; until the plan is made, a run with
    ``plan_after`` stays at the peak rate, so the clock never moves it.
    """
    local = step - options.start_step
    if options.warmup_steps and local < options.warmup_steps:
        warm = 0.1 + 0.9 * local / options.warmup_steps
    else:
        warm = 1.0
    if options.schedule == "constant":
        return warm
    progress = 0.0
    if planned is not None:
        progress = local / max(planned - options.start_step, 1)
    else:
        if options.max_steps:
            progress = max(progress, local / max(options.max_steps - options.start_step, 1))
        if options.max_seconds and options.plan_after is None:
            progress = max(progress, elapsed / options.max_seconds)
    progress = min(1.0, progress)
    low = options.min_lr_ratio
    return warm * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))


def _snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class _TailAverage:
    """Running uniform average of a network's floating-point state (weights
    and float buffers) from a given step on; integer buffers are taken as they
    are at the end."""

    def __init__(self) -> None:
        self.count = 0
        self.state: dict[str, torch.Tensor] | None = None

    def add(self, net: torch.nn.Module) -> None:
        with torch.no_grad():
            current = net.state_dict()
            if self.state is None:
                self.state = {k: v.detach().float().clone() for k, v in current.items()}
            else:
                for key, value in current.items():
                    if value.is_floating_point():
                        self.state[key].add_(value.detach().float() - self.state[key], alpha=1.0 / (self.count + 1))
        self.count += 1

    def result(self, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The averaged state in the dtypes of ``net``'s (its integer buffers as they are now)."""
        assert self.state is not None
        return {k: (self.state[k].to(v.dtype) if v.is_floating_point() else v.detach().clone())
                for k, v in net.state_dict().items()}


def _make_scaler(device: torch.device, dtype: torch.dtype):
    if dtype != torch.float16:
        return None
    try:
        return torch.amp.GradScaler(device.type)
    except (RuntimeError, ValueError, AttributeError):  # pragma: no cover - old torch / backend
        return None


# -------------------------------------------------------------------- engine
def train_iter(
    model: SegmentationModel,
    sample_batch: SampleBatch,
    validation: Sequence[Batch] | None,
    options: TrainOptions | None = None,
    checkpoint: Callable[[SegmentationModel, TrainEvent], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train ``model`` in place, yielding a :class:`TrainEvent` after every step.

    See the module docstring for the contract of ``sample_batch``,
    ``validation`` and ``checkpoint``. ``stop``, when given, is asked before
    every step; once it returns True the run ends gracefully (validating the
    last weights) and still returns a :class:`TrainResult` with
    ``stop_reason="cancelled"``, unlike closing the generator.
    """
    options = options or TrainOptions()
    device = resolve_device(options.device)
    dtype = resolve_precision(options.precision, device)
    if dtype == torch.bfloat16 and device.type != "cpu" and options.precision == "auto":
        dtype = torch.float16
    scaler = _make_scaler(device, dtype)
    if dtype == torch.float16 and scaler is None and device.type != "cuda":
        dtype = torch.float32  # float16 without loss scaling underflows: stay safe
    notes: list[str] = []
    net = model.net.to(device)
    # channels-last training (faster convolutions on some CPUs) is off: with it,
    # tests/test_finetune_learning.py's CT round stopped learning (Dice 0.0 instead
    # of > 0.6) and the cause is not understood yet
    channels_last = False
    validation = list(validation) if validation else None
    rng = np.random.default_rng(options.seed)

    requires_grad = {name: p.requires_grad for name, p in net.named_parameters()}

    def set_train_mode() -> None:
        net.train()
        if options.freeze_encoder:
            net.freeze_encoder()
        if options.norm_eval:
            set_norm_eval(net)

    set_train_mode()
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    encoder = getattr(net, "encoder", None)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    groups = [
        {"params": [p for p in params if id(p) not in encoder_ids], "lr_scale": 1.0},
        {"params": [p for p in params if id(p) in encoder_ids], "lr_scale": options.encoder_lr_scale},
    ]
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=options.lr, weight_decay=options.weight_decay)
    class_weight = None if options.class_weight is None else torch.tensor(options.class_weight, device=device)

    start = _clock()
    history: list[TrainEvent] = []
    best_state = _snapshot(net)
    best_score = -math.inf  # higher is better: validation Dice, or minus the smoothed loss
    best_val: float | None = None
    best_step = options.start_step
    initial_val: float | None = None
    smooth_loss: float | None = None
    batch_size = options.batch_size
    step = options.start_step
    checks_without_gain = 0
    bad_steps = 0
    stop_reason = "cancelled"

    best_soft = -math.inf
    best_loss = math.inf
    planned: int | None = None  # the time budget as a step count, once measured
    # (local step, seconds, validation seconds) where the speed is measured from
    plan_mark: tuple[int, float, float] | None = None
    eval_seconds = 0.0  # spent in validation so far
    tail = _TailAverage() if options.average_tail is not None and options.keep == "last" else None
    eval_cost = 0.0  # seconds of the last validation check

    def time_limit() -> float | None:
        if options.max_seconds is None:
            return None
        return options.max_seconds * (options.plan_slack if planned is not None else 1.0)

    def make_plan() -> int:
        """The step count that fits the time budget: the steps so far plus
        what the rest of the budget holds at the speed of the steps since the
        mark (the end of the warm-up: first-step costs left out), rounded to
        the nearest multiple of ``plan_round``. Validation is counted apart, at
        the cost of the last check: the checks still to come (one every
        ``val_every`` steps, and one after the last) are taken off the budget
        first, whether or not any fell between the mark and now."""
        local, now = step - options.start_step, _clock() - start
        unit = options.plan_round or options.val_every
        mark_step, mark_time, mark_eval = plan_mark if plan_mark is not None else (0, 0.0, 0.0)
        per_step = max(now - mark_time - (eval_seconds - mark_eval), 0.0) / max(local - mark_step, 1)
        per_step += eval_cost / options.val_every
        fit = local + max(options.max_seconds - now - eval_cost, 0.0) / max(per_step, 1e-9)
        total = options.start_step + max(local, round(fit / unit) * unit)
        return total if options.max_steps is None else min(total, options.max_steps)


    def evaluate() -> tuple[float, float]:
        nonlocal eval_seconds, eval_cost
        began = _clock()
        scores = validation_scores(model, validation, device, dtype)
        set_train_mode()
        eval_cost = _clock() - began
        eval_seconds += eval_cost
        return scores

    def consider(score: float, at_step: int, soft: float = -math.inf) -> bool:
        """Keep the current weights if ``(score, soft)`` beats the best: a
        higher score, or the same score with a clearly higher soft score (so
        weights still learning a structure beat the first ones when the hard
        Dice is stuck, e.g. at 0); True if kept."""
        nonlocal best_score, best_state, best_step, best_soft
        if math.isnan(score):
            return False
        first = best_score == -math.inf
        better = first or score > best_score + options.min_delta
        tied = not first and abs(score - best_score) <= options.min_delta
        if not (better or (tied and soft > best_soft + max(SOFT_GAIN * abs(best_soft), 1e-12))):
            return False
        best_score = max(score, best_score) if tied else score
        best_soft = soft
        best_state = _snapshot(net)
        best_step = at_step
        return True

    def loss_still_falling() -> bool:
        """Whether the smoothed training loss reached a clearly new low."""
        nonlocal best_loss
        if smooth_loss is not None and best_loss == math.inf:
            best_loss = smooth_loss  # the first check sets the reference
            return False
        if smooth_loss is None or not smooth_loss < best_loss * (1 - LOSS_PROGRESS):
            return False
        best_loss = smooth_loss
        return True

    def call_checkpoint(event: TrainEvent) -> None:
        current = _snapshot(net)
        net.load_state_dict(best_state)
        net.eval()
        try:
            checkpoint(model, event)
        finally:
            net.load_state_dict(current)
            set_train_mode()

    try:
        if validation:
            initial_val, initial_soft = evaluate()
            if math.isnan(initial_val):
                # no trusted pixel to score: fall back to the training loss
                notes.append("the validation set has no trusted pixels; best weights chosen by training loss")
                log.warning(notes[-1])
                validation = None
                initial_val = None
            elif options.initial_is_candidate and consider(initial_val, step, initial_soft):
                best_val = initial_val
        while True:
            elapsed = _clock() - start
            if options.max_steps is not None and step >= options.max_steps:
                stop_reason = "steps"
                break
            if planned is not None and step >= planned:
                stop_reason = "time"
                break
            if options.max_seconds is not None and elapsed >= time_limit():
                stop_reason = "time"
                break
            if stop is not None and stop():
                stop_reason = "cancelled"
                if validation and history and history[-1].val_dice is None:
                    val, soft = evaluate()  # the last weights may be the best: give them a chance
                    if consider(val, step, soft):
                        best_val = val
                break
            lr = options.lr * _lr_factor(options, step, elapsed, planned)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            try:
                batch = sample_batch(rng, batch_size)
                x, y, mask = _to_tensors(batch, device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, dtype):
                    logits = net(x)
                loss = masked_ce_dice_loss(logits, y, mask, dice_weight=options.dice_weight,
                                           class_weight=class_weight)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    bad_steps += 1
                    if bad_steps >= MAX_BAD_STEPS:
                        raise FloatingPointError(
                            f"the loss was not finite for {bad_steps} steps in a row; "
                            "lower the learning rate or check the inputs"
                        )
                    log.warning("non-finite loss at step %d: step skipped", step + 1)
                    continue
                bad_steps = 0
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if options.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if options.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
                    optimizer.step()
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here
                if not is_out_of_memory(exc) or batch_size == 1:
                    raise
                optimizer.zero_grad(set_to_none=True)
                empty_cache(device)
                batch_size = max(1, batch_size // 2)
                notes.append(f"out of memory at step {step + 1}: batch size reduced to {batch_size}")
                log.warning(notes[-1])
                continue
            step += 1
            smooth_loss = loss_value if smooth_loss is None else 0.9 * smooth_loss + 0.1 * loss_value
            if tail is not None:
                total = options.max_steps if options.max_steps is not None else planned
                if total is not None and step - options.start_step > (1 - options.average_tail) * (total - options.start_step):
                    tail.add(net)
            if planned is None and options.plan_after is not None and options.max_seconds is not None:
                mark_at = options.warmup_steps
                if mark_at >= options.plan_after:
                    mark_at = options.plan_after // 2
                if plan_mark is None and step - options.start_step >= mark_at:
                    plan_mark = (step - options.start_step, _clock() - start, eval_seconds)
                if step - options.start_step >= options.plan_after:
                    planned = make_plan()

            val: float | None = None
            improved = False
            last = (
                (options.max_steps is not None and step >= options.max_steps)
                or (planned is not None and step >= planned)
                or (options.max_seconds is not None and _clock() - start >= time_limit())
            )
            if step % options.val_every == 0 or last:
                falling = loss_still_falling()
                if validation:
                    val, soft = evaluate()
                    improved = consider(val, step, soft)
                    if improved:
                        best_val = val
                    # a round whose validation Dice is still 0 is not stopped
                    # while it is visibly learning (the loss keeps falling)
                    progress = improved or (falling and not best_val)
                else:
                    # without validation, keep the weights with the lowest smoothed loss
                    improved = consider(-smooth_loss, step)
                    progress = improved
                checks_without_gain = 0 if progress else checks_without_gain + 1
            event = TrainEvent(
                step=step,
                max_steps=options.max_steps,
                elapsed=_clock() - start,
                loss=loss_value,
                lr=lr,
                val_dice=val,
                best_val_dice=best_val,
                improved=improved,
                max_seconds=options.max_seconds,
                batch_size=batch_size,
            )
            history.append(event)
            if checkpoint is not None and options.checkpoint_every and step % options.checkpoint_every == 0:
                call_checkpoint(event)
            yield event
            if options.patience is not None and checks_without_gain >= options.patience:
                stop_reason = "early-stop"
                break
        if options.keep == "last":
            # the schedule's end is the answer; its validation score is the one reported
            averaged = tail is not None and tail.count > 0
            if averaged:  # the average over the run's tail is the answer
                net.load_state_dict(tail.result(net))
            best_state, best_step = _snapshot(net), step
            if validation:
                last_val = history[-1].val_dice if history and history[-1].val_dice is not None else None
                if last_val is None or averaged:
                    last_val, _ = evaluate()
                best_val = None if math.isnan(last_val) else last_val
    finally:
        # normal end, gen.close() (GeneratorExit at the yield) or an error:
        # the model always leaves with the best weights (``keep="last"``: the
        # last ones, on a normal end), ready for inference
        net.load_state_dict(best_state)
        if channels_last:
            net.to(memory_format=torch.contiguous_format)
        for name, p in net.named_parameters():
            p.requires_grad_(requires_grad.get(name, True))
        net.eval()

    seconds = _clock() - start
    if checkpoint is not None and history:
        checkpoint(model, history[-1])
    return TrainResult(
        model=model,
        history=history,
        best_val_dice=best_val,
        steps=step - options.start_step,
        seconds=seconds,
        stop_reason=stop_reason,
        initial_val_dice=initial_val,
        best_step=best_step,
        precision=str(dtype).replace("torch.", ""),
        device=device.type,
        notes=notes,
        planned_steps=planned,
        averaged_steps=tail.count if tail is not None else 0,
    )


def run_training(
    model: SegmentationModel,
    sample_batch: SampleBatch,
    validation: Sequence[Batch] | None = None,
    options: TrainOptions | None = None,
    callback: Callable[[TrainEvent], object] | None = None,
    checkpoint: Callable[[SegmentationModel, TrainEvent], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Drive :func:`train_iter` to its end, passing every event to ``callback``.

    If ``callback`` returns ``False`` (exactly), training stops there as if
    cancelled; the model keeps the best weights and the result says
    ``cancelled``.
    """
    gen = train_iter(model, sample_batch, validation, options, checkpoint, stop)
    history: list[TrainEvent] = []
    start = time.perf_counter()
    while True:
        try:
            event = next(gen)
        except StopIteration as finished:
            return finished.value
        history.append(event)
        if callback is not None and callback(event) is False:
            gen.close()
            best = [e.best_val_dice for e in history if e.best_val_dice is not None]
            return TrainResult(
                model=model,
                history=history,
                best_val_dice=best[-1] if best else None,
                steps=event.step - (options.start_step if options else 0),
                seconds=time.perf_counter() - start,
                stop_reason="cancelled",
            )


def copy_model(model: SegmentationModel) -> SegmentationModel:
    """An independent copy (weights and config) of ``model``, on the CPU."""
    net = copy.deepcopy(model.net).to("cpu")
    return SegmentationModel(config=model.config, net=net, source=model.source)
