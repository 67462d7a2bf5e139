"""BioImage.IO export and import: a valid package, reproducible, and a lossless round trip."""

from __future__ import annotations

import io
import json
import socket
import zipfile

import numpy as np
import pytest

pytest.importorskip("bioimageio.spec")
# TorchScript is deprecated in torch 2.13 but is what BioImage.IO consumers run
pytestmark = pytest.mark.filterwarnings("ignore:.*torch\\.jit.*:DeprecationWarning")

TEST_SIZE = 72  # the tiny model's valid sizes are 68 + 4n


def _tiny(normalization: str = "percentile"):
    from napari_unet.core.config import InputConfig, ModelConfig, UNetConfig
    from napari_unet.core.weights import new_model

    config = ModelConfig(
        name="tiny-test",
        architecture=UNetConfig(in_channels=1, num_classes=3, depth=2, base_channels=4, norm="batch"),
        input=InputConfig(normalization=normalization),
        provenance={"trained_by": "tests", "steps": 0},
    )
    model = new_model(config, seed=0)
    # non-trivial batch-norm statistics, so folding them into the TorchScript is tested
    import torch

    with torch.no_grad():
        for module in model.net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    model.net.eval()
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny percentile-normalised model and its package."""
    from napari_unet.io.bioimageio import export_bioimageio

    model = _tiny()
    path = export_bioimageio(model, tmp_path_factory.mktemp("pkg") / "tiny.zip", test_size=TEST_SIZE)
    return model, path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("bioimageio.spec tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _preprocess(array, steps):
    """The spec's preprocessing operations, written from their definitions (independent of the exporter)."""
    data = array
    for step in steps:
        kw = step.kwargs
        if step.id == "ensure_dtype":
            data = data.astype(kw.dtype)
        elif step.id == "scale_range":
            axes = tuple(["batch", "channel", "y", "x"].index(str(a)) for a in kw.axes)
            lo = np.percentile(data, kw.min_percentile, axis=axes, keepdims=True)
            hi = np.percentile(data, kw.max_percentile, axis=axes, keepdims=True)
            data = (data - lo) / (hi - lo + kw.eps)
        elif step.id == "fixed_zero_mean_unit_variance":
            data = (data - kw.mean) / kw.std
        elif step.id == "clip":
            data = np.clip(data, kw.min, kw.max)
        else:
            raise AssertionError(f"unexpected preprocessing {step.id}")
    return data.astype(np.float32)


def _torchscript(members):
    import torch

    return torch.jit.load(io.BytesIO(members["weights-torchscript.pt"]), map_location="cpu")


def test_package_passes_bioimageio_validation_offline(exported, no_network):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    model, path = exported
    for io_checks in (True, False):  # with io checks every file's SHA-256 and the test tensors are checked
        descr = load_description(path, perform_io_checks=io_checks)
        assert isinstance(descr, ModelDescr), descr.validation_summary.format()
        summary = descr.validation_summary
        assert summary.status in ("valid-format", "passed"), summary.format()
        assert not [e for d in summary.details for e in d.errors]
    assert str(descr.format_version).startswith("0.5.")
    assert descr.license == "BSD-3-Clause"
    (inp,), (out,) = descr.inputs, descr.outputs
    assert [str(a.id) for a in inp.axes] == ["batch", "channel", "y", "x"]
    assert [str(a.id) for a in out.axes] == ["batch", "channel", "y", "x"]
    assert (inp.axes[2].size.min, inp.axes[2].size.step) == (68, 4)  # multiples of 2**depth, room for the halo
    assert list(out.axes[1].channel_names) == [c.name for c in model.config.classes]
    assert [s.id for s in inp.preprocessing][:3] == ["ensure_dtype", "scale_range", "clip"]
    assert descr.weights.torchscript is not None
    members = _members(path)
    for name in ("napari-unet-config.json", "weights.safetensors", "README.md", "cover.png",
                 "test_input.npy", "test_output.npy"):
        assert name in members
    from matplotlib.image import imread

    cover = imread(io.BytesIO(members["cover.png"]))
    assert cover.shape[1] == 2 * cover.shape[0]
    readme = members["README.md"].decode()
    assert "## Validation" in readme and "percentile" in readme


def test_torchscript_reproduces_the_test_output(exported):
    import torch
    from bioimageio.spec import load_description

    _, path = exported
    descr = load_description(path, perform_io_checks=False)
    members = _members(path)
    raw, expected = _npy(members["test_input.npy"]), _npy(members["test_output.npy"])
    assert raw.shape == (1, 1, TEST_SIZE, TEST_SIZE) and expected.shape == (1, 3, TEST_SIZE, TEST_SIZE)
    net = _torchscript(members)
    with torch.no_grad():
        got = net(torch.from_numpy(_preprocess(raw, descr.inputs[0].preprocessing))).numpy()
        other = net(torch.zeros(2, 1, 68, 76))  # any valid size and batch
    assert np.allclose(got, expected, atol=1e-5)
    assert np.allclose(expected.sum(axis=1), 1.0, atol=1e-5)  # probabilities
    assert tuple(other.shape) == (2, 3, 68, 76)


@pytest.mark.parametrize("normalization", ["percentile", "ct"])
def test_package_predicts_what_napari_unet_predicts(normalization, tmp_path, exported):
    """The described preprocessing + TorchScript give napari-unet's own probabilities
    (both modes are exact for a 2D image)."""
    import torch
    from bioimageio.spec import load_description

    from napari_unet.core.predict import predict

    if normalization == "percentile":
        model, path = exported
    else:
        from napari_unet.io.bioimageio import export_bioimageio

        model = _tiny("ct")
        path = export_bioimageio(model, tmp_path / "ct.zip", test_size=TEST_SIZE)
    descr = load_description(path, perform_io_checks=False)
    members = _members(path)
    raw = _npy(members["test_input.npy"])
    if normalization == "ct":
        assert raw.min() < -500  # a CT-like test image in HU
    with torch.no_grad():
        packaged = _torchscript(members)(torch.from_numpy(_preprocess(raw, descr.inputs[0].preprocessing))).numpy()
    ours = predict(raw[0, 0], model, device="cpu", precision="float32", return_probabilities=True, zoom=1.0)
    assert np.allclose(packaged[0], ours.probabilities, atol=1e-4)


def test_preprocessing_modes_say_what_is_exact():
    from napari_unet.core.config import InputConfig
    from napari_unet.io.bioimageio import preprocessing_steps

    ct = preprocessing_steps(InputConfig(normalization="ct", ct_window=(-100.0, 300.0)))
    assert ct.exact and ct.steps[1] == {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": -100.0, "std": 400.0}}
    assert ct.steps[2]["kwargs"] == {"min": 0.0, "max": 2.0}
    percentile = preprocessing_steps(InputConfig(normalization="percentile", low_percentile=2, high_percentile=98))
    assert percentile.exact and percentile.steps[1]["kwargs"]["min_percentile"] == 2.0
    body = preprocessing_steps(InputConfig(normalization="body"))
    assert not body.exact and body.steps[1]["id"] == "scale_range" and "inside the body" in body.notes[0]
    auto = preprocessing_steps(InputConfig(normalization="auto"))
    assert auto.mode == "percentile" and not auto.exact
    assert preprocessing_steps(InputConfig(normalization="auto"), "ct").mode == "ct"


def test_round_trip_restores_the_model_folder(exported, tmp_path, blob_image):
    from napari_unet.core.predict import predict
    from napari_unet.core.weights import load_model_folder, save_model
    from napari_unet.io.bioimageio import import_bioimageio

    model, path = exported
    folder = import_bioimageio(path, tmp_path / "restored")
    original = save_model(model, tmp_path / "original")
    _assert_same_folder(folder, original)
    restored = load_model_folder(folder)
    assert restored.config == model.config
    a = predict(blob_image, model, device="cpu", precision="float32", return_probabilities=True)
    b = predict(blob_image, restored, device="cpu", precision="float32", return_probabilities=True)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def _assert_same_folder(a, b):
    """Same config and bit-identical tensors (safetensors' header order varies between saves,
    so the files' bytes, and the SHA-256 that config.json records, may differ)."""
    from safetensors import safe_open

    from napari_unet.core.weights import WEIGHTS_HASH_KEY, sha256_of

    configs = [json.loads((f / "config.json").read_text()) for f in (a, b)]
    for folder, config in zip((a, b), configs):
        assert config.pop(WEIGHTS_HASH_KEY) == sha256_of(folder / "weights.safetensors")
    assert configs[0] == configs[1]
    with safe_open(str(a / "weights.safetensors"), "np") as fa, safe_open(str(b / "weights.safetensors"), "np") as fb:
        assert fa.metadata() == fb.metadata()
        assert sorted(fa.keys()) == sorted(fb.keys())
        for key in fa.keys():
            x, y = fa.get_tensor(key), fb.get_tensor(key)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), key


def test_import_refuses_to_overwrite(exported, tmp_path):
    from napari_unet.io.bioimageio import PackageError, import_bioimageio

    _, path = exported
    folder = import_bioimageio(path, tmp_path / "m")
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    with pytest.raises(PackageError, match="already exists"):
        import_bioimageio(path, folder)
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before  # untouched
    assert import_bioimageio(path, folder, overwrite=True) == folder
    _assert_same_folder(folder, folder)
    assert sorted(f.name for f in folder.iterdir()) == ["config.json", "weights.safetensors"]


def _cli(argv, capsys):
    from napari_unet.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def test_cli_export_then_import(tmp_path, capsys, tiny_model_dir):
    package = tmp_path / "tiny.zip"
    code, err = _cli(["export", str(tiny_model_dir), "-o", str(package), "--format", "bioimageio",
                      "--author", "A. Tester"], capsys)
    assert code == 0, err
    assert "wrote" in err and "TorchScript" in err
    rdf = _members(package)["rdf.yaml"].decode()
    assert "A. Tester" in rdf
    code, err = _cli(["export", str(tiny_model_dir), "-o", str(package)], capsys)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1

    out = tmp_path / "imported"
    code, err = _cli(["import", str(package), "-o", str(out)], capsys)
    assert code == 0, err
    _assert_same_folder(out, tiny_model_dir)
    code, err = _cli(["import", str(package), "-o", str(out)], capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, err = _cli(["import", str(package), "-o", str(out), "--overwrite", "--quiet"], capsys)
    assert code == 0 and err == ""


def _foreign_package(exported, tmp_path):
    """A valid BioImage.IO package that napari-unet did not write (no napari-unet attachments)."""
    from bioimageio.spec import load_description, save_bioimageio_package

    _, path = exported
    descr = load_description(path, perform_io_checks=False)
    descr.attachments = []
    descr.config = type(descr.config)()
    foreign = save_bioimageio_package(descr, output_path=tmp_path / "foreign.zip")
    assert "napari-unet-config.json" not in _members(foreign)
    assert type(load_description(foreign, perform_io_checks=False)).__name__ == "ModelDescr"
    return foreign


def test_cli_import_of_foreign_or_broken_files_is_one_clear_line(exported, tmp_path, capsys):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 this is not really a zip")
    text = tmp_path / "notes.zip"
    text.write_text("hello")
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("data.txt", "x")
    cases = {
        _foreign_package(exported, tmp_path): "did not export",
        broken: "not a zip file",
        text: "not a zip file",
        plain: "not a BioImage.IO package",
    }
    for package, reason in cases.items():
        out = tmp_path / f"out-{package.stem}"
        code, err = _cli(["import", str(package), "-o", str(out)], capsys)
        assert code == 2, err
        assert reason in err
        assert "napari-unet export --format bioimageio" in err  # says what is supported
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out.exists()


def test_damaged_weights_are_refused(exported, tmp_path):
    from napari_unet.io.bioimageio import PackageError, read_package

    _, path = exported
    members = _members(path)
    original = members["weights.safetensors"]
    weights = bytearray(original)
    weights[-1] ^= 0xFF
    members["weights.safetensors"] = bytes(weights)
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(damaged, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(PackageError, match="damaged"):
        read_package(damaged)
    members["weights.safetensors"] = original
    config = json.loads(members["napari-unet-config.json"])
    config["architecture"]["depth"] = 99
    members["napari-unet-config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(damaged, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(PackageError, match="depth"):
        read_package(damaged)


def test_export_without_bioimageio_spec_says_what_to_install(monkeypatch, tmp_path, capsys, tiny_model_dir):
    import sys

    from napari_unet.io.bioimageio import INSTALL_HINT, BioimageioUnavailable, export_bioimageio

    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    with pytest.raises(BioimageioUnavailable, match="napari-unet-loop\\[bioimageio\\]"):
        export_bioimageio(_tiny(), tmp_path / "x.zip")
    code, err = _cli(["export", str(tiny_model_dir), "-o", str(tmp_path / "x.zip")], capsys)
    assert code == 2 and INSTALL_HINT in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.zip").exists()


def test_finetune_widget_imports_a_package(make_napari_viewer, exported, store_dir, monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_SYNC", "1")
    import napari_unet.widgets._versions as versions_module
    from napari_unet.widgets.finetune import FinetuneWidget

    seen = []
    for level in ("show_info", "show_warning"):
        monkeypatch.setattr(versions_module, level, lambda text, level=level: seen.append((level, text)))
    monkeypatch.setattr(versions_module, "report_failure", lambda exc, what: seen.append(("failed", str(exc))) or "")
    widget = FinetuneWidget(make_napari_viewer())
    _, path = exported
    widget.import_package(path)
    (version,) = widget.store.list_versions()
    assert version.kind == "import" and version.name == "tiny-test"
    assert seen and seen[-1][0] == "show_info" and version.id in seen[-1][1]
    assert str(version.path) in [source for _, source in widget._selection.choices()]
    assert widget.import_package_button.enabled
    widget.import_package(store_dir / "missing.zip")
    assert seen[-1][0] == "failed" and "no such file" in seen[-1][1]
    assert len(widget.store.list_versions()) == 1
