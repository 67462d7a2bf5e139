"""Fine-tuning on trusted pixels: learns, leaves the input model alone, handles 2D/RGB/3D."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from napari_unet.core.finetune import (
    OTHERS_FIGURE,
    FinetuneOptions,
    ReplayBuffer,
    finetune,
    finetune_iter,
    prepare_corrections,
)
from napari_unet.core.metrics import mean_foreground_dice
from napari_unet.core.predict import predict
from napari_unet.core.versions import VALIDATION_FIGURE

FAST = FinetuneOptions(lr=1e-2, crop_size=32, batch_size=4, val_every=10, patience=None, warmup_steps=2,
                       extend_unlearned=0)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The test machine's 2 cores are shared: one thread avoids OpenMP stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def disc_scene(seed: int, shape=(64, 64)):
    """Bright discs (class 1) on a noisy background, raw uint16-like intensities."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint8)
    for _ in range(4):
        cy, cx, r = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8), rng.integers(4, 8)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    image = 1000 + 50 * rng.standard_normal(shape)
    image[labels == 1] += 600
    return image.astype(np.float32), labels


@pytest.fixture
def small_model(tiny_config):
    from napari_unet.core.config import UNetConfig
    from napari_unet.core.weights import new_model

    arch = UNetConfig(in_channels=1, num_classes=3, depth=2, base_channels=8)
    return new_model(tiny_config.replace(architecture=arch), seed=0)


def _dice(model, image, labels):
    return mean_foreground_dice(predict(image, model, device="cpu").labels, labels, 3)


def test_finetune_raises_dice_and_copies(small_model):
    image, labels = disc_scene(0)
    test_image, test_labels = disc_scene(1)
    before_state = {k: v.clone() for k, v in small_model.net.state_dict().items()}
    before = _dice(small_model, test_image, test_labels)
    events = []
    result = finetune(
        image, labels, None, small_model, steps=40, device="cpu", options=FAST, events=events.append, return_result=True
    )
    after = _dice(result.model, test_image, test_labels)
    assert after > before + 0.3 and after > 0.7, (before, after)
    assert len(events) == result.steps == 40
    # the input model is untouched
    for key, value in small_model.net.state_dict().items():
        assert torch.equal(value, before_state[key])
    assert result.model.net is not small_model.net
    prov = result.model.config.provenance
    assert prov["kind"] == "finetune" and prov["base_model"] == "tiny-test"
    assert prov["trusted_pixels"] == labels.size and prov["rounds"] == 1 and prov["steps"] == 40
    assert result.val_dice_before is not None and result.val_dice_after > result.val_dice_before
    assert prov["val_dice_after"] == pytest.approx(result.val_dice_after, abs=1e-4)
    assert result.trusted_pixels == labels.size and result.slices == 1


def test_untrusted_pixels_are_never_learned(small_model):
    """Labels outside the mask are garbage; the model must learn only the trusted part."""
    image, labels = disc_scene(2)
    mask = np.zeros(labels.shape, bool)
    mask[:, :40] = True
    garbage = labels.copy()
    garbage[:, 40:] = 2  # would teach "everything on the right is nerve"
    model = finetune(image, garbage, mask, small_model, steps=40, device="cpu", options=FAST)
    pred = predict(image, model, device="cpu").labels
    assert (pred[:, 44:] == 2).mean() < 0.05


def test_3d_stack_uses_corrected_slices_only(small_model):
    scenes = [disc_scene(10 + z) for z in range(5)]
    volume = np.stack([s[0] for s in scenes])
    labels = np.stack([s[1] for s in scenes])
    mask = np.zeros(labels.shape, np.uint8)
    mask[1] = 1  # a reviewed slice
    mask[3, 10:30, 10:30] = 1  # a brush correction
    corrections, trusted = prepare_corrections(volume, labels, mask, small_model, FAST, 0, 1)
    assert trusted == 64 * 64 + 400
    assert [c.key.split(":")[1] for c in corrections] == ["1", "3"]
    replay = ReplayBuffer()
    result = finetune(volume, labels, mask, small_model, steps=5, device="cpu", options=FAST, replay=replay, return_result=True)
    assert result.slices == 2 and len(replay) == 2 and replay.rounds == 1
    # a second round on another slice keeps the first round's corrections
    mask2 = np.zeros_like(mask)
    mask2[4] = 1
    result2 = finetune(volume, labels, mask2, result.model, steps=5, device="cpu", options=FAST, replay=replay, return_result=True)
    assert result2.slices == 1 and result2.replay_slices == 3 and replay.rounds == 2
    assert result2.model.config.provenance["rounds"] == 2
    # correcting the same slice again replaces it instead of duplicating it
    finetune(volume, labels, mask2, result2.model, steps=2, device="cpu", options=FAST, replay=replay)
    assert len(replay) == 3


def test_rgb_image(small_model):
    image, labels = disc_scene(3)
    rgb = np.stack([image, image * 0.5, image * 0.2], axis=-1)
    import napari_unet

    events = []
    result = napari_unet.finetune(
        rgb, labels, None, small_model, steps=3, device="cpu", events=events.append, options=FAST, return_result=True
    )
    assert result.steps == 3 and result.trusted_pixels == labels.size and len(events) == 3


def test_class_ids_outside_model(small_model):
    image, labels = disc_scene(4)
    labels = labels.astype(np.int64)
    labels[:8, :8] = 4
    with pytest.raises(ValueError, match="add_classes"):
        finetune(image, labels, None, small_model, steps=2, device="cpu", options=FAST)
    # untrusted out-of-range ids are fine
    mask = np.ones(labels.shape, bool)
    mask[:8, :8] = False
    finetune(image, labels, mask, small_model, steps=1, device="cpu", options=FAST)
    model = finetune(image, labels, None, small_model, steps=2, device="cpu", options=FAST, add_classes=True)
    assert model.config.architecture.num_classes == 5 and len(model.config.classes) == 5
    assert model.net.head.out_channels == 5
    assert small_model.net.head.out_channels == 3


def test_bad_inputs(small_model):
    image, labels = disc_scene(5)
    with pytest.raises(ValueError, match="no trusted pixels"):
        finetune(image, labels, np.zeros_like(labels), small_model, steps=1, device="cpu")
    with pytest.raises(ValueError, match="spatial shape"):
        finetune(image, labels[:-1], None, small_model, steps=1, device="cpu")
    with pytest.raises(ValueError, match="mask shape"):
        finetune(image, labels, np.ones((3, 3)), small_model, steps=1, device="cpu")


def test_cancel_mid_round_leaves_input_untouched(small_model):
    image, labels = disc_scene(6)
    before = {k: v.clone() for k, v in small_model.net.state_dict().items()}
    gen = finetune_iter(image, labels, None, small_model, steps=100, device="cpu", options=FAST)
    for event in gen:
        if event.step == 3:
            break
    gen.close()
    for key, value in small_model.net.state_dict().items():
        assert torch.equal(value, before[key])


def test_stop_returns_a_result(small_model):
    image, labels = disc_scene(8)
    steps = []
    result = finetune(
        image, labels, None, small_model, steps=100, device="cpu", options=FAST,
        events=lambda e: steps.append(e.step), stop=lambda: len(steps) >= 4, return_result=True,
    )
    assert result.stop_reason == "cancelled" and result.steps == 4
    assert result.model.config.provenance["stop_reason"] == "cancelled"


def test_small_correction_gets_blocked_validation(small_model):
    image, labels = disc_scene(7)
    mask = np.zeros(labels.shape, bool)
    mask[20:40, 5:60] = True
    (entry,), _ = prepare_corrections(image, labels, mask, small_model, FinetuneOptions(), 0, 1)
    assert entry.val_mask.any() and entry.train_mask.any()
    # validation pixels are never training pixels, nor next to them
    from scipy import ndimage

    near_val = ndimage.binary_dilation(entry.val_mask, iterations=1)
    assert not (near_val & (entry.train_mask > 0)).any()
    assert (entry.val_mask | (entry.train_mask > 0)).sum() <= mask.sum()


def test_validation_blocks_hold_every_foreground_class():
    """A thin vessel and a small lesion on a big reviewed slice: whatever the
    seed, the held-back blocks contain both classes (a background-only
    validation set would reward a model that predicts nothing), and the
    training pixels keep some of each class."""
    from napari_unet.core.finetune import _block_split

    labels = np.zeros((256, 256), np.int64)
    labels[100:103, 10:250] = 2  # a 3 px vessel across the slice
    labels[30:50, 180:200] = 1  # a lesion filling about two 16 px blocks
    trusted = np.ones(labels.shape, bool)
    for seed in range(20):
        train, val, blocks = _block_split(trusted, np.random.default_rng(seed), FinetuneOptions(), labels)
        assert blocks
        for cls in (1, 2):
            assert (val & (labels == cls)).any(), (seed, cls)
            assert ((train > 0) & (labels == cls)).any(), (seed, cls)
    # a class in a single block is never held back whole
    one_block = np.zeros_like(labels)
    one_block[5:8, 5:8] = 1
    for seed in range(10):
        train, val, _ = _block_split(trusted, np.random.default_rng(seed), FinetuneOptions(), one_block)
        assert ((train > 0) & (one_block == 1)).any() or not (val & (one_block == 1)).any()


def test_validation_never_takes_most_of_a_lesion_one_slice_shows():
    """A 47 px lesion on a 512 px slice (the real lung CT's one corrected slice):
    its held-back block and guard band used to leave 6 of its 1 751 pixels to
    train on; now at least half of it always stays for training."""
    from napari_unet.core.finetune import MIN_TRAIN_SHARE, _block_split

    yy, xx = np.mgrid[:512, :512]
    labels = (((yy - 300) ** 2 + (xx - 330) ** 2) < 23**2).astype(np.int64)
    trusted = np.ones(labels.shape, bool)
    lesion = int(labels.sum())
    for seed in range(10):
        train, val, blocks = _block_split(trusted, np.random.default_rng(seed), FinetuneOptions(), labels)
        assert blocks
        assert ((train > 0) & (labels == 1)).sum() >= MIN_TRAIN_SHARE * lesion, seed


def test_a_lesion_validation_cannot_judge_keeps_all_its_pixels_for_training(small_model):
    """A 161 px nodule on a 512 px CT slice (the real lung1 case): the split
    held back 5 of its pixels (too few for validation to judge it) and lost
    40 more to guard bands. Now either the held-back pixels hold enough of a
    class to judge it, or every trusted pixel of it trains."""
    from napari_unet.core.finetune import MIN_VAL_CLASS_PIXELS, _block_split

    yy, xx = np.mgrid[:512, :512]
    labels = (((yy - 260) ** 2 + (xx - 140) ** 2) < 7.2**2).astype(np.int64)
    image = (-800 + 30 * np.random.default_rng(1).standard_normal(labels.shape)).astype(np.float32)
    image[labels == 1] = 20
    lesion = labels == 1
    lost_by_the_raw_split = 0
    for seed in range(6):
        train, val, blocks = _block_split(np.ones(labels.shape, bool), np.random.default_rng(seed), FinetuneOptions(),
                                          labels)
        lost_by_the_raw_split += int(((train > 0) & lesion).sum()) < int(lesion.sum())
        (entry,), _ = prepare_corrections(image, labels, None, small_model, FinetuneOptions(), seed, 1)
        assert entry.val_blocks  # the slice still gets a validation split
        held, trained = int((entry.val_mask & lesion).sum()), int(((entry.train_mask > 0) & lesion).sum())
        assert held >= MIN_VAL_CLASS_PIXELS or (held == 0 and trained == int(lesion.sum())), (seed, held, trained)
        assert len(entry.class_coords[1]) == trained  # the sampler sees them
    assert lost_by_the_raw_split  # the per-slice split alone does lose some of the nodule


@pytest.mark.parametrize("lesion, expected", [(3, ("last", None)), (40, ("best", 8))])
def test_keep_auto_trusts_validation_only_when_it_holds_the_lesion(small_model, monkeypatch, lesion, expected):
    """A lesion too small to spare validation pixels: held-back blocks without it can
    only reward predicting none of it, so "auto" keeps the last weights and trains
    for the whole budget; a lesion the blocks hold keeps the best-validated ones."""
    import napari_unet.core.finetune as ft

    seen = {}

    def capture(model, sampler, validation, options, stop=None):
        seen.update(keep=options.keep, patience=options.patience, blind=ft.blind_classes(sampler.entries, validation or []))
        return (yield from real(model, sampler, validation, options, stop=stop))

    real = ft.train_iter
    monkeypatch.setattr(ft, "train_iter", capture)
    image = (1000 + 50 * np.random.default_rng(0).standard_normal((128, 128))).astype(np.float32)
    labels = np.zeros((128, 128), np.uint8)
    labels[60 : 60 + lesion, 60 : 60 + lesion] = 1
    image[labels == 1] += 600
    options = FinetuneOptions(**{**FAST.__dict__, "keep": "auto", "patience": 8, "val_block": 16})
    finetune(image, labels, None, small_model, max_seconds=1.0, device="cpu", options=options)
    assert (seen["keep"], seen["patience"]) == expected
    assert seen["blind"] == ([1] if expected[0] == "last" else [])


def test_keep_must_be_a_known_rule():
    with pytest.raises(ValueError, match="keep must be"):
        FinetuneOptions(keep="newest")


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), 1e6])
def test_foreground_weight_must_be_a_sane_positive_number(weight):
    with pytest.raises(ValueError, match="foreground_weight"):
        FinetuneOptions(foreground_weight=weight)


def test_foreground_weight_reaches_the_training_loss(small_model, monkeypatch):
    import napari_unet.core.finetune as ft

    seen = {}

    def capture(model, sampler, validation, options, stop=None):
        seen["class_weight"] = options.class_weight
        return (yield from real(model, sampler, validation, options, stop=stop))

    real = ft.train_iter
    monkeypatch.setattr(ft, "train_iter", capture)
    image = (1000 + 50 * np.random.default_rng(0).standard_normal((64, 64))).astype(np.float32)
    labels = np.zeros((64, 64), np.uint8)
    labels[20:30, 20:30] = 1
    options = FinetuneOptions(**{**FAST.__dict__, "foreground_weight": 4.0})
    finetune(image, labels, None, small_model, steps=2, device="cpu", options=options)
    classes = small_model.config.architecture.num_classes
    assert seen["class_weight"] == (1.0,) + (4.0,) * (classes - 1)


@pytest.mark.parametrize("lesion", [3, 40])
def test_a_round_says_when_its_validation_figure_cannot_see_the_lesion(small_model, lesion):
    image = (1000 + 50 * np.random.default_rng(0).standard_normal((128, 128))).astype(np.float32)
    labels = np.zeros((128, 128), np.uint8)
    labels[60 : 60 + lesion, 60 : 60 + lesion] = 1
    image[labels == 1] += 600
    options = FinetuneOptions(**{**FAST.__dict__, "val_block": 16})
    result = finetune(image, labels, None, small_model, max_seconds=1.0, device="cpu", options=options,
                      return_result=True)
    name = small_model.config.classes[1].name
    if lesion == 3:
        assert result.blind_classes == [1]
        assert f"hold almost no {name}" in result.validation_caveat()
        # the gate then compares the lesion's fit on the slices the round learned from
        assert 0.0 <= result.fit_before <= 1.0 and 0.0 <= result.fit_after <= 1.0
        assert f"on the slices it learned from, {name} Dice" in result.validation_caveat()
        assert result.gate_scores() == (result.fit_after, result.fit_before, f"{name} Dice on the slices it learned from")
        assert result.model.config.provenance["fit_dice_after"] == round(result.fit_after, 4)
    else:
        assert result.blind_classes == [] and result.validation_caveat() == ""
        assert result.fit_before is None and result.gate_scores()[2] == VALIDATION_FIGURE


def bright_square(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy 128-px slice in CT-like units with a bright square lesion (class 1) over ``lo:hi``."""
    image = (1000 + 50 * np.random.default_rng(0).standard_normal((128, 128))).astype(np.float32)
    labels = np.zeros((128, 128), np.uint8)
    labels[lo:hi, lo:hi] = 1
    image[labels == 1] += 600
    return image, labels


@pytest.mark.parametrize("stuck", [True, False])
def test_a_validation_figure_near_zero_comes_with_the_fit_on_the_corrected_slices(small_model, monkeypatch, stuck):
    """A lesion the held-back pixels do hold, and a validation Dice after the
    round below STUCK_VALIDATION (forced here): the round also measures the
    lesion's fit on the slices it learned from and says both; above it, not."""
    import napari_unet.core.finetune as ft

    monkeypatch.setattr(ft, "STUCK_VALIDATION", 1.01 if stuck else -1.0)
    image, labels = bright_square(40, 90)
    options = FinetuneOptions(**{**FAST.__dict__, "val_block": 16})
    result = finetune(image, labels, None, small_model, steps=3, device="cpu", options=options, return_result=True)
    name = small_model.config.classes[1].name
    assert result.blind_classes == [] and result.val_dice_after is not None
    if stuck:
        assert result.stuck_classes == [1]
        assert 0.0 <= result.fit_before <= 1.0 and 0.0 <= result.fit_after <= 1.0
        caveat = result.validation_caveat()
        assert caveat.startswith(" (the round missed the held-back pixels;") and f"{name} Dice" in caveat
        assert result.model.config.provenance["fit_dice_after"] == round(result.fit_after, 4)
        # the gate still compares the validation figure: the fit is only reported
        assert result.gate_scores()[2] == VALIDATION_FIGURE
    else:
        assert result.stuck_classes == [] and result.fit_before is None and result.validation_caveat() == ""


def test_a_round_without_held_back_pixels_is_judged_by_its_fit(small_model):
    """val_fraction=0 trains on every trusted pixel: no validation figure, so the
    gate compares each class's fit on the corrected slices, and says why."""
    image, labels = bright_square(50, 80)
    options = FinetuneOptions(**{**FAST.__dict__, "val_fraction": 0.0})
    result = finetune(image, labels, None, small_model, steps=3, device="cpu", options=options, return_result=True)
    name = small_model.config.classes[1].name
    assert result.validation_pixels == 0 and result.val_dice_after is None
    assert result.blind_classes == [1]
    assert 0.0 <= result.fit_before <= 1.0 and 0.0 <= result.fit_after <= 1.0
    assert result.gate_scores() == (result.fit_after, result.fit_before, f"{name} Dice on the slices it learned from")
    caveat = result.validation_caveat()
    assert caveat.startswith(" (no pixel was held back") and f"{name} Dice" in caveat


def test_with_blind_validation_a_round_that_forgets_the_lesion_counts_as_a_regression(small_model):
    from dataclasses import replace

    image = (1000 + 50 * np.random.default_rng(0).standard_normal((128, 128))).astype(np.float32)
    labels = np.zeros((128, 128), np.uint8)
    labels[60:63, 60:63] = 1
    result = finetune(image, labels, None, small_model, steps=2, device="cpu",
                      options=FinetuneOptions(**{**FAST.__dict__, "val_block": 16}), return_result=True)
    assert result.blind_classes == [1]
    forgot = replace(result, val_dice_before=0.0, val_dice_after=0.0, fit_before=0.8, fit_after=0.2)
    assert forgot.regressed  # blind 0 -> 0 validation figures alone would promote it
    learned = replace(forgot, fit_after=0.9)
    assert not learned.regressed
    assert learned.gate_scores()[2].endswith("Dice on the slices it learned from")
    # one false lesion pixel in held-back blocks without lesion takes the blind
    # validation figure from 1 (nothing marked, nothing predicted) to 0: not a
    # regression by itself (the fit counts such pixels in proportion)
    assert not replace(learned, val_dice_before=1.0, val_dice_after=0.0).regressed
    # a fall of the other classes' validation Dice still counts
    worse_elsewhere = replace(learned, val_other_before=0.7, val_other_after=0.4)
    assert worse_elsewhere.regressed and worse_elsewhere.gate_scores() == (0.4, 0.7, OTHERS_FIGURE)
    assert not replace(learned, val_other_before=0.7, val_other_after=0.75).regressed
    # the round itself measured the other classes (only what the tiny model calls nerve there)
    for figure in (result.val_other_before, result.val_other_after):
        assert figure is None or 0.0 <= figure <= 1.0
    assert result.model.config.provenance["val_other_dice_after"] == (
        None if result.val_other_after is None else round(result.val_other_after, 4))


def test_a_round_that_forgot_the_lesion_says_so_with_the_figure_it_used(small_model, monkeypatch):
    import napari_unet.core.finetune as ft

    fits = iter([0.8, 0.2])  # the base, then the new model
    monkeypatch.setattr(ft, "corrections_fit", lambda net, entries, classes: next(fits))
    image = (1000 + 50 * np.random.default_rng(0).standard_normal((128, 128))).astype(np.float32)
    labels = np.zeros((128, 128), np.uint8)
    labels[60:63, 60:63] = 1
    result = finetune(image, labels, None, small_model, steps=2, device="cpu",
                      options=FinetuneOptions(**{**FAST.__dict__, "val_block": 16}), return_result=True)
    name = small_model.config.classes[1].name
    assert result.regressed and result.model.config.provenance["regressed"] is True
    assert any(f"({name} Dice on the slices it learned from: 0.800 -> 0.200)" in n for n in result.notes)


class _Oracle(torch.nn.Module):
    """A 'network' that predicts a fixed label map (padded inputs allowed)."""

    def __init__(self, labels: np.ndarray, classes: int = 3) -> None:
        super().__init__()
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classes = classes
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        h, w = self.labels.shape
        out = torch.full((x.shape[0], self.classes, *x.shape[-2:]), -5.0)
        out[:, :, :h, :w] = 5.0 * torch.nn.functional.one_hot(self.labels, self.classes).permute(2, 0, 1) - 5.0
        return out


def test_corrections_fit_scores_every_trusted_pixel():
    from napari_unet.core.finetune import Correction, corrections_fit

    labels = np.zeros((32, 32), np.int64)
    labels[8:16, 8:16] = 1
    train = np.ones((32, 32), np.float32)
    train[:, 16:] = 0  # held back (no lesion there): what is called lesion there is a false alarm
    entry = Correction("a", np.zeros((1, 32, 32), np.float32), labels, train, train == 0, [], 1)
    assert corrections_fit(_Oracle(labels), [entry], [1]) == pytest.approx(1.0)
    assert corrections_fit(_Oracle(np.zeros_like(labels)), [entry], [1]) == 0.0
    elsewhere = labels.copy()
    elsewhere[:, 20:] = 1  # false lesion on held-back pixels only: counted in proportion
    assert corrections_fit(_Oracle(elsewhere), [entry], [1]) == pytest.approx(2 * 64 / (64 + 64 + 32 * 12))
    speck = labels.copy()
    speck[30, 30] = 1  # one false pixel there barely moves it (a blind validation Dice goes 1 -> 0)
    assert corrections_fit(_Oracle(speck), [entry], [1]) == pytest.approx(128 / 129)
    untrusted = Correction("b", entry.plane, labels, train, np.zeros_like(train, bool), [], 1)
    assert corrections_fit(_Oracle(elsewhere), [untrusted], [1]) == pytest.approx(1.0)  # not trusted: not scored
    half = np.zeros_like(labels)
    half[8:16, 8:12] = 1  # half the lesion: Dice 2*32/(32+64)
    assert corrections_fit(_Oracle(half), [entry], [1]) == pytest.approx(2 / 3)
    assert corrections_fit(_Oracle(np.zeros_like(labels)), [entry], [2]) is None  # nobody marks or predicts it


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_the_schedule_option_reaches_the_training_loop(small_model, schedule):
    from napari_unet.core.finetune import finetune_iter

    image = (1000 + 50 * np.random.default_rng(0).standard_normal((64, 64))).astype(np.float32)
    labels = np.zeros((64, 64), np.uint8)
    labels[20:40, 20:40] = 1
    image[labels == 1] += 600
    options = FinetuneOptions(**{**FAST.__dict__, "schedule": schedule, "val_fraction": 0.0})
    iterator = finetune_iter(image, labels, None, small_model, steps=12, device="cpu", options=options)
    rates = []
    with contextlib.suppress(StopIteration):
        while True:
            rates.append(next(iterator).lr)
    after_warmup = rates[FAST.warmup_steps :]
    assert len(rates) == 12
    if schedule == "constant":
        assert after_warmup == pytest.approx([FAST.lr] * len(after_warmup))
    else:
        assert after_warmup[-1] < 0.5 * after_warmup[0]


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule must be"):
        FinetuneOptions(schedule="step")


@pytest.mark.parametrize("widen_to, expected", [(16, 16), (None, 8), (4, 8)])
def test_a_round_widens_a_narrow_model_and_still_learns(small_model, widen_to, expected):
    """The round trains a widened copy (``widen_to``; never narrower than the model)."""
    image, labels = disc_scene(0)
    options = FinetuneOptions(**{**FAST.__dict__, "widen_to": widen_to})
    before = _dice(small_model, image, labels)
    tuned = finetune(image, labels, None, small_model, steps=40, device="cpu", options=options)
    assert small_model.config.architecture.base_channels == 8  # the input model is left alone
    assert tuned.config.architecture.base_channels == expected
    assert _dice(tuned, image, labels) > before + 0.1


def test_auto_width_follows_the_round_precision():
    from napari_unet.core.finetune import AUTO_WIDTH, _round_width

    cpu = torch.device("cpu")
    assert _round_width(FinetuneOptions(precision="bfloat16"), cpu) == AUTO_WIDTH
    assert _round_width(FinetuneOptions(precision="float32"), cpu) is None
    assert _round_width(FinetuneOptions(precision="float32", widen_to=24), cpu) == 24
    assert _round_width(FinetuneOptions(precision="bfloat16", widen_to=None), cpu) is None
    for bad in (0, 1000, "wide", True):
        with pytest.raises(ValueError, match="widen_to"):
            FinetuneOptions(widen_to=bad)


def test_round_predicts_only_around_a_partial_correction(monkeypatch):
    """A small patch corrected on a large plane is predicted as a crop with
    context (the whole plane cost most of a widened round's budget); a whole
    corrected slice is still predicted whole."""
    from napari_unet.core import finetune as ft

    shapes = []
    real = ft._predict_plane

    def spy(net, plane, device):
        shapes.append(plane.shape[1:])
        return real(net, plane, device)

    monkeypatch.setattr(ft, "_predict_plane", spy)
    net = torch.nn.Conv2d(1, 3, 1)
    net.eval()
    plane = np.random.default_rng(0).normal(size=(1, 400, 300)).astype(np.float32)
    where = np.zeros((400, 300), bool)
    where[100:120, 200:230] = True
    pred = ft._predict_around(net, plane, where, "cpu", margin=16)
    assert shapes[-1] == (20 + 32, 30 + 32)
    assert (pred[where] >= 0).all() and (pred[:50] == -1).all()
    full = real(net, plane, "cpu")
    assert (pred[where] == full[where]).all()  # a 1x1 net: context does not matter
    pred_all = ft._predict_around(net, plane, np.ones((400, 300), bool), "cpu")
    assert shapes[-1] == (400, 300) and (pred_all == full).all()
    assert (ft._predict_around(net, plane, np.zeros((400, 300), bool), "cpu") == -1).all()


def test_reset_head_starts_the_round_from_a_fresh_head_and_keeps_the_rest(small_model, monkeypatch):
    import napari_unet.core.finetune as ft

    seen = {}

    def capture(model, sampler, validation, options, stop=None):
        seen["state"] = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
        return (yield from real(model, sampler, validation, options, stop=stop))

    real = ft.train_iter
    monkeypatch.setattr(ft, "train_iter", capture)
    before = {k: v.detach().clone() for k, v in small_model.net.state_dict().items()}
    image = (1000 + 50 * np.random.default_rng(0).standard_normal((64, 64))).astype(np.float32)
    labels = np.zeros((64, 64), np.uint8)
    labels[20:30, 20:30] = 1
    options = FinetuneOptions(**{**FAST.__dict__, "reset_head": True, "widen_to": None, "instance_norm": False})
    finetune(image, labels, None, small_model, steps=1, device="cpu", options=options)
    start = seen["state"]
    assert not torch.equal(start["head.weight"], before["head.weight"])
    assert torch.count_nonzero(start["head.bias"]) == 0
    assert all(torch.equal(start[k], v) for k, v in before.items() if not k.startswith("head."))
    # the model the round started from is left as it was
    assert all(torch.equal(small_model.net.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("keep, patience, checked", [
    ("last", None, [5, 10, 12]),  # validation only reports: every report_every steps and after the last
    ("best", 50, [2, 4, 6, 8, 10, 12]),  # it chooses the weights: every val_every steps
])
def test_a_round_validates_as_often_as_its_choice_needs(small_model, keep, patience, checked):
    image, labels = disc_scene(0)
    options = FinetuneOptions(**{**FAST.__dict__, "val_every": 2, "report_every": 5, "keep": keep,
                                 "patience": patience})
    result = finetune(image, labels, None, small_model, max_seconds=600, device="cpu", options=options,
                      return_result=True, steps=12)
    assert [e.step for e in result.history if e.val_dice is not None] == checked
    assert result.val_dice_after is not None


def test_report_every_is_checked():
    with pytest.raises(ValueError, match="report_every"):
        FinetuneOptions(report_every=0)


@pytest.mark.parametrize("shape, crop, batch", [((300, 300), 256, 2), ((208, 90), 208, 3), ((64, 48), 64, 4)])
def test_a_round_trains_on_crops_as_large_as_the_slice_up_to_256_px(small_model, monkeypatch, shape, crop, batch):
    """A round trains an instance-norm network, which normalises by what it sees:
    crops far smaller than the slice ``predict`` runs at once taught a lung CT
    round a tumour it then missed on the whole slice (P 0.8 in the crop, 0.01
    on the slice). So crops cover the slice, up to 256 px, two per step; a
    smaller slice gets more crops (as many pixels), at most four."""
    import napari_unet.core.finetune as ft

    seen = []
    real = ft.train_iter

    def spy(model, sample_batch, *args, **kwargs):
        def recording(rng, n):
            drawn = sample_batch(rng, n)
            seen.append(drawn[0].shape)
            return drawn

        return real(model, recording, *args, **kwargs)

    monkeypatch.setattr(ft, "train_iter", spy)
    image, labels = disc_scene(0, shape)
    result = finetune(image, labels, None, small_model, steps=2, device="cpu", return_result=True,
                      options=FinetuneOptions(widen_to=None))
    assert len(seen) == 2 and all(s[0] == batch and s[2:] == (crop, crop) for s in seen)
    assert result.model.config.provenance["crop"] == crop
    assert result.model.config.provenance["batch"] == batch


def test_dice_without_counts_the_blind_classes_as_background():
    from napari_unet.core.metrics import dice_without

    # rows: target background / tumour / nerve; columns: predicted
    matrix = np.array([[90, 5, 0], [0, 0, 0], [0, 0, 10]])  # 5 false tumour px, nerve all right
    assert dice_without(matrix, [1]) == pytest.approx(1.0)  # nerve only
    assert dice_without(np.array([[90, 5, 0], [0, 0, 0], [2, 0, 8]]), [1]) == pytest.approx(16 / 18)
    assert dice_without(np.array([[95, 5], [0, 0]]), [1]) is None  # nothing else to judge



def test_a_lesion_alone_keeps_its_blind_split():
    """When only the lesion was marked, giving its few held-back pixels back
    would leave no validation at all: the split stays (the version gate then
    judges the fit on the corrected slices)."""
    from napari_unet.core.finetune import _train_on_what_validation_cannot_judge

    labels = np.zeros((32, 32), np.int64)
    labels[8:20, 8:20] = 1
    train = (labels == 1).astype(np.float32)
    val = np.zeros((32, 32), bool)
    train[8:10, 8:12], val[8:10, 8:12] = 0, True  # 8 lesion pixels held back
    alone = [("a", None, labels, train.copy(), val.copy(), [(8, 8, 4)])]
    _train_on_what_validation_cannot_judge(alone)
    np.testing.assert_array_equal(alone[0][4], val)
    with_background = labels.copy()
    val_bg = val.copy()
    val_bg[24:28, 24:28] = True  # background held back too: the lesion goes back to training
    split = [("a", None, with_background, train.copy(), val_bg.copy(), [(8, 8, 4), (24, 24, 4)])]
    _train_on_what_validation_cannot_judge(split)
    assert not (split[0][4] & (labels == 1)).any() and split[0][4][24:28, 24:28].all()
    assert (split[0][3][labels == 1] == 1).all()


def _lesion_scene():
    image = (1000 + 50 * np.random.default_rng(0).standard_normal((64, 64))).astype(np.float32)
    labels = np.zeros((64, 64), np.uint8)
    labels[20:34, 20:34] = 1
    image[labels == 1] += 600
    return image, labels


def _round(small_model, monkeypatch, found, dice=0.1, **kwargs):
    """A time-budgeted round whose marked classes' recall on the corrected
    slices is ``found`` in turn (the first after the budget), their Dice there
    always ``dice``; returns (result, events, asked)."""
    import napari_unet.core.finetune as ft

    sequence = iter(found)
    asked = []

    def fake_scores(net, entries, classes):
        asked.append(list(classes))
        return {c: dice for c in classes}, {c: next(sequence) for c in classes}

    monkeypatch.setattr(ft, "class_scores", fake_scores)
    image, labels = _lesion_scene()
    options = FinetuneOptions(**{**FAST.__dict__, "extend_unlearned": 2, "plan_after": 3, "warmup_steps": 1})
    events = []
    generator = finetune_iter(image, labels, None, small_model, device="cpu", options=options, **kwargs)
    try:
        while True:
            events.append(next(generator))
    except StopIteration as finished:
        return finished.value, events, asked


def test_a_round_that_has_not_learned_the_lesion_trains_on_and_says_why(small_model, monkeypatch):
    result, events, asked = _round(small_model, monkeypatch, [0.1, 0.3, 0.7], max_seconds=0.5)
    budget = [e for e in events if not e.stage]
    more = [e for e in events if e.stage]
    name = small_model.config.classes[1].name
    assert asked[0] == [1]  # the class the corrections mark
    assert len(budget) >= 1 and len(more) == 2 * len(budget)  # two extensions of the budget's steps
    assert [e.step for e in events] == list(range(1, len(events) + 1))  # steps go on counting
    assert all(b.elapsed <= a.elapsed for b, a in zip(events, events[1:]))
    assert more[0].stage.startswith(f"{name} not learned yet (found 10% of it") and "1 of 2" in more[0].stage
    assert "2 of 2" in more[-1].stage and "(found 30% of it" in more[-1].stage
    assert result.steps == len(events) and result.model.config.provenance["steps"] == len(events)
    assert result.extra_steps == len(more) and result.model.config.provenance["extra_steps"] == len(more)
    assert any("trained" in note and "more steps" in note for note in result.notes)


def test_extending_stops_once_learned_or_without_progress(small_model, monkeypatch):
    # found 80 % of the lesion: learned, however low its Dice (a model that calls
    # too much around it; training on made lung1's round timid on the next slices)
    learned, events, _ = _round(small_model, monkeypatch, [0.8], dice=0.3, max_seconds=0.5)
    assert not any(e.stage for e in events) and not any("more steps" in n for n in learned.notes)
    stuck, events, _ = _round(small_model, monkeypatch, [0.2, 0.2], max_seconds=0.5)
    assert len([e for e in events if e.stage]) == len([e for e in events if not e.stage])  # one extension, then no gain


def test_an_explicit_step_count_is_never_extended(small_model, monkeypatch):
    result, events, asked = _round(small_model, monkeypatch, [0.0, 0.0, 0.0], steps=4)
    assert result.steps == 4 and len(events) == 4 and not any(e.stage for e in events)
    assert not asked


def test_extend_options_are_checked():
    with pytest.raises(ValueError, match="extend_unlearned"):
        FinetuneOptions(extend_unlearned=-1)
    with pytest.raises(ValueError, match="learned_fit"):
        FinetuneOptions(learned_fit=1.5)


def test_class_scores_count_a_liberal_prediction_as_found_but_a_poor_fit(monkeypatch):
    """Recall decides whether a round has learned a lesion (0.9.11): a model that
    calls all of it and as much again around it has found it (recall 1), though
    its Dice there is only 0.4."""
    import napari_unet.core.finetune as ft

    labels = np.zeros((32, 32), np.int64)
    labels[8:12, 8:12] = 1  # 16 marked pixels
    called = np.zeros((32, 32), np.int64)
    called[6:14, 6:14] = 1  # 64 called, the 16 among them
    entry = ft.Correction(key="a:0", plane=np.zeros((1, 32, 32), np.float32), labels=labels,
                          train_mask=np.ones((32, 32), np.float32), val_mask=np.zeros((32, 32), bool),
                          val_blocks=[], round=1)
    monkeypatch.setattr(ft, "_predict_around", lambda net, plane, where, device: called)
    fits, found = ft.class_scores(torch.nn.Conv2d(1, 2, 1), [entry], [1, 2])
    assert fits[1] == pytest.approx(2 * 16 / (64 + 16)) and found[1] == 1.0
    assert fits[2] is None and found[2] is None  # nothing marked or called as class 2
    assert ft.class_fits(torch.nn.Conv2d(1, 2, 1), [entry], [1]) == {1: pytest.approx(0.4)}
