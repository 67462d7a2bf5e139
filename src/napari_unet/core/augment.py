"""Data augmentation for 2D training samples (NumPy / SciPy only).

:func:`augment_sample` transforms one sample ``(image (C,H,W), labels (H,W),
mask (H,W))``. Geometric transforms (flips, 90-degree rotations, rotation by
any angle, scaling, elastic deformation) move all three together; labels and
mask are resampled with nearest neighbour, so class ids stay class ids and
the trust mask stays exact. Pixels that a rotation or zoom-out brings in from
outside the field get mask 0 (untrusted). Intensity transforms touch the
image only. Every random draw comes from the ``rng`` passed in, so a sample is
reproducible from a seed.

Images are expected after :mod:`napari_unet.core.normalize`, i.e. roughly in
0..1, which is the scale the intensity parameters refer to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths of each transform.

    The presets :meth:`light` (fine-tuning on a user's corrections: small,
    plausible changes) and :meth:`heavy` (training from scratch on simulated
    scans: wide variety) are the intended starting points.
    """

    #: random flips along each axis (probability 0.5 each)
    flip: bool = True
    #: random multiple of 90 degrees
    rot90: bool = True
    #: probability of a rotation by an angle in +-``max_rotation_degrees``
    rotate_prob: float = 0.0
    max_rotation_degrees: float = 180.0
    #: probability of isotropic scaling by a factor in ``scale_range``
    scale_prob: float = 0.0
    scale_range: tuple[float, float] = (0.8, 1.25)
    #: probability of an elastic deformation: random displacements of
    #: ``elastic_alpha`` pixels (std) on a grid every ``elastic_spacing`` pixels,
    #: interpolated smoothly
    elastic_prob: float = 0.0
    elastic_alpha: float = 2.0
    elastic_spacing: float = 32.0
    #: intensity: multiply by 1 +- ``intensity_scale``, add +- ``intensity_shift``
    intensity_scale: float = 0.0
    intensity_shift: float = 0.0
    #: probability of a gamma change with gamma in ``gamma_range`` (applied on
    #: the image's own min..max range)
    gamma_prob: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    #: probability of a Gaussian blur with sigma in ``blur_sigma`` pixels
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    #: probability of additive Gaussian noise with std up to ``noise_std``
    noise_prob: float = 0.0
    noise_std: float = 0.05
    #: probability of contrast inversion (bright structures become dark)
    invert_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotate_prob", "scale_prob", "elastic_prob", "gamma_prob", "blur_prob", "noise_prob", "invert_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")
        if not 0 < self.gamma_range[0] <= self.gamma_range[1]:
            raise ValueError(f"gamma_range must be 0 < low <= high, got {self.gamma_range}")
        if self.elastic_spacing < 2:
            raise ValueError(f"elastic_spacing must be at least 2 pixels, got {self.elastic_spacing}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (the sample passes through unchanged)."""
        return cls(flip=False, rot90=False)

    @classmethod
    def light(cls) -> AugmentConfig:
        """Flips, 90-degree rotations, mild intensity changes, small elastic."""
        return cls(
            flip=True,
            rot90=True,
            intensity_scale=0.1,
            intensity_shift=0.1,
            elastic_prob=0.25,
            elastic_alpha=2.0,
            elastic_spacing=32.0,
        )

    @classmethod
    def heavy(cls) -> AugmentConfig:
        """Everything in :meth:`light`, stronger, plus gamma, blur, noise,
        contrast inversion, rotation by any angle and scaling."""
        return cls(
            flip=True,
            rot90=True,
            rotate_prob=0.5,
            max_rotation_degrees=180.0,
            scale_prob=0.5,
            scale_range=(0.7, 1.4),
            elastic_prob=0.5,
            elastic_alpha=4.0,
            elastic_spacing=24.0,
            intensity_scale=0.25,
            intensity_shift=0.15,
            gamma_prob=0.3,
            gamma_range=(0.6, 1.7),
            blur_prob=0.2,
            blur_sigma=(0.4, 1.5),
            noise_prob=0.3,
            noise_std=0.08,
            invert_prob=0.15,
        )


def _bspline_matrix(n: int, controls: int) -> np.ndarray:
    """(n, controls) weights of cubic B-spline basis functions evaluated at n
    evenly spaced points (the first and last control points are margins)."""
    u = 1.0 + np.arange(n, dtype=np.float64) * (controls - 3) / max(n - 1, 1)
    t = np.abs(u[:, None] - np.arange(controls, dtype=np.float64)[None, :])
    return np.where(t < 1, 2.0 / 3.0 - t**2 + t**3 / 2.0, np.where(t < 2, (2.0 - t) ** 3 / 6.0, 0.0))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], alpha: float, spacing: float) -> np.ndarray:
    """(2, H, W) displacement field: random control points every ``spacing``
    pixels blended by cubic B-splines (two small products per axis)."""
    h, w = shape
    gh = int(math.ceil((h - 1) / spacing)) + 3
    gw = int(math.ceil((w - 1) / spacing)) + 3
    wy = _bspline_matrix(h, gh)
    wx = _bspline_matrix(w, gw)
    # B-spline blending shrinks the std by about 0.6; compensate so alpha is the std
    coarse = rng.normal(0.0, alpha / 0.6, size=(2, gh, gw))
    # einsum without BLAS: tiny products, and multi-threaded BLAS stalls on a busy CPU
    return np.stack(
        [np.einsum("ik,lk->il", np.einsum("ij,jk->ik", wy, coarse[axis]), wx) for axis in range(2)]
    ).astype(np.float32)


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Indices mirrored into 0..n-1 (edge pixel repeated, like SciPy's 'reflect')."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * n
    index = np.mod(index, period)
    return np.where(index >= n, period - 1 - index, index)


def _warp_nearest(array: np.ndarray, coords: np.ndarray, cval: float | None) -> np.ndarray:
    """Nearest-neighbour resampling of (H,W) ``array`` at ``coords``; outside
    the field: mirror (``cval is None``) or the constant ``cval``."""
    h, w = array.shape
    iy = np.floor(coords[0] + 0.5).astype(np.intp)
    ix = np.floor(coords[1] + 0.5).astype(np.intp)
    out = array[_reflect(iy, h), _reflect(ix, w)]
    if cval is not None:
        outside = (iy < 0) | (iy >= h) | (ix < 0) | (ix >= w)
        out[outside] = cval
    return out


def _warp_linear(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Bilinear resampling of (C,H,W) ``image`` at ``coords``, mirrored at edges."""
    c, h, w = image.shape
    y0f = np.floor(coords[0])
    x0f = np.floor(coords[1])
    fy = (coords[0] - y0f).astype(np.float32)
    fx = (coords[1] - x0f).astype(np.float32)
    y0 = y0f.astype(np.intp)
    x0 = x0f.astype(np.intp)
    rows_a, rows_b = _reflect(y0, h) * w, _reflect(y0 + 1, h) * w
    xa, xb = _reflect(x0, w), _reflect(x0 + 1, w)
    flat = image.reshape(c, h * w)
    out = np.empty((c, *coords.shape[1:]), dtype=np.float32)
    for channel in range(c):
        values = flat[channel]
        top = values.take(rows_a + xa)
        top += (values.take(rows_a + xb) - top) * fx
        bottom = values.take(rows_b + xa)
        bottom += (values.take(rows_b + xb) - bottom) * fx
        top += (bottom - top) * fy
        out[channel] = top
    return out


def _geometry(
    rng: np.random.Generator, shape: tuple[int, int], config: AugmentConfig
) -> np.ndarray | None:
    """Sampling coordinates (2, H, W) of a random rotation/scale/elastic warp, or
    ``None`` when none of them was drawn."""
    angle = 0.0
    scale = 1.0
    if config.rotate_prob and rng.random() < config.rotate_prob:
        angle = math.radians(rng.uniform(-config.max_rotation_degrees, config.max_rotation_degrees))
    if config.scale_prob and rng.random() < config.scale_prob:
        lo, hi = config.scale_range
        scale = math.exp(rng.uniform(math.log(lo), math.log(hi)))  # log-uniform: zoom in/out alike
    elastic = bool(config.elastic_prob) and rng.random() < config.elastic_prob
    if angle == 0.0 and scale == 1.0 and not elastic:
        return None
    h, w = shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy = (np.arange(h, dtype=np.float32) - cy)[:, None]
    xx = (np.arange(w, dtype=np.float32) - cx)[None, :]
    cos, sin = np.float32(math.cos(angle) / scale), np.float32(math.sin(angle) / scale)
    coords = np.empty((2, h, w), dtype=np.float32)
    coords[0] = cos * yy - sin * xx + np.float32(cy)
    coords[1] = sin * yy + cos * xx + np.float32(cx)
    if elastic:
        coords += _smooth_field(rng, shape, config.elastic_alpha, config.elastic_spacing)
    return coords


def augment_sample(
    image: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomly transform one training sample.

    Args:
        image: (C, H, W) float32, normalised.
        labels: (H, W) integer class ids.
        mask: (H, W) float32 trust weights (0 = untrusted).
        rng: source of every random choice (same state, same result).
        config: transforms to draw from; :meth:`AugmentConfig.light` if ``None``.

    Returns:
        ``(image, labels, mask)`` with the input shapes and dtypes, as new
        contiguous arrays.
    """
    config = config or AugmentConfig.light()
    if image.ndim != 3 or labels.shape != image.shape[1:] or mask.shape != image.shape[1:]:
        raise ValueError(
            f"expected image (C,H,W) with labels and mask (H,W); got {image.shape}, {labels.shape}, {mask.shape}"
        )
    label_dtype = labels.dtype
    if config.flip:
        if rng.random() < 0.5:
            image, labels, mask = image[:, ::-1], labels[::-1], mask[::-1]
        if rng.random() < 0.5:
            image, labels, mask = image[:, :, ::-1], labels[:, ::-1], mask[:, ::-1]
    if config.rot90:
        k = int(rng.integers(4))
        if k:
            image = np.rot90(image, k, axes=(1, 2))
            labels = np.rot90(labels, k)
            mask = np.rot90(mask, k)

    coords = _geometry(rng, labels.shape, config)
    if coords is None:
        image = np.array(image, dtype=np.float32, order="C")
        labels = np.ascontiguousarray(labels)
        mask = np.array(mask, dtype=np.float32, order="C")
    else:
        image = _warp_linear(np.asarray(image, dtype=np.float32), coords)
        labels = _warp_nearest(labels, coords, cval=None)
        # what comes from outside the field was never seen by the user: untrusted
        mask = _warp_nearest(np.asarray(mask, dtype=np.float32), coords, cval=0.0)

    image = _intensity(image, rng, config)
    return image, labels.astype(label_dtype, copy=False), mask.astype(np.float32, copy=False)


def _intensity(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Intensity transforms, in place on a float32 (C,H,W) array we own."""
    if config.invert_prob and rng.random() < config.invert_prob:
        np.subtract(1.0, image, out=image)
    if config.gamma_prob and rng.random() < config.gamma_prob:
        gamma = math.exp(rng.uniform(math.log(config.gamma_range[0]), math.log(config.gamma_range[1])))
        for c in range(image.shape[0]):
            lo, hi = float(image[c].min()), float(image[c].max())
            if hi - lo > 1e-6:
                scaled = (image[c] - lo) / (hi - lo)
                image[c] = lo + (hi - lo) * np.power(scaled, gamma)
    if config.blur_prob and rng.random() < config.blur_prob:
        sigma = rng.uniform(*config.blur_sigma)
        for c in range(image.shape[0]):
            image[c] = ndimage.gaussian_filter(image[c], sigma, mode="reflect")
    if config.intensity_scale or config.intensity_shift:
        factor = 1.0 + rng.uniform(-config.intensity_scale, config.intensity_scale)
        shift = rng.uniform(-config.intensity_shift, config.intensity_shift)
        image *= np.float32(factor)
        image += np.float32(shift)
    if config.noise_prob and rng.random() < config.noise_prob:
        std = rng.uniform(0.0, config.noise_std)
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(std)
    return image
