"""Keeping the regions connected to the user's corrections (core/postprocess.py)."""

import numpy as np
import pytest

from napari_unet.core.postprocess import (
    describe,
    grow_candidates,
    keep_connected,
    seeds_from_corrections,
)


def _stack():
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:4, 5:9, 5:9] = 1  # the lesion, through three slices
    labels[5, 15:18, 15:18] = 1  # a false alarm on another slice
    labels[2, 15:17, 1:3] = 1  # a false alarm on a corrected slice's neighbour
    labels[0:6, 12, 0:20] = 2  # a second class, never corrected
    return labels


def test_regions_not_touching_a_trusted_pixel_of_their_class_are_removed():
    labels = _stack()
    truth = np.zeros_like(labels)
    truth[1, 5:9, 5:9] = 1
    mask = np.zeros(labels.shape, bool)
    mask[1] = True  # slice 1 corrected: the lesion there, nothing else
    seeds = seeds_from_corrections(truth, mask)
    assert set(seeds) == {0, 1}
    before = labels.copy()
    [removed] = keep_connected(labels, seeds)
    assert removed.class_id == 1 and removed.regions == 2 and removed.kept_regions == 1
    assert removed.voxels == 9 + 4
    assert (labels[1:4, 5:9, 5:9] == 1).all()  # the lesion stays on the slices nobody corrected
    assert (labels[5] == 1).sum() == 0 and (labels[2, 15:17, 1:3] == 0).all()
    assert (labels == 2).sum() == (before == 2).sum()  # an uncorrected class is left as predicted
    assert "left out 2 others" in describe([removed], {1: "tumor"})


def test_connectivity_runs_through_diagonal_neighbours_across_slices():
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[0, 2, 2] = labels[1, 3, 3] = labels[2, 4, 4] = 1  # a lesion that drifts in-plane
    seeds = {1: np.zeros(labels.shape, bool)}
    seeds[1][0, 2, 2] = True
    [removed] = keep_connected(labels, seeds)
    assert removed.regions == 0 and labels.sum() == 3


def _gapped(gap: int) -> tuple[np.ndarray, dict]:
    """The user's lesion on slice 1, found on slice 2, missed on ``gap`` slices, then found again."""
    labels = np.zeros((9, 12, 12), np.uint8)
    labels[2, 4:8, 4:8] = 1
    labels[3 + gap:, 5:9, 5:9] = 1  # goes on, shifted by a pixel
    labels[3 + gap, 0:2, 10:12] = 1  # a false alarm on the same slice, nowhere near
    truth = np.zeros_like(labels)
    truth[1, 4:8, 4:8] = 1
    mask = np.zeros(labels.shape, bool)
    mask[1] = True
    return labels, seeds_from_corrections(truth, mask)


def test_a_lesion_missed_on_one_slice_still_connects_but_not_across_two():
    labels, seeds = _gapped(1)
    [removed] = keep_connected(labels, seeds, bridge=1)
    assert (labels[4:, 5:9, 5:9] == 1).all() and labels[3].sum() == 0  # kept; the gap stays a gap
    assert labels[4, 0:2, 10:12].sum() == 0 and removed.regions == 1 and removed.kept_regions == 1  # one piece
    strict, seeds = _gapped(1)
    keep_connected(strict, seeds)
    assert strict[4:].sum() == 0  # strict 3D connectivity (the default): the continuation goes
    far, seeds = _gapped(2)
    keep_connected(far, seeds, bridge=1)
    assert far[5:].sum() == 0  # two missed slices: not the same piece


def test_the_bridge_never_crosses_a_slice_the_user_corrected():
    labels, seeds = _gapped(1)
    truth = np.zeros_like(labels)
    truth[1, 4:8, 4:8] = 1
    mask = np.zeros(labels.shape, bool)
    mask[[1, 3]] = True  # slice 3 corrected too: no lesion there
    keep_connected(labels, seeds_from_corrections(truth, mask), bridge=1)
    assert labels[4:].sum() == 0


def test_a_prediction_missing_every_seed_is_left_alone():
    labels = _stack()
    seeds = {1: np.zeros(labels.shape, bool)}
    seeds[1][0, 0, 0] = True  # the user's lesion is somewhere the model found nothing
    before = labels.copy()
    [removed] = keep_connected(labels, seeds)
    assert removed.regions == 0 and removed.kept_regions == 3
    np.testing.assert_array_equal(labels, before)
    assert not removed.connected
    assert describe([removed], {1: "tumor"}) == (
        "no predicted tumor region touches your corrections; left as predicted (3 regions)"
    )


def test_a_2d_image_and_no_seeds_change_nothing():
    image = np.zeros((10, 10), np.uint8)
    image[1, 1] = image[8, 8] = 1
    seeds = {1: np.ones_like(image, bool)}
    assert keep_connected(image, seeds) == [] and image.sum() == 2
    stack = _stack()
    assert keep_connected(stack, {}) == []


def test_seeds_must_match_the_labels():
    with pytest.raises(ValueError, match="differ"):
        seeds_from_corrections(np.zeros((2, 3, 3)), np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError, match="differ"):
        keep_connected(np.zeros((2, 3, 3), np.uint8), {1: np.zeros((2, 3, 4), bool)})


def test_a_lesion_found_only_next_to_the_corrected_slice_connects_through_the_users_labels():
    labels = _stack()
    labels[1] = 0  # on the corrected slice itself the network found nothing...
    truth = np.zeros_like(labels)
    truth[1, 5:9, 5:9] = 1  # ...but the user drew the lesion there
    mask = np.zeros(labels.shape, bool)
    mask[1] = True
    seeds = seeds_from_corrections(truth, mask)
    assert set(seeds) == {0, 1}  # 0: the pixels trusted as background
    [removed] = keep_connected(labels, seeds)
    # the lesion on slices 2-3 touches the user's on slice 1: kept; the two false alarms go
    assert (labels[2:4, 5:9, 5:9] == 1).all()
    assert removed.kept_regions == 1 and removed.regions == 2 and removed.voxels == 9 + 4


def test_predictions_on_trusted_pixels_neither_connect_nor_change():
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[1:3, 1:3, 1:3] = 1  # the user's lesion on slice 1, found again on slice 2
    labels[1, 3:8, 2] = 1  # a predicted bridge on slice 1, where the user said background
    labels[2, 7, 2] = 1  # a false alarm that reaches the lesion only through that bridge
    truth = np.zeros_like(labels)
    truth[1, 1:3, 1:3] = 1
    mask = np.zeros(labels.shape, bool)
    mask[1] = True
    [removed] = keep_connected(labels, seeds_from_corrections(truth, mask))
    assert labels[2, 7, 2] == 0 and removed.regions == 1 and removed.voxels == 1
    assert (labels[2, 1:3, 1:3] == 1).all() and removed.kept_regions == 1
    assert (labels[1, 3:8, 2] == 1).all()  # trusted pixels are the user's business: untouched


def test_corrections_with_only_background_give_no_seeds():
    stack = _stack()
    truth = np.zeros_like(stack)
    mask = np.zeros(stack.shape, bool)
    mask[0] = True  # a slice reviewed as all background: no lesion to connect to
    seeds = seeds_from_corrections(truth, mask)
    assert seeds == {}
    before = stack.copy()
    assert keep_connected(stack, seeds) == []
    np.testing.assert_array_equal(stack, before)


def _probabilities(labels: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """(3, ...) probabilities: argmax gives ``labels``; ``tumour`` overrides class 1 where > 0."""
    probs = np.zeros((3, *labels.shape), np.float32)
    for c in range(3):
        probs[c][labels == c] = 0.9
    probs[0][labels != 0] = 0.05
    probs[1] = np.where(tumour > 0, tumour, probs[1])
    probs[0] = np.where(tumour > 0, 1.0 - tumour, probs[0])
    return probs


def test_grow_candidates_are_background_pixels_with_enough_foreground_probability():
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[0, 0, 0] = 2
    tumour = np.zeros(labels.shape, np.float32)
    tumour[1, 1, 1] = 0.3  # an uncertain tumour pixel
    tumour[1, 2, 2] = 0.1  # too unlikely
    probs = _probabilities(labels, tumour)
    candidates = grow_candidates(probs, labels, 0.2)
    assert candidates.dtype == np.uint8 and candidates.shape == labels.shape
    assert candidates[1, 1, 1] == 1 and candidates[1, 2, 2] == 0
    assert candidates[0, 0, 0] == 0  # already a class: not a candidate
    assert candidates.sum() == 1


def test_candidates_connected_to_the_users_lesion_widen_it_and_nothing_else():
    labels = _stack()
    labels[3] = 0  # the network lost the lesion on slice 3...
    candidates = np.zeros_like(labels)
    candidates[3, 5:9, 5:9] = 1  # ...but still gives it a fair tumour probability there
    candidates[5, 0:3, 0:3] = 1  # an uncertain patch far from any lesion
    candidates[2, 5:9, 9] = 1  # a rim next to the lesion on slice 2
    truth = np.zeros_like(labels)
    truth[1, 5:9, 5:9] = 1
    mask = np.zeros(labels.shape, bool)
    mask[1] = True
    [removed] = keep_connected(labels, seeds_from_corrections(truth, mask), candidates)
    assert (labels[3, 5:9, 5:9] == 1).all() and (labels[2, 5:9, 9] == 1).all()
    assert (labels[5, 0:3, 0:3] == 0).all()  # not connected: never added
    assert removed.grown == 16 + 4 and removed.regions == 2 and removed.kept_regions == 1
    text = describe([removed], {1: "tumor"})
    assert "widened by 20 less certain voxels" in text and "left out 2 others" in text


def test_candidates_never_cross_a_pixel_the_user_trusted():
    labels = np.zeros((3, 10, 10), np.uint8)
    truth = np.zeros_like(labels)
    truth[1, 1:3, 1:3] = 1  # the user's lesion
    mask = np.zeros(labels.shape, bool)
    mask[1] = True  # slice 1 reviewed: everything else on it is background
    candidates = np.zeros_like(labels)
    candidates[1, 3:9, 1] = 1  # uncertain pixels the user erased on the reviewed slice
    candidates[2, 8, 1] = 1  # reachable only through them
    candidates[2, 1:3, 1:3] = 1  # the lesion's continuation on the next slice
    [removed] = keep_connected(labels, seeds_from_corrections(truth, mask), candidates)
    assert (labels[2, 1:3, 1:3] == 1).all() and labels[2, 8, 1] == 0
    assert (labels[1] == 0).all()  # trusted pixels unchanged
    assert removed.grown == 4 and removed.kept_regions == 1


def test_the_grow_threshold_decides_which_uncertain_pixels_join():
    from napari_unet.core.predict import PredictOptions

    with pytest.raises(ValueError, match="grow"):
        PredictOptions(grow=0.0)
    labels = _stack()
    tumour = np.zeros(labels.shape, np.float32)
    tumour[3, 9, 5:9] = 0.3  # the lesion's uncertain edge on an uncorrected slice
    probs = _probabilities(labels, tumour)
    truth = np.zeros_like(labels)
    truth[1, 5:9, 5:9] = 1
    mask = np.zeros(labels.shape, bool)
    mask[1] = True
    seeds = seeds_from_corrections(truth, mask)
    wide, narrow = labels.copy(), labels.copy()
    keep_connected(wide, seeds, grow_candidates(probs, labels, 0.25))
    keep_connected(narrow, seeds, grow_candidates(probs, labels, 0.35))
    assert (wide[3, 9, 5:9] == 1).all() and (narrow[3, 9, 5:9] == 0).all()


def test_predict_with_corrections_grows_only_below_its_threshold(ramp_network):
    from napari_unet.core.config import ModelConfig
    from napari_unet.core.predict import predict
    from napari_unet.core.weights import new_model

    model = new_model(ModelConfig(name="any"), seed=0)  # the ramp stands in for its network
    stack = np.full((3, 24, 24), 100, np.float32)
    stack[:, 4:11, 4:11] = 300  # a dim rim around the lesion: tumour probability about 0.2
    stack[:, 5:10, 5:10] = 1100
    truth = np.zeros(stack.shape, np.uint8)
    truth[1, 5:10, 5:10] = 1
    mask = truth != 0
    plain = predict(stack, model, device="cpu", corrections=(truth, mask), grow=0.5)
    wide = predict(stack, model, device="cpu", corrections=(truth, mask), grow=0.1)
    assert plain.removed[0].grown == 0 and (plain.labels == 1).sum() == 25 * 3
    assert wide.removed[0].grown == 24 * 3 and (wide.labels == 1).sum() == 49 * 3
    np.testing.assert_array_equal(wide.labels[mask], plain.labels[mask])  # trusted pixels unchanged


def test_predict_with_a_bridge_keeps_a_lesion_the_network_misses_on_one_slice(ramp_network):
    from napari_unet.core.config import ModelConfig
    from napari_unet.core.predict import PredictOptions, predict
    from napari_unet.core.weights import new_model

    model = new_model(ModelConfig(name="any"), seed=0)
    stack = np.full((5, 24, 24), 100, np.float32)
    stack[[0, 1, 3, 4], 5:10, 5:10] = 1100  # the lesion, invisible to the "network" on slice 2
    truth = np.zeros(stack.shape, np.uint8)
    truth[0, 5:10, 5:10] = 1
    mask = np.zeros(stack.shape, bool)
    mask[0] = True
    bridged = predict(stack, model, device="cpu", corrections=(truth, mask), grow=0.5, bridge=1)
    strict = predict(stack, model, device="cpu", corrections=(truth, mask), grow=0.5)
    assert (bridged.labels[3:] == 1).sum() == 2 * 25 and bridged.labels[2].sum() == 0
    assert (strict.labels[3:] == 1).sum() == 0 and strict.removed[0].voxels == 2 * 25
    with pytest.raises(ValueError, match="bridge"):
        PredictOptions(bridge=-1)
