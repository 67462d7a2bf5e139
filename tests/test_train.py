"""The training engine: learns a toy task, validates, stops, cancels, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_unet.core.train import (
    TrainEvent,
    TrainOptions,
    copy_model,
    run_training,
    train_iter,
    validation_dice,
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The test machine's 2 cores are shared: one thread avoids OpenMP stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_scene(seed: int, size: int = 32):
    """Bright discs are class 1, a dark bar class 2, on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int64)
    for _ in range(2):
        cy, cx, r = rng.integers(6, size - 6), rng.integers(6, size - 6), rng.integers(3, 6)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    col = rng.integers(2, size - 4)
    labels[:, col : col + 2] = 2
    image = 0.5 + 0.05 * rng.standard_normal((size, size))
    image[labels == 1] += 0.4
    image[labels == 2] -= 0.4
    return image.astype(np.float32)[None], labels


def toy_sampler(rng: np.random.Generator, n: int):
    scenes = [toy_scene(int(s)) for s in rng.integers(0, 10_000, n)]
    x = np.stack([s[0] for s in scenes])
    y = np.stack([s[1] for s in scenes])
    return x, y, np.ones(y.shape, np.float32)


@pytest.fixture
def toy_validation():
    scenes = [toy_scene(100_000 + i) for i in range(4)]
    x = np.stack([s[0] for s in scenes])
    y = np.stack([s[1] for s in scenes])
    return [(x, y, np.ones(y.shape, np.float32))]


# float32: the toy figures must not depend on whether this CPU has native bfloat16
FAST = dict(batch_size=4, lr=1e-2, warmup_steps=2, device="cpu", val_every=10, precision="float32")


@pytest.fixture
def toy_model(tiny_config):
    """Two levels, 8 channels: learns the toy task in well under 100 steps."""
    from napari_unet.core.config import UNetConfig
    from napari_unet.core.weights import new_model

    arch = UNetConfig(in_channels=1, num_classes=3, depth=2, base_channels=8)
    return new_model(tiny_config.replace(architecture=arch), seed=0)


def test_training_raises_validation_dice(toy_model, toy_validation):
    tiny_model = toy_model
    before = validation_dice(tiny_model, toy_validation)
    result = run_training(tiny_model, toy_sampler, toy_validation, TrainOptions(max_steps=60, **FAST))
    after = validation_dice(tiny_model, toy_validation)
    assert result.stop_reason == "steps" and result.steps == 60
    assert result.initial_val_dice == pytest.approx(before)
    assert after == pytest.approx(result.best_val_dice)  # the model holds the best weights
    assert after > before + 0.3 and after > 0.8, (before, after)
    assert not tiny_model.net.training
    events = result.history
    assert [e.step for e in events] == list(range(1, 61))
    assert all(isinstance(e, TrainEvent) and math.isfinite(e.loss) for e in events)
    assert np.mean([e.loss for e in events[-10:]]) < np.mean([e.loss for e in events[:10]])
    assert [e.val_dice is not None for e in events].count(True) == 6


def test_cancel_keeps_best_weights(toy_model, toy_validation):
    tiny_model = toy_model
    gen = train_iter(tiny_model, toy_sampler, toy_validation, TrainOptions(max_steps=1000, **FAST))
    best = None
    for event in gen:
        if event.improved:
            best = {k: v.clone() for k, v in tiny_model.net.state_dict().items()}
        if event.step == 35:
            break
    current = tiny_model.net.state_dict()
    assert best is not None and not all(torch.equal(current[k], best[k]) for k in best)
    gen.close()  # what napari's thread_worker quit does
    for key, value in tiny_model.net.state_dict().items():
        assert torch.equal(value, best[key]), key
    assert validation_dice(tiny_model, toy_validation) == pytest.approx(event.best_val_dice)
    assert not tiny_model.net.training


def test_error_mid_run_restores_best_weights(tiny_model, toy_validation):
    initial = {k: v.clone() for k, v in tiny_model.net.state_dict().items()}
    calls = 0

    def failing_sampler(rng, n):
        nonlocal calls
        calls += 1
        if calls > 3:
            raise RuntimeError("disk vanished")
        return toy_sampler(rng, n)

    options = TrainOptions(max_steps=50, **{**FAST, "val_every": 100})
    with pytest.raises(RuntimeError, match="disk vanished"):
        run_training(tiny_model, failing_sampler, toy_validation, options)
    # no validation check after step 0 ran, so the initial weights were the best
    for key, value in tiny_model.net.state_dict().items():
        assert torch.equal(value, initial[key]), key


def test_time_budget_and_early_stop(tiny_model, toy_validation):
    result = run_training(tiny_model, toy_sampler, None, TrainOptions(max_steps=None, max_seconds=0.5, **FAST))
    assert result.stop_reason == "time" and result.steps >= 1
    assert result.seconds < 5.0  # one step may overrun the budget; a shared CPU is slow
    # a learning rate of zero never improves: patience ends the run
    # (norm_eval: batch-norm statistics would otherwise still move)
    options = TrainOptions(max_steps=500, patience=2, norm_eval=True, **{**FAST, "lr": 1e-12, "val_every": 2})
    result = run_training(copy_model(tiny_model), toy_sampler, toy_validation, options)
    assert result.stop_reason == "early-stop" and result.steps == 4


def test_freeze_encoder_norm_eval_and_checkpoint(tiny_model, tmp_path):
    from napari_unet.core.weights import load_model, save_model

    encoder_before = {k: v.clone() for k, v in tiny_model.net.encoder.state_dict().items()}
    saved: list[int] = []

    def checkpoint(model, event):
        assert not model.net.training
        save_model(model, tmp_path / "ckpt", overwrite=True)
        saved.append(event.step)

    options = TrainOptions(max_steps=6, freeze_encoder=True, norm_eval=True, checkpoint_every=3, **FAST)
    result = run_training(tiny_model, toy_sampler, None, options, checkpoint=checkpoint)
    assert saved == [3, 6, 6]
    for key, value in tiny_model.net.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key  # running stats included
    assert all(p.requires_grad for p in tiny_model.net.parameters())  # flags restored
    reloaded = load_model(tmp_path / "ckpt")
    for key, value in tiny_model.net.state_dict().items():
        assert torch.equal(value, reloaded.net.state_dict()[key])
    assert result.best_val_dice is None


def test_masked_pixels_do_not_train(tiny_model):
    """With every pixel untrusted, no weight moves (AdamW decay aside: set to 0)."""
    before = {k: v.clone() for k, v in tiny_model.net.state_dict().items()}

    def untrusted(rng, n):
        x, y, m = toy_sampler(rng, n)
        return x, y, np.zeros_like(m)

    options = TrainOptions(max_steps=3, norm_eval=True, **{**FAST, "val_every": 1}, weight_decay=0.0)
    run_training(tiny_model, untrusted, None, options)
    for key, value in tiny_model.net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_callback_false_cancels(tiny_model):
    result = run_training(
        tiny_model, toy_sampler, None, TrainOptions(max_steps=100, **FAST), callback=lambda e: e.step < 3
    )
    assert result.stop_reason == "cancelled" and result.steps == 3


def test_stop_callable_ends_gracefully_with_a_result(toy_model, toy_validation):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 12

    options = TrainOptions(max_steps=100, **FAST)
    result = run_training(toy_model, toy_sampler, toy_validation, options, stop=stop)
    assert result.stop_reason == "cancelled" and result.steps == 12
    # the last weights (step 12, between validations) were validated too
    assert validation_dice(toy_model, toy_validation) == pytest.approx(result.best_val_dice)


def test_untrusted_validation_falls_back_to_training_loss(tiny_model):
    x, y, m = toy_sampler(np.random.default_rng(0), 2)
    result = run_training(tiny_model, toy_sampler, [(x, y, np.zeros_like(m))], TrainOptions(max_steps=4, **FAST))
    assert result.initial_val_dice is None and result.best_val_dice is None and result.notes


def test_options_validation():
    with pytest.raises(ValueError, match="budget"):
        TrainOptions(max_steps=None, max_seconds=None)
    with pytest.raises(ValueError, match="schedule"):
        TrainOptions(schedule="linear")


def test_encoder_learning_rate_scale(toy_model):
    """Discriminative fine-tuning: with ``encoder_lr_scale`` the contracting
    path moves about that much less than the decoder (Adam steps scale with lr)."""

    def moved(scale: float) -> tuple[float, float]:
        model = copy_model(toy_model)
        before = {k: v.clone() for k, v in model.net.state_dict().items()}
        options = TrainOptions(max_steps=6, batch_size=2, lr=1e-3, warmup_steps=0, schedule="constant",
                               encoder_lr_scale=scale, grad_clip=None, weight_decay=0.0)
        run_training(model, toy_sampler, None, options)
        after = model.net.state_dict()

        def change(prefix: str) -> float:
            keys = [k for k in before if k.startswith(prefix) and k.endswith("weight") and before[k].ndim == 4]
            return float(np.mean([(after[k] - before[k]).abs().mean() for k in keys]))

        return change("encoder."), change("decoder.")

    full_enc, full_dec = moved(1.0)
    slow_enc, slow_dec = moved(0.05)
    assert slow_enc < 0.2 * full_enc
    assert slow_dec > 0.5 * full_dec
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        TrainOptions(max_steps=1, encoder_lr_scale=0.0)


def test_keep_last_returns_the_end_of_the_schedule_and_its_validation(tiny_model, toy_validation):
    from napari_unet.core.train import validation_dice

    options = TrainOptions(max_steps=12, keep="last", **{**FAST, "val_every": 4})
    events = []
    result = run_training(copy_model(tiny_model), toy_sampler, toy_validation, options, callback=events.append)
    assert result.best_step == 12 and result.steps == 12
    # the reported figure is the returned weights' own score, whatever the best check was
    assert result.best_val_dice == pytest.approx(validation_dice(result.model, toy_validation, "cpu"))
    assert result.best_val_dice == pytest.approx(events[-1].val_dice)
    with pytest.raises(ValueError, match="keep"):
        TrainOptions(max_steps=1, keep="median")


class JitteryClock:
    """A fake clock: every reading advances 10 ms plus a seeded random jitter,
    as a busy machine's steps vary in length."""

    def __init__(self, seed: int):
        self.now, self.rng = 0.0, np.random.default_rng(seed)

    def __call__(self) -> float:
        self.now += 0.01 + 0.002 * float(self.rng.random())
        return self.now


def test_a_planned_time_budget_trains_the_same_model_whatever_the_clock(tiny_model, monkeypatch):
    """``plan_after`` turns the time budget into a step count once; from then
    on the clock's jitter no longer changes the learning rate, so two runs
    that plan the same count return identical weights. Without the plan they
    differ (the schedule follows the clock)."""
    import napari_unet.core.train as train

    def options(plan_after):
        return TrainOptions(max_steps=None, max_seconds=1.0, plan_after=plan_after, keep="last",
                            **{**FAST, "val_every": 5})

    def run(plan_after, clock_seed):
        monkeypatch.setattr(train, "_clock", JitteryClock(clock_seed))
        events = []
        result = run_training(copy_model(tiny_model), toy_sampler, None, options(plan_after),
                              callback=events.append)
        return result, events

    (a, events), (b, _) = run(5, 1), run(5, 2)
    assert a.planned_steps == b.planned_steps and a.planned_steps % 5 == 0
    assert a.steps == a.planned_steps and a.stop_reason == "time"
    # after the plan the schedule is the step count's: the last step runs near the floor
    expected = FAST["lr"] * train._lr_factor(options(5), a.steps - 1, 0.0, a.steps)
    assert events[-1].lr == pytest.approx(expected)
    for key, value in a.model.net.state_dict().items():
        assert torch.equal(value, b.model.net.state_dict()[key]), key
    (c, _), (d, _) = run(None, 1), run(None, 2)
    assert c.planned_steps is None
    assert any(not torch.equal(v, d.model.net.state_dict()[k]) for k, v in c.model.net.state_dict().items()
               if v.is_floating_point())


def test_a_plan_never_outruns_a_slowing_machine(tiny_model, monkeypatch):
    """A plan made on fast first steps still ends at ``plan_slack`` x the budget."""
    import napari_unet.core.train as train

    class Slowing:
        def __init__(self):
            self.now, self.calls = 0.0, 0

        def __call__(self):
            self.calls += 1
            self.now += 0.01 if self.calls < 40 else 0.2
            return self.now

    monkeypatch.setattr(train, "_clock", Slowing())
    options = TrainOptions(max_steps=None, max_seconds=1.0, plan_after=5, **{**FAST, "val_every": 5})
    result = run_training(copy_model(tiny_model), toy_sampler, None, options)
    assert result.planned_steps is not None and result.steps < result.planned_steps
    assert result.stop_reason == "time" and result.seconds < 1.5 + 0.5


def test_plan_options_are_checked():
    with pytest.raises(ValueError, match="plan_after"):
        TrainOptions(max_steps=1, plan_after=0)
    with pytest.raises(ValueError, match="plan_slack"):
        TrainOptions(max_steps=1, plan_slack=0.5)


def test_a_plan_takes_the_validation_checks_still_to_come_off_the_budget(tiny_model, toy_validation, monkeypatch):
    """Steps cost 0.01 s and a validation check 0.2 s (a fake clock that moves
    only when work is done). No check falls between the warm-up and the plan,
    yet the plan must leave room for the checks every 10 steps and after the
    last: 23 steps fit 1 s (0.23 s of steps, four checks), not the 80 that
    the steps' speed alone would give."""
    import napari_unet.core.train as train

    class WorkClock:
        now = 0.0

        def __call__(self):
            return self.now

    clock = WorkClock()
    real_scores = train.validation_scores

    def slow_scores(*args, **kwargs):
        clock.now += 0.2
        return real_scores(*args, **kwargs)

    def sampler(rng, n):
        clock.now += 0.01
        return toy_sampler(rng, n)

    monkeypatch.setattr(train, "_clock", clock)
    monkeypatch.setattr(train, "validation_scores", slow_scores)
    options = TrainOptions(max_steps=None, max_seconds=1.0, plan_after=5, plan_round=1, keep="last",
                           **{**FAST, "val_every": 10})
    result = run_training(copy_model(tiny_model), sampler, toy_validation, options)
    assert result.planned_steps == 23 and result.steps == 23 and result.stop_reason == "time"
    assert result.seconds == pytest.approx(0.23 + 4 * 0.2)


def test_plan_round_is_checked():
    with pytest.raises(ValueError, match="plan_round"):
        TrainOptions(max_steps=1, plan_round=0)


def _states_after_each_step(model, options, validation):
    """(result, [state after step 1, 2, ...]) of one run of ``train_iter``."""
    states = []
    run = train_iter(model, toy_sampler, validation, options)
    try:
        while True:
            next(run)
            states.append({k: v.detach().clone() for k, v in model.net.state_dict().items()})
    except StopIteration as finished:
        return finished.value, states


def test_average_tail_returns_the_mean_of_the_last_steps_weights(tiny_model, toy_validation):
    from napari_unet.core.train import validation_dice

    options = TrainOptions(max_steps=8, keep="last", average_tail=0.5, **{**FAST, "val_every": 4})
    result, states = _states_after_each_step(copy_model(tiny_model), options, toy_validation)
    assert result.averaged_steps == 4  # steps 5..8 of 8
    returned = result.model.net.state_dict()
    moved = False
    for key, value in returned.items():
        if not value.is_floating_point():
            continue
        expected = torch.stack([s[key].float() for s in states[4:]]).mean(0)
        assert torch.allclose(value.float(), expected, atol=1e-6), key
        moved |= not torch.allclose(value, states[-1][key])
    assert moved, "the average equals the last weights: the run did not move"
    # the figure reported is the returned (averaged) weights' own score
    assert result.best_val_dice == pytest.approx(validation_dice(result.model, toy_validation, "cpu"))


def test_without_average_tail_the_last_weights_are_returned(tiny_model):
    options = TrainOptions(max_steps=6, keep="last", **FAST)
    result, states = _states_after_each_step(copy_model(tiny_model), options, None)
    assert result.averaged_steps == 0
    for key, value in result.model.net.state_dict().items():
        assert torch.equal(value, states[-1][key]), key


def test_average_tail_is_checked():
    with pytest.raises(ValueError, match="average_tail"):
        TrainOptions(max_steps=1, average_tail=0.0)
    with pytest.raises(ValueError, match="average_tail"):
        TrainOptions(max_steps=1, average_tail=1.5)
