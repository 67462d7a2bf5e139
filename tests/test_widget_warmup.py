"""The widgets' start-up warm-up: the first-time work done off the GUI thread."""

from __future__ import annotations

import gc
import sys


def test_warm_up_does_the_first_time_work_and_freezes_the_old_objects():
    from vispy.visuals.line import dash_atlas

    from napari_unet.widgets._common import warm_up

    dash_atlas._make_pattern.cache_clear()
    gc.unfreeze()
    try:
        for _ in warm_up():
            pass
        assert {"torch", "pandas", "skimage.color", "scipy.ndimage"} <= set(sys.modules)
        # vispy's dash patterns (made for every new Labels layer's polygon overlay) are cached
        assert dash_atlas._make_pattern.cache_info().currsize >= 13
        # the objects alive now are left out of later full collections
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def test_warm_up_runs_once_per_process(monkeypatch):
    from napari_unet.widgets import _common

    started = []
    monkeypatch.setattr(_common, "synchronous", lambda: False)
    monkeypatch.setattr(_common, "_WARMING", [])
    monkeypatch.setattr(_common, "_WARMED", _common.threading.Event())
    monkeypatch.setattr(_common, "run_generator", lambda fn, **kw: started.append(kw["on_finish"]) or object())
    first = _common.warm_up_once()
    assert _common.warm_up_once() is first and len(started) == 1 and not first.is_set()
    started[0]()  # the worker finished
    assert first.is_set() and _common.warm_up_once() is first and len(started) == 1
