"""The zero-shot zoom benchmark's ranking measure and its bad-input handling."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("zero_shot_zoom")


def test_lesion_rank_separates_found_chance_and_reversed(bench):
    rng = np.random.default_rng(0)
    lesion = np.zeros((4, 32, 32), bool)
    lesion[1:3, 10:20, 10:20] = True
    found = np.where(lesion, 0.9, 0.1) + rng.uniform(0, 0.05, lesion.shape)
    assert bench.lesion_rank(found, lesion) == 0.0
    chance = rng.uniform(0, 1, lesion.shape)
    assert 0.4 < bench.lesion_rank(chance, lesion) < 0.6
    reversed_ = np.where(lesion, 0.1, 0.9) + rng.uniform(0, 0.05, lesion.shape)
    assert bench.lesion_rank(reversed_, lesion) == 1.0


def test_missing_data_is_a_one_line_error(bench, tmp_path, capsys):
    assert bench.main(["--data", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert "no real scans" in err and "Traceback" not in err
