"""napari-unet: human-in-the-loop U-Net segmentation of medical scans.

The public Python API is importable from here; heavy modules (torch) load
only when a function is first called, so napari starts fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

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
