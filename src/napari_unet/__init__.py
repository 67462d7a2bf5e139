"""napari-unet: human-in-the-loop U-Net segmentation of medical scans.

The public Python API is importable from here; heavy modules (torch) load
only when a function is first called, so napari starts fast.
"""

from __future__ import annotations

__version__ = "0.9.13"

__all__ = ["__version__", "load_model", "predict", "save_model"]


def load_model(source=None, device="cpu"):
    """Load a model folder, a bundled model by name, or the default bundled model."""
    from .core.weights import load_model as _load

    return _load(source, device)


def save_model(model, folder, overwrite=False):
    """Save a model as a folder (``weights.safetensors`` + ``config.json``), atomically."""
    from .core.weights import save_model as _save

    return _save(model, folder, overwrite=overwrite)


def predict(image, model=None, **kwargs):
    """Segment an image; see :func:`napari_unet.core.predict.predict`."""
    from .core.predict import predict as _predict

    return _predict(image, model, **kwargs)


__all__ += ["predict_batch"]


def predict_batch(paths, out_dir, model=None, client=None, format="nii.gz", overwrite=False, workers=None,
                  **kwargs):
    """Segment many scans (files, folders, globs) on a Dask cluster into
    ``out_dir/<stem>_labels.<format>``, skipping outputs that exist, and write
    ``out_dir/batch_summary.csv``; returns one row dict per scan. See
    :func:`napari_unet.batch.predict_batch`."""
    from .batch import predict_batch as _predict_batch

    return _predict_batch(paths, out_dir, model=model, client=client, format=format, overwrite=overwrite,
                          workers=workers, **kwargs)


__all__ += ["finetune", "finetune_iter"]


def finetune(
    image,
    labels,
    mask=None,
    model=None,
    *,
    max_seconds=None,
    steps=None,
    device="auto",
    seed=0,
    replay=None,
    events=None,
    **kwargs,
):
    """Fine-tune a copy of ``model`` (default: the bundled model) on the trusted
    pixels of ``labels`` (``mask`` nonzero; ``None``: all) and return the new
    model; ``events`` receives one training event per step. See
    :func:`napari_unet.core.finetune.finetune` for ``replay``, ``add_classes``,
    ``options`` and ``return_result``."""
    from .core.finetune import finetune as _finetune

    return _finetune(
        image, labels, mask, model, max_seconds=max_seconds, steps=steps, device=device, seed=seed,
        replay=replay, events=events, **kwargs,
    )


def finetune_iter(image, labels, mask=None, model=None, **kwargs):
    """Generator version of :func:`finetune` for napari's ``thread_worker``:
    yields one event per step and returns a ``FinetuneResult``."""
    from .core.finetune import finetune_iter as _finetune_iter

    return _finetune_iter(image, labels, mask, model, **kwargs)
