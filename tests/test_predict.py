import numpy as np
import pytest
import torch

from napari_unet.core.config import InputConfig, ModelConfig, UNetConfig
from napari_unet.core.device import resolve_device, resolve_precision
from napari_unet.core.normalize import intensity_ranges, normalize_slice
from napari_unet.core.predict import PredictOptions, image_layout, predict, predict_iter
from napari_unet.core.weights import new_model


@pytest.mark.parametrize(
    "shape,expected",
    [((61, 75), (61, 75)), ((33, 20, 3), (33, 20)), ((3, 45, 37), (3, 45, 37)), ((2, 30, 31, 3), (2, 30, 31)), ((9, 7), (9, 7))],
)
def test_predict_shapes_on_odd_sizes(tiny_model, shape, expected):
    image = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    result = predict(image, tiny_model, tile=32, device="cpu")
    assert result.labels.shape == expected
    assert result.labels.dtype == np.uint8
    assert result.labels.max() < 3


def test_probabilities_on_request(tiny_model, blob_image):
    result = predict(blob_image, tiny_model, device="cpu", return_probabilities=True)
    assert result.probabilities.shape == (3, *blob_image.shape)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(result.probabilities.argmax(0), result.labels)


def test_intensity_scale_does_not_matter(tiny_model, blob_image):
    """Percentile normalisation: HU-like, uint16 and uint8 versions segment alike."""
    a = predict(blob_image, tiny_model, device="cpu").labels
    b = predict(blob_image * 40 - 1000, tiny_model, device="cpu").labels
    assert (a == b).mean() > 0.995


@pytest.mark.parametrize("bad", [(4, 5, 6, 7), (10,), (10, 10, 4)])
def test_bad_layouts_are_explained(bad):
    with pytest.raises(ValueError, match="(expected 2D|RGBA)"):
        image_layout(bad)


def test_progress_events_and_cancel(tiny_model):
    stack = np.random.default_rng(0).random((6, 40, 40)).astype(np.float32)
    gen = predict_iter(stack, tiny_model, PredictOptions(tile=32, batch_size=2, device="cpu"))
    first = next(gen)
    assert first.total == 6 * 4 and 0 < first.done < first.total
    gen.close()  # what napari's worker.quit() does at a yield
    with pytest.raises(StopIteration):
        next(gen)


def test_out_array_receives_planes(tiny_model):
    stack = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    out = np.full((3, 20, 24), 255, np.uint8)
    result = predict(stack, tiny_model, device="cpu", out=out)
    assert result.labels is out and out.max() < 3


def _quickly_trained_model():
    """A small U-Net trained for a few seconds to find bright discs (1) and dark lines (2),
    so that its predictions are structured (a random net predicts one class everywhere)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = new_model(ModelConfig(name="bf16", architecture=UNetConfig(depth=2, base_channels=8)), seed=0)
    yy, xx = np.mgrid[:64, :64]

    def sample():
        img = rng.normal(0, 0.3, (64, 64))
        lab = np.zeros((64, 64), np.int64)
        cy, cx, r = rng.integers(12, 52, 2).tolist() + [rng.integers(5, 12)]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[disc] += 1.5
        lab[disc] = 1
        col = rng.integers(2, 62)
        img[:, col : col + 2] -= 1.5
        lab[:, col : col + 2] = 2
        return img.astype(np.float32), lab

    def normalised(img):
        return normalize_slice(img, intensity_ranges(img, InputConfig(), False), 1, InputConfig())[0]

    opt = torch.optim.Adam(model.net.parameters(), lr=1e-2)
    model.net.train()
    for _ in range(60):
        imgs, labs = zip(*(sample() for _ in range(8)))
        x = torch.tensor(np.stack([normalised(i) for i in imgs])[:, None])
        loss = torch.nn.functional.cross_entropy(model.net(x), torch.tensor(np.stack(labs)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.net.eval()
    image, truth = zip(*(sample() for _ in range(2)))
    return model, np.stack(image).astype(np.float32), np.stack(truth)


def test_bfloat16_agrees_with_float32():
    """bf16 autocast (with channels-last) gives the same labels on >= 99.5% of pixels."""
    model, stack, truth = _quickly_trained_model()
    fp32 = predict(stack, model, device="cpu", precision="float32")
    bf16 = predict(stack, model, device="cpu", precision="bfloat16")
    assert bf16.precision == "bfloat16" and fp32.precision == "float32"
    # the model has learned something, so the comparison is not between constant maps
    assert (fp32.labels == truth).mean() > 0.8 and len(np.unique(fp32.labels)) == 3
    assert (fp32.labels == bf16.labels).mean() >= 0.995


def test_out_of_memory_retries_with_smaller_batches(tiny_model, monkeypatch):
    from napari_unet.core import predict as predict_module

    sizes = []
    original = predict_module._TileRunner._run

    def flaky(self, chunk):
        sizes.append(len(chunk))
        if len(chunk) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, chunk)

    monkeypatch.setattr(predict_module._TileRunner, "_run", flaky)
    stack = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
    result = predict(stack, tiny_model, tile=32, batch_size=4, device="cpu")
    assert result.labels.shape == (3, 40, 40)
    assert max(sizes) == 4 and sizes[-1] == 1
    assert any("out of memory" in n for n in result.notes)


def test_other_errors_are_not_swallowed(tiny_model, monkeypatch):
    from napari_unet.core import predict as predict_module

    def broken(self, chunk):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(predict_module._TileRunner, "_run", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict(np.zeros((20, 20), np.float32), tiny_model, device="cpu")


def test_device_choice(monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("napari_unet.core.device.mps_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr("napari_unet.core.device.mps_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_cpu_precision_follows_native_bf16(monkeypatch):
    from napari_unet.core import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32


def test_native_bf16_is_read_from_torch_cpu(monkeypatch):
    """torch 2.13 keeps the probes under ``torch.cpu`` (not ``torch._C._cpu``,
    which 0.7 asked, so an AVX512-BF16 CPU ran in float32)."""
    from napari_unet.core import device

    detect = device.cpu_has_native_bf16.__wrapped__
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(device, "_cpuinfo_has_bf16", lambda: pytest.fail("torch answered; no need to read flags"))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert detect() is True
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert detect() is False


def test_native_bf16_falls_back_to_the_cpu_flags(tmp_path):
    from napari_unet.core.device import _cpuinfo_has_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 sha_ni\n")
    assert _cpuinfo_has_bf16(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert not _cpuinfo_has_bf16(str(info))
    assert not _cpuinfo_has_bf16(str(tmp_path / "missing"))


@pytest.mark.parametrize("zoom", [0.5, 1.7])
def test_zoom_returns_labels_at_the_image_size(tiny_model, zoom):
    stack = np.random.default_rng(0).random((2, 45, 37)).astype(np.float32)
    result = predict(stack, tiny_model, device="cpu", zoom=zoom, return_probabilities=True)
    assert result.labels.shape == (2, 45, 37)
    assert result.probabilities.shape == (3, 2, 45, 37)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-3)


def test_zoom_is_validated():
    with pytest.raises(ValueError, match="zoom"):
        PredictOptions(zoom=0)


def test_auto_zoom_shrinks_only_large_colour_photos(tiny_model):
    from napari_unet.core.tiling import auto_zoom

    assert auto_zoom((512, 512), rgb=False) == 1.0
    assert auto_zoom((4000, 4000), rgb=False) == 1.0  # grey scans keep their pixels
    assert auto_zoom((700, 900), rgb=True) == 1.0
    assert auto_zoom((1411, 1411), rgb=True) == pytest.approx(512 / 1411, abs=1e-3)
    photo = np.random.default_rng(0).integers(0, 255, (800, 820, 3)).astype(np.uint8)
    result = predict(photo, tiny_model, device="cpu")
    assert result.zoom == pytest.approx(512 / 800, abs=1e-3)
    assert result.labels.shape == (800, 820)
    assert predict(photo, tiny_model, device="cpu", zoom=1.0).zoom == 1.0


def test_folded_network_is_reused_until_the_weights_change(tiny_model):
    import torch

    from napari_unet.core.predict import prepare_network

    cpu = torch.device("cpu")
    first = prepare_network(tiny_model.net, cpu)
    assert prepare_network(tiny_model.net, cpu) is first
    image = np.random.default_rng(0).random((32, 40)).astype(np.float32)
    before = predict(image, tiny_model, device="cpu", return_probabilities=True).probabilities
    with torch.no_grad():
        next(tiny_model.net.parameters()).add_(0.5)  # an optimiser step changes weights in place
    again = prepare_network(tiny_model.net, cpu)
    assert again is not first
    after = predict(image, tiny_model, device="cpu", return_probabilities=True).probabilities
    assert not np.allclose(before, after)


def test_flips_average_the_mirrored_predictions(tiny_model):
    """flips=4 is the mean of the four mirror images' probabilities, each mirrored back."""
    image = np.random.default_rng(3).random((32, 48)).astype(np.float32)
    ranges = intensity_ranges(image, tiny_model.config.input, False)

    def probs(img, flips=1):
        options = PredictOptions(tile=64, device="cpu", precision="float32", return_probabilities=True, flips=flips)
        gen = predict_iter(img, tiny_model, options, intensity_ranges=ranges)
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return stop.value.probabilities

    expected = np.mean(
        [np.flip(probs(np.flip(image, axis=axes)), axis=tuple(a + 1 for a in axes)) for axes in [(), (1,), (0,), (0, 1)]],
        axis=0,
    )
    plain, averaged = probs(image), probs(image, flips=4)
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    assert np.abs(averaged - plain).max() > 1e-3  # a random net is not mirror-symmetric: the flips did something


@pytest.mark.parametrize("bad", [0, 2, 8, True])
def test_flips_are_validated(bad):
    with pytest.raises(ValueError, match="flips must be 1 or 4"):
        PredictOptions(flips=bad)
