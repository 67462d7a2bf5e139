import numpy as np
import pytest
import torch

from napari_unet.core.predict import PredictOptions, predict_planes
from napari_unet.core.tiling import blend_weights, tile_grid, tile_size_for, tile_starts


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 0.25), (33, 32, 0.5), (32, 32, 0.1), (513, 128, 0.125), (7, 16, 0.0)])
def test_tiles_cover_the_axis_with_requested_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    covered = np.zeros(max(size, tile), bool)
    for s in starts:
        assert 0 <= s and s + tile <= max(size, tile)
        covered[s : s + tile] = True
    assert covered[:size].all()
    steps = np.diff(starts)
    assert (steps <= tile * (1 - overlap) + 1).all()
    assert starts == sorted(set(starts))


def test_tile_size_shrinks_for_small_images_and_respects_divisor():
    assert tile_size_for(33, 512, 16) == 48
    assert tile_size_for(1000, 500, 16) == 512
    assert tile_size_for(5, 64, 8) == 8


def test_blend_weights_peak_in_centre_and_never_zero():
    w = blend_weights((32, 48))
    assert w.shape == (32, 48) and w.dtype == np.float32
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    assert w[16, 24] > w[0, 0] and w[16, 24] > w[16, 0]


def test_tile_grid_is_product_of_axes():
    grid = tile_grid((100, 70), (32, 32), 0.25)
    assert len(grid) == len(tile_starts(100, 32, 0.25)) * len(tile_starts(70, 32, 0.25))


class ConvPredictor:
    """A 'model' with a 3x3 receptive field: tiling must not change its output."""

    def __init__(self):
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)

    def __call__(self, batch):
        with torch.no_grad():
            return torch.softmax(self.conv(torch.from_numpy(batch)) * 4, 1).numpy()


def _run(planes, predictor, options, divisor=1):
    planes = list(planes)
    out = {}
    for event in predict_planes(iter(planes), len(planes), planes[0].shape[1:], predictor, divisor, options):
        if isinstance(event, tuple):
            out[event[0]] = event[1]
    return [out[i] for i in range(len(planes))]


def test_tiled_equals_whole_image_in_the_interior():
    rng = np.random.default_rng(1)
    plane = rng.standard_normal((1, 101, 87)).astype(np.float32)
    predictor = ConvPredictor()
    whole = predictor(plane[None])[0]
    (tiled,) = _run([plane], predictor, PredictOptions(tile=32, overlap=0.5, batch_size=3))
    assert tiled.shape == whole.shape
    interior = (slice(None), slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(tiled[interior], whole[interior], atol=5e-3)
    assert (tiled.argmax(0) == whole.argmax(0))[interior[1:]].mean() > 0.999


def test_blending_leaves_no_seams():
    """A smooth input must give a smooth output: no jumps at tile borders."""
    yy, xx = np.mgrid[:96, :96].astype(np.float32)
    plane = ((yy + xx) / 192.0)[None]
    predictor = ConvPredictor()
    (tiled,) = _run([plane], predictor, PredictOptions(tile=32, overlap=0.25, batch_size=2))
    whole = predictor(plane[None])[0]
    grad_tiled = np.abs(np.diff(tiled[1], axis=1))[2:-2, 2:-2].max()
    grad_whole = np.abs(np.diff(whole[1], axis=1))[2:-2, 2:-2].max()
    assert grad_tiled <= grad_whole * 1.05 + 1e-4


def test_planes_are_batched_across_a_stack():
    calls = []

    def predictor(batch):
        calls.append(len(batch))
        return np.ones((len(batch), 2, *batch.shape[2:]), np.float32) / 2

    planes = [np.zeros((1, 20, 20), np.float32) for _ in range(5)]
    results = _run(planes, predictor, PredictOptions(tile=32, batch_size=4))
    assert calls == [4, 1]
    assert len(results) == 5 and results[0].shape == (2, 20, 20)
