"""Model versions: add, list, rollback, rename, export/import, and the regression gate."""

from __future__ import annotations

import json

import pytest
import torch

from napari_unet.core.versions import ModelStore, VersionError, default_models_dir
from napari_unet.core.weights import ModelError, load_model


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "models")


def _perturbed(model, value):
    from napari_unet.core.train import copy_model

    other = copy_model(model)
    with torch.no_grad():
        other.net.head.bias.fill_(value)
    return other


def test_add_list_get_and_never_overwrite(store, tiny_model):
    v1 = store.add_version(tiny_model, parent="bundled-default", metrics={"val_dice": 0.5})
    v2 = store.add_version(_perturbed(tiny_model, 1.0), parent=v1)
    assert [v.id for v in store.list_versions()] == [v1.id, v2.id]
    assert v2.parent == v1.id and v1.parent == "bundled-default"
    assert store.get(v1.id).metrics == {"val_dice": 0.5}
    assert v1.path != v2.path and (v2.path / "weights.safetensors").is_file()
    assert torch.equal(store.load(v2).net.head.bias, torch.full((3,), 1.0))
    assert store.current() is None  # adding does not promote
    with pytest.raises(VersionError, match="no model version"):
        store.get("v9999")
    # a leftover folder with the next id is skipped, not overwritten
    (store.root / "v0003").mkdir()
    v3 = store.add_version(tiny_model)
    assert v3.id == "v0004"
    data = json.loads(store.index_path.read_text())
    assert [v["id"] for v in data["versions"]] == ["v0001", "v0002", "v0004"]


def test_rollback_rename_and_current(store, tiny_model):
    v1 = store.add_version(tiny_model, make_current=True)
    v2 = store.add_version(_perturbed(tiny_model, 2.0), parent=v1, make_current=True)
    assert store.current().id == v2.id
    store.rollback(v1.id)
    assert store.current().id == v1.id
    renamed = store.rename(v1.id, "liver CT round 1")
    assert renamed.name == "liver CT round 1" and store.get("liver CT round 1").id == v1.id
    with pytest.raises(VersionError, match="empty"):
        store.rename(v1.id, " ")
    # a fresh store object on the same root sees the same state
    assert ModelStore(store.root).current().id == v1.id
    store.clear_current()
    assert store.current() is None


def test_export_and_import(store, tiny_model, tmp_path):
    v1 = store.add_version(tiny_model)
    dest = store.export(v1, tmp_path / "exported")
    assert load_model(dest).config.name == tiny_model.config.name
    with pytest.raises(VersionError, match="already exists"):
        store.export(v1, dest)
    imported = store.import_folder(dest, name="from a colleague")
    assert imported.kind == "import" and imported.name == "from a colleague"
    assert imported.path != dest and load_model(imported.path) is not None
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "model.pt").write_bytes(b"pickle")
    with pytest.raises(ModelError):
        store.import_folder(bad)
    assert len(store.list_versions()) == 2  # nothing added for the bad folder


def test_regression_gate(store, tiny_model):
    previous = store.add_version(tiny_model, make_current=True)
    better = store.add_version(_perturbed(tiny_model, 0.1), parent=previous)
    decision = store.promote(better, previous, 0.82, 0.80)
    assert decision.promoted and store.current().id == better.id

    worse = store.add_version(_perturbed(tiny_model, 0.2), parent=better)
    decision = store.promote(worse, better, 0.70, 0.82)
    assert not decision.promoted and decision.needs_confirmation
    assert (decision.val_dice_candidate, decision.val_dice_previous) == (0.70, 0.82)
    assert "0.820" in decision.reason and "0.700" in decision.reason
    assert store.current().id == better.id  # still the previous one
    assert worse.path.is_dir() and store.get(worse.id).metrics["promoted"] is False
    # the user chooses the new one anyway
    store.rollback(worse)
    assert store.current().id == worse.id
    # the gate says what it compared (the fit on the corrected slices when validation is blind)
    fit = store.promote(previous, worse, 0.2, 0.8, metric="tumor Dice on the slices it learned from")
    assert not fit.promoted and fit.metric == "tumor Dice on the slices it learned from"
    assert fit.reason.startswith("tumor Dice on the slices it learned from fell from 0.800 to 0.200")
    assert store.get(previous.id).metrics["gate"] == "tumor Dice on the slices it learned from"
    store.rollback(worse)
    # no numbers: nothing shows a regression
    assert store.promote(previous, worse, None, 0.9).promoted
    assert store.promote(worse, previous, float("nan"), 0.9).promoted


def test_default_root_and_damaged_index(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_MODELS_DIR", str(tmp_path / "env-models"))
    assert default_models_dir() == tmp_path / "env-models"
    assert ModelStore().root == tmp_path / "env-models"
    store = ModelStore(tmp_path / "damaged")
    store.root.mkdir()
    store.index_path.write_text("{not json")
    with pytest.raises(VersionError, match="damaged"):
        store.list_versions()
