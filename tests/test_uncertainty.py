"""Uncertainty: the entropy map, the per-slice ranking, and the CLI's uncertainty file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.predict import predict
from napari_unet.core.uncertainty import normalized_entropy, review_order, slice_scores


@pytest.fixture(scope="module")
def bundled():
    """A trained model (a random one is unsure everywhere, which ranks nothing)."""
    from napari_unet.core.weights import load_model

    return load_model(None, device="cpu")


def test_entropy_is_zero_for_one_hot_and_one_for_uniform():
    one_hot = np.zeros((3, 4, 5), np.float32)
    one_hot[1] = 1.0
    assert np.all(normalized_entropy(one_hot) == 0.0)
    uniform = np.full((3, 4, 5), 1 / 3, np.float32)
    np.testing.assert_allclose(normalized_entropy(uniform), 1.0, atol=1e-6)
    mixed = np.stack([np.full((2, 2), 0.8), np.full((2, 2), 0.1), np.full((2, 2), 0.1)]).astype(np.float32)
    value = normalized_entropy(mixed)
    assert np.all((value > 0.0) & (value < 1.0))
    # any other distribution is less uncertain than the uniform one
    rng = np.random.default_rng(0)
    random = rng.dirichlet(np.ones(3), size=(6, 7)).transpose(2, 0, 1).astype(np.float32)
    assert normalized_entropy(random).max() < 1.0


def test_slice_score_weights_doubt_by_foreground():
    from napari_unet.core.uncertainty import slice_score

    entropy = np.full((4, 4), 0.8)
    assert slice_score(entropy) == pytest.approx(0.8)
    assert slice_score(entropy, foreground=np.zeros((4, 4))) == 0.0  # sure it is background: nothing to review
    half = np.zeros((4, 4))
    half[:2] = 1.0
    assert slice_score(entropy, foreground=half) == pytest.approx(0.4)


def test_review_order_ranks_highest_first_and_drops_reviewed():
    scores = [0.1, 0.5, 0.3, 0.5]
    assert review_order(scores) == [(1, 0.5), (3, 0.5), (2, 0.3), (0, 0.1)]
    assert [z for z, _ in review_order(scores, reviewed=[1, 2])] == [3, 0]
    assert [z for z, _ in review_order(scores, top=2)] == [1, 3]


def test_review_order_spreads_neighbouring_slices():
    # the doubt sits on a run of neighbours (a lesion's continuation): the list
    # goes to both ends of it before the slice next to the first pick
    scores = [0.0, 0.0, 0.2, 0.3, 0.4, 0.45, 0.0, 0.38, 0.0]
    assert [z for z, _ in review_order(scores, top=3)] == [5, 7, 3]
    assert [z for z, _ in review_order(scores, top=3, spacing=0)] == [5, 4, 7]
    # the scores listed are the slices' own, every unreviewed slice is listed once
    listed = review_order(scores, reviewed=[5])
    assert sorted(z for z, _ in listed) == [0, 1, 2, 3, 4, 6, 7, 8]
    assert dict(listed)[4] == 0.4
    # a neighbour still beats a slice of less than half its score
    assert [z for z, _ in review_order([0.0, 1.0, 0.9, 0.0, 0.3], top=2)] == [1, 2]
    assert review_order([0.2, 0.1], reviewed=[0, 1]) == []


def test_review_order_discounts_the_neighbours_of_reviewed_slices():
    # slice 3 was corrected: 2 and 4 show nearly the same, so the list goes
    # to 1 and 5 first, unless it is the plain ranking
    scores = [0.0, 0.5, 0.6, 0.0, 0.6, 0.5, 0.0]
    assert [z for z, _ in review_order(scores, reviewed=[3], top=2)] == [1, 5]
    assert [z for z, _ in review_order(scores, reviewed=[3], top=2, spacing=0)] == [2, 4]
    # the scores listed stay the slices' own
    assert dict(review_order(scores, reviewed=[3]))[2] == 0.6
    # a skipped slice (no score) is left out without discounting its neighbours
    assert [z for z, _ in review_order(scores, skip=[3], top=2)] == [2, 4]
    assert 3 not in dict(review_order(scores, skip=[3]))


def _stack_with_noise_slice(noise_slice: int) -> np.ndarray:
    """Five smooth slices with one bright square; one slice is pure noise."""
    rng = np.random.default_rng(1)
    stack = np.full((5, 48, 56), 100.0, np.float32)
    stack[:, 12:30, 14:34] = 400.0
    stack += rng.normal(0, 2, stack.shape).astype(np.float32)
    stack[noise_slice] = rng.uniform(0, 1000, stack.shape[1:])
    return stack


def test_a_noise_slice_is_ranked_first(bundled):
    stack = _stack_with_noise_slice(3)
    result = predict(stack, bundled, device="cpu", precision="float32", uncertainty=True)
    assert result.uncertainty.shape == stack.shape and result.uncertainty.dtype == np.float32
    assert 0.0 <= result.uncertainty.min() and result.uncertainty.max() <= 1.0
    # the review score weights the entropy by the foreground probability: at most the plain mean
    assert np.all(result.slice_uncertainty <= slice_scores(result.uncertainty) + 1e-6)
    assert np.all(result.slice_uncertainty >= 0)
    assert review_order(result.slice_uncertainty)[0][0] == 3
    plain = predict(stack, bundled, device="cpu", precision="float32")
    assert plain.uncertainty is None and plain.slice_uncertainty is None
    np.testing.assert_array_equal(plain.labels, result.labels)  # asking for uncertainty changes nothing else


def test_uncertainty_streams_into_an_output_array(tiny_model):
    stack = _stack_with_noise_slice(1)
    sink = np.zeros(stack.shape, np.float32)
    result = predict(stack, tiny_model, device="cpu", precision="float32", tile=32, uncertainty_out=sink)
    assert result.uncertainty is sink and sink.max() > 0
    with pytest.raises(ValueError, match="uncertainty output shape"):
        predict(stack, tiny_model, device="cpu", tile=32, uncertainty_out=np.zeros((2, 3, 4), np.float32))


@pytest.mark.parametrize("suffix", [".tif", ".nii.gz", ".npy"])
def test_cli_writes_uncertainty_with_the_labels_geometry(tmp_path, suffix, capsys):
    import nibabel as nib

    stack = _stack_with_noise_slice(2)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(stack.transpose(2, 1, 0).copy(), affine), str(src))
    labels_out, unc_out = tmp_path / "labels.nii.gz", tmp_path / f"unc{suffix}"
    code = main(["predict", str(src), "-o", str(labels_out), "--uncertainty", str(unc_out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "slices to review first: 2 (" in err
    if suffix == ".tif":
        values = tifffile.imread(unc_out)
    elif suffix == ".npy":
        values = np.load(unc_out)
    else:
        image = nib.load(str(unc_out))
        np.testing.assert_allclose(image.affine, affine)
        assert image.get_data_dtype() == np.float32
        values = np.asarray(image.dataobj).transpose(2, 1, 0)
    assert values.shape == stack.shape and values.dtype == np.float32
    assert 0.0 <= values.min() and values.max() <= 1.0
    assert int(np.argmax(values.mean(axis=(1, 2)))) == 2


def test_cli_refuses_a_png_uncertainty_and_writes_nothing(tmp_path, tiny_model_dir, capsys):
    src = tmp_path / "scan.npy"
    np.save(src, _stack_with_noise_slice(0))
    out, unc = tmp_path / "labels.tif", tmp_path / "unc.png"
    code = main(["predict", str(src), "-o", str(out), "--uncertainty", str(unc), "--model", str(tiny_model_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "float32" in err[0]
    assert not out.exists() and not unc.exists()


def test_near_lesion_scores_rank_doubt_next_to_the_corrected_lesion_first():
    from napari_unet.core.uncertainty import near_lesion_scores, review_order

    focus = np.zeros((5, 40, 40), bool)
    focus[2, 15:25, 15:25] = True
    doubt = np.zeros((5, 40, 40), np.float32)
    doubt[3, 14:26, 14:26] = 0.5  # where the lesion goes on, one slice up
    doubt[0, 0:10, 0:10] = 0.9  # far from it, and more doubt in all
    plain = np.array([doubt[z].mean() for z in range(5)])
    assert review_order(plain, [2])[0][0] == 0
    scores = near_lesion_scores(doubt, focus, plain, reach=4)
    assert [z for z, _ in review_order(scores, [2])][:2] == [3, 0]  # the plain score orders the rest
    # the same from the 0..255 form the predictor keeps
    scores8 = near_lesion_scores(np.rint(doubt * 255).astype(np.uint8), focus, plain, reach=4)
    np.testing.assert_allclose(scores8, scores, rtol=0.01)
    # nothing corrected: the plain scores
    np.testing.assert_array_equal(near_lesion_scores(doubt, np.zeros_like(focus), plain), plain)


def _disc_stack(slices: int = 8) -> tuple[np.ndarray, np.ndarray]:
    volume = np.zeros((slices, 48, 48), np.float32)
    volume[:, 47, 47] = 1.0  # the same brightest value in every plane (the ramp is per plane)
    yy, xx = np.mgrid[:48, :48]
    return volume, (yy - 24) ** 2 + (xx - 24) ** 2 <= 36


def _review_orders(volume, disc, model) -> tuple[list[int], list[int]]:
    """The review order of ``volume``'s slices before and after the disc is
    corrected as tumour on slice 2 (slice 2 reviewed)."""
    import napari_unet
    from napari_unet.core.uncertainty import review_order

    truth = np.zeros(volume.shape, np.uint8)
    truth[2][disc] = 1
    trusted = np.zeros(volume.shape, bool)
    trusted[2] = True
    plain = napari_unet.predict(volume, model, uncertainty=True).slice_uncertainty
    after = napari_unet.predict(volume, model, uncertainty=True, corrections=(truth, trusted)).slice_uncertainty
    return [z for z, _ in review_order(plain, [2])], [z for z, _ in review_order(after, [2])]


def test_predict_after_corrections_lists_the_lesions_neighbour_first(ramp_network, tiny_model):
    """The predictor's review scores after a correction: the faint continuation
    of the corrected lesion (slice 4) comes before a larger faint patch far
    from it (slice 7), which plain scores rank first."""
    volume, disc = _disc_stack()
    for z in range(4):
        volume[z][disc] = 1.0  # the lesion, found with certainty on slices 0-3
    volume[4][disc] = 0.45
    volume[7, 0:13, 0:13] = 0.45
    plain, after = _review_orders(volume, disc, tiny_model)
    assert plain[0] == 7
    assert after[0] == 4


def test_predict_lists_first_the_neighbours_where_the_network_is_sure_the_lesion_stops(ramp_network, tiny_model):
    """Doubt cannot point at a confident miss: after a correction on slice 2,
    the slices within two of it where the prediction drops the lesion (0, 1
    and 4: tumour probability 0 on its footprint) come first, before the slice
    that continues it (3) and a faint patch far away (6), which plain scores
    rank first."""
    volume, disc = _disc_stack()
    volume[2][disc] = volume[3][disc] = 1.0
    volume[6, 0:13, 0:13] = 0.45
    plain, order = _review_orders(volume, disc, tiny_model)
    assert plain[0] == 6
    assert set(order[:3]) == {0, 1, 4}
    assert order.index(3) > 2 and order.index(6) > 2


def test_lesion_continuation_copies_the_corrected_lesion_onto_its_neighbours():
    from napari_unet.core.postprocess import seeds_from_corrections
    from napari_unet.core.uncertainty import continuation_score, lesion_continuation

    truth = np.zeros((7, 10, 10), np.uint8)
    truth[3, 2:5, 2:6] = 1
    trusted = np.zeros(truth.shape, bool)
    trusted[3] = True
    trusted[5, 0:3, 0:3] = True  # a few pixels trusted as background on slice 5
    expected = lesion_continuation(seeds_from_corrections(truth, trusted))
    assert list(expected) == [1]
    footprint = truth[3] == 1
    for z in (1, 2, 4):
        np.testing.assert_array_equal(expected[1][z], footprint)
    assert not expected[1][[0, 3, 6]].any()  # beyond two slices, and the corrected slice itself
    np.testing.assert_array_equal(expected[1][5], footprint & ~trusted[5])  # trusted pixels need no review
    assert lesion_continuation({1: footprint, 0: ~footprint}) == {}  # a 2D image
    # the score: the share of the plane where the lesion should go on and the class is not given
    probs = np.zeros((3, 10, 10), np.float32)
    probs[0] = 1.0
    where = {1: expected[1][2]}
    assert continuation_score(probs, where) == pytest.approx(12 / 100)
    probs[1][footprint], probs[0][footprint] = 0.75, 0.25
    assert continuation_score(probs, where) == pytest.approx(0.25 * 12 / 100)
    assert continuation_score(probs, {7: where[1]}) == 0.0  # a class the model does not have
