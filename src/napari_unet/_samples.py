"""Sample data for napari's File > Open Sample menu.

* ``retina``: the real colour fundus photograph that scikit-image ships
  (``skimage.data.retina``; CC0, Häggström, M. (2014), Wikimedia Commons).
* ``lesion_scan``: a generated MRI-like stack (deterministic, no licence
  restrictions) with a bright, heterogeneous lesion and thin vessels.
"""

from __future__ import annotations

import numpy as np


def retina_sample() -> list[tuple]:
    from skimage import data

    image = data.retina()
    return [(image, {"name": "retina", "rgb": True, "metadata": {"source": "skimage.data.retina (CC0)"}}, "image")]


def lesion_scan(shape: tuple[int, int, int] = (24, 192, 192), seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 MRI-like stack (Z,Y,X) and its ground-truth labels (0/1/2)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (x / 0.85) ** 2 + (y / 0.95) ** 2 + (z / 1.3) ** 2 < 1
    brain = (x / 0.75) ** 2 + (y / 0.85) ** 2 + (z / 1.2) ** 2 < 1
    texture = ndi.gaussian_filter(rng.standard_normal(shape), sigma=(1, 4, 4))
    image = 300.0 * head + 500.0 * brain + 120.0 * texture * brain
    bias = 1 + 0.25 * x - 0.15 * y  # coil bias field
    labels = np.zeros(shape, np.uint8)
    # lesion: an irregular blob, brighter and heterogeneous
    blob = ((x - 0.3) / 0.28) ** 2 + ((y + 0.2) / 0.22) ** 2 + ((z - 0.1) / 0.6) ** 2
    blob += 0.35 * ndi.gaussian_filter(rng.standard_normal(shape), sigma=(2, 6, 6)) * 4
    lesion = (blob < 1) & brain
    image[lesion] += 550 + 150 * ndi.gaussian_filter(rng.standard_normal(shape), 2)[lesion]
    labels[lesion] = 1
    # vessels: thin tubes meandering through every slice
    for k in range(3):
        t = np.linspace(0, 1, 400)
        cy = 0.6 * np.sin(2 * np.pi * (t + k / 3)) * (0.4 + 0.2 * k)
        cx = -0.8 + 1.6 * t
        for zi in range(shape[0]):
            yy = ((cy + 0.05 * np.sin(zi / 3 + k)) + 1) / 2 * (shape[1] - 1)
            xx = (cx + 1) / 2 * (shape[2] - 1)
            labels[zi, np.clip(yy.astype(int), 0, shape[1] - 1), np.clip(xx.astype(int), 0, shape[2] - 1)] = 2
    vessels = ndi.binary_dilation(labels == 2, structure=np.ones((1, 2, 2), bool)) & brain & ~lesion
    labels[labels == 2] = 0
    labels[vessels] = 2
    image[vessels] += 380
    image = ndi.gaussian_filter(image, sigma=(0.5, 0.8, 0.8)) * bias
    # Rician-like noise
    noise = 25.0
    image = np.hypot(image + noise * rng.standard_normal(shape), noise * rng.standard_normal(shape))
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def lesion_scan_sample() -> list[tuple]:
    image, _ = lesion_scan()
    spacing = (3.0, 0.9, 0.9)  # mm: thick slices, as in many clinical MRIs
    return [
        (image, {"name": "lesion scan", "scale": spacing, "metadata": {"source": "napari-unet generated phantom"}}, "image")
    ]
