"""The real-scan benchmark's ``--options`` parsing (an ``augment`` dict over the light preset)."""

import pytest

from napari_unet.core.augment import AugmentConfig
from napari_unet.core.finetune import FinetuneOptions


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_hitl_real")


def test_augment_dict_changes_only_named_fields(bench):
    options = FinetuneOptions(**bench._options({"augment": {"scale_prob": 0.5, "scale_range": [0.7, 1.4]},
                                                "lr": 5e-4}))
    light = AugmentConfig.light()
    assert options.augment.scale_prob == 0.5
    assert options.augment.scale_range == (0.7, 1.4)
    assert options.augment.elastic_prob == light.elastic_prob
    assert options.lr == 5e-4


def test_bad_augment_value_is_a_value_error(bench):
    with pytest.raises(ValueError, match="scale_prob"):
        bench._options({"augment": {"scale_prob": 2.0}})


def test_main_reports_bad_options_without_traceback(bench, tmp_path, capsys):
    assert bench.main(["--data", str(tmp_path), "--options", '{"augment": {"scale_prob": 2}}']) == 2
    assert "--options" in capsys.readouterr().err


def test_bad_later_options_are_a_one_line_error(bench, tmp_path, capsys):
    assert bench.main(["--data", str(tmp_path), "--later-options", '{"lr": "fast"']) == 2
    assert "--later-options" in capsys.readouterr().err
    assert bench.main(["--data", str(tmp_path), "--later-options", '{"augment": {"scale_prob": 2}}']) == 2
    assert "--later-options" in capsys.readouterr().err


def test_calibration_finds_the_saved_k3_rounds_of_a_case(load_benchmark, tmp_path):
    calibration = load_benchmark("calibration")
    for name in ("brain1-k3", "brain1-k3-s0", "brain1-k3-s2", "brain1-k10-s0", "brain10-k3", "lung2-k3-s0"):
        (tmp_path / name).mkdir()
    (tmp_path / "brain1-k3-s1").write_text("not a model folder")
    found = [p.name for p in calibration.tuned_models(tmp_path, "brain1")]
    assert found == ["brain1-k3", "brain1-k3-s0", "brain1-k3-s2"]
    assert calibration.tuned_models(tmp_path / "missing", "brain1") == []
    assert calibration.tuned_models(None, "brain1") == []


def test_the_nrrd_reader_gives_the_array_and_a_ras_affine(load_benchmark):
    import gzip

    import numpy as np

    fetch = load_benchmark("fetch_pyradiomics_cases")
    array = np.arange(4 * 3 * 2, dtype="<i2").reshape(2, 3, 4).transpose(2, 1, 0)  # (x, y, z) = (4, 3, 2)
    header = ("NRRD0004\n# a comment\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
              "sizes: 4 3 2\nspace directions: (0.5,0,0) (0,-0.5,0) (0,0,5)\nkinds: domain domain domain\n"
              "endian: little\nencoding: gzip\nspace origin: (-10,20,-30)\n\n")
    raw = header.encode() + gzip.compress(np.ascontiguousarray(array.transpose(2, 1, 0)).tobytes())
    read, affine = fetch.read_nrrd(raw)
    np.testing.assert_array_equal(read, array)  # x fastest in the file, as NRRD stores it
    # LPS -> RAS: x and y rows change sign (directions and origin)
    np.testing.assert_allclose(affine, [[-0.5, 0, 0, 10], [0, 0.5, 0, -20], [0, 0, 5, -30], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="NRRD"):
        fetch.read_nrrd(b"P6\n1 1\n255\n\n...")


def test_the_extra_cases_are_never_written_into_the_repository(load_benchmark, capsys):
    fetch = load_benchmark("fetch_pyradiomics_cases")
    assert fetch.main(["--out", str(fetch.ROOT / ".cache" / "extra")]) == 2
    assert "inside the repository" in capsys.readouterr().err
