"""Batch samplers: the simulator stream and folders of image/label pairs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.core.config import ModelConfig, UNetConfig
from napari_unet.core.datasets import (
    DatasetError,
    FolderBatches,
    SimulatedBatches,
    find_pairs,
    folder_validation,
    load_pair,
    simulated_batches,
    split_pairs,
)


@pytest.fixture
def config():
    return ModelConfig(name="t", architecture=UNetConfig(depth=2, base_channels=4))


def _write_pair(root, name, image, labels, image_ext=".tif", label_ext=".tif"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for sub, array, ext in (("images", image, image_ext), ("labels", labels, label_ext)):
        path = root / sub / f"{name}{ext}"
        if ext == ".npy":
            np.save(path, array)
        elif ext == ".png":
            from skimage.io import imsave

            imsave(path, array, check_contrast=False)
        else:
            tifffile.imwrite(path, array, photometric="minisblack")


def _disc(shape=(40, 52)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = ((yy - 20) ** 2 + (xx - 26) ** 2 < 64).astype(np.uint8)
    image = (100 + 80 * labels + np.random.default_rng(0).normal(0, 3, shape)).astype(np.float32)
    return image, labels


def test_simulated_batches_shapes_and_determinism(config):
    sampler = SimulatedBatches(config, (64, 64), pool_size=8, fresh=2)
    x, y, m = sampler(np.random.default_rng(0), 3)
    assert x.shape == (3, 1, 64, 64) and x.dtype == np.float32
    assert y.shape == (3, 64, 64) and y.dtype == np.int64 and m.shape == y.shape
    assert set(np.unique(y)) <= {0, 1, 2} and (m == 1).all()
    again = SimulatedBatches(config, (64, 64), pool_size=8, fresh=2)(np.random.default_rng(0), 3)
    np.testing.assert_array_equal(x, again[0])
    # normalised as the predictor normalises: mostly within 0..1
    assert 0.0 <= np.median(x) <= 1.0


def test_simulated_pool_is_bounded(config):
    sampler = SimulatedBatches(config, (32, 32), pool_size=4, fresh=3)
    rng = np.random.default_rng(1)
    for _ in range(5):
        sampler(rng, 2)
    assert len(sampler._x) == 4 and sampler.generated == 15


def test_patch_must_fit_the_network(config):
    with pytest.raises(ValueError, match="multiple of 4"):
        SimulatedBatches(config, (30, 32))


def test_validation_stream_is_fixed_and_separate(config):
    a = simulated_batches(5, config, 3, (32, 32), batch_size=2)
    b = simulated_batches(5, config, 3, (32, 32), batch_size=2)
    assert [len(batch[0]) for batch in a] == [2, 1]
    np.testing.assert_array_equal(a[0][0], b[0][0])
    train = SimulatedBatches(config, (32, 32), pool_size=4, fresh=2)(np.random.default_rng(5), 2)
    assert not np.array_equal(train[0][0], a[0][0][0])


def test_folder_pairs_read_and_sampled(tmp_path, config):
    image, labels = _disc()
    _write_pair(tmp_path, "a", image, labels)
    _write_pair(tmp_path, "b", image.astype(np.uint16), labels * 2, ".npy", ".npy")
    _write_pair(tmp_path, "c", image.astype(np.uint8), labels, ".png", ".png")
    pairs = find_pairs(tmp_path)
    assert [p.name for p in pairs] == ["a", "b", "c"]
    loaded = [load_pair(p, config) for p in pairs]
    assert loaded[0].x.shape == (1, 1, 40, 52) and loaded[1].y.max() == 2
    sampler = FolderBatches(loaded, (32, 32))
    x, y, m = sampler(np.random.default_rng(0), 4)
    assert x.shape == (4, 1, 32, 32) and y.shape == m.shape == (4, 32, 32)
    # padding beyond a small image is untrusted
    x, y, m = FolderBatches(loaded, (48, 64))(np.random.default_rng(0), 2)
    assert m.shape == (2, 48, 64) and (m[:, 40:, :] == 0).all() and (m[:, :40, :52] == 1).all()
    val = folder_validation(loaded, divisor=4)
    assert len(val) == 3 and val[0][0].shape == (1, 1, 40, 52)


def test_stacks_are_sampled_by_slice(tmp_path, config):
    image, labels = _disc()
    _write_pair(tmp_path, "vol", np.stack([image] * 3), np.stack([labels] * 3))
    loaded = load_pair(find_pairs(tmp_path)[0], config)
    assert loaded.x.shape == (3, 1, 40, 52) and loaded.y.shape == (3, 40, 52)


def test_mismatched_shapes_name_the_file(tmp_path, config):
    image, labels = _disc()
    _write_pair(tmp_path, "bad", image, labels[:30])
    pair = find_pairs(tmp_path)[0]
    with pytest.raises(DatasetError, match=r"bad\.tif.*does not match"):
        load_pair(pair, config)


def test_unknown_class_ids_are_refused(tmp_path, config):
    image, labels = _disc()
    _write_pair(tmp_path, "mask255", image, labels * 255)
    with pytest.raises(DatasetError, match="0..2"):
        load_pair(find_pairs(tmp_path)[0], config)


def test_missing_label_file_and_layout(tmp_path):
    with pytest.raises(DatasetError, match="images/ and labels/"):
        find_pairs(tmp_path)
    image, labels = _disc()
    _write_pair(tmp_path, "a", image, labels)
    tifffile.imwrite(tmp_path / "images" / "orphan.tif", image)
    with pytest.raises(DatasetError, match="orphan"):
        find_pairs(tmp_path)


def test_split_is_fixed_by_seed(tmp_path):
    from napari_unet.core.datasets import Pair

    pairs = [Pair(f"p{i}", tmp_path / f"{i}", tmp_path / f"{i}") for i in range(10)]
    train, val = split_pairs(pairs, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert split_pairs(list(reversed(pairs)), 0.2, seed=3) == (train, val)
    assert split_pairs(pairs[:1], 0.5, seed=3) == (pairs[:1], [])


def test_binary_masks_map_to_one_class(tmp_path, config):
    image, labels = _disc()
    _write_pair(tmp_path, "vessels", image, labels * 255)
    loaded = load_pair(find_pairs(tmp_path)[0], config, foreground_class=2)
    assert set(np.unique(loaded.y)) == {0, 2}
