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
