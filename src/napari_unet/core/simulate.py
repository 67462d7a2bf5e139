"""A scan simulator: synthetic training pairs for the bundled U-Net.

Every call returns an image and a label map with the product's classes
(0 background, 1 tumor, 2 nerve/vessel). The images imitate what users open:

``"mri"``
    Head-like slices: an irregular skull/scalp ring, grey/white-matter-like
    tissue classes with T1- or T2-like contrast, dark ventricles, a smooth
    multiplicative bias field and Rician noise. Arbitrary units (0..~1000).
``"ct"``
    Body-like slices in Hounsfield-like units: air outside, a fat layer,
    muscle and organ blobs, bowel gas, a spine and ribs, Gaussian noise.
``"fundus"``
    Retina-photo-like crops: an orange disc on black, vignetting, a bright
    optic disc, a darker macula, a dark vessel tree growing from the optic
    disc; RGB ``(H, W, 3)`` or grey (green channel or luminance).
``"em"``
    EM / microscopy-like textures: multi-scale granular noise, vesicles,
    fluorescence-like dark backgrounds with bright structures, and (when
    ``real_backgrounds``) crops of scikit-image's bundled CC0 textures
    (``grass``, ``gravel``, ``brick``, ``cell``, ``camera``; all CC0, see the
    model card). The retina photo is *never* used: it is the evaluation image.

On top of any modality:

* tumors (label 1): compact irregular lesions, brighter or darker than their
  surroundings, heterogeneous inside (texture, necrotic core, enhancing rim),
  sharp or diffuse edges, 2 % (at least 3 px) to a third of the field across, none to
  several per image;
* nerves/vessels (label 2): branching random-walk trees, 1 to 12 px wide,
  tapering, crossing, brighter or darker than the background (always darker
  in fundus photos), with anti-aliased or soft (Gaussian) profiles;
* augmentation: elastic deformation, rotation, scaling, flips, gamma, blur,
  noise, contrast inversion (labels follow every geometric transform).

Everything is drawn from one ``numpy.random.Generator``, so the same seed
gives the same pair on every machine with the same NumPy/SciPy. A 256x256
pair takes about 30-60 ms of one CPU core.

API::

    image, labels = simulate_scan(seed, size=(256, 256), modality=None)
    volume, labels3d = simulate_volume(seed, shape=(16, 128, 128), modality="mri")

``modality=None`` picks one at random (see :data:`MODALITY_WEIGHTS`).

Styles the bundled model ``unet-sim-v1`` handles poorly (measured in
``docs/model-card.md`` and ``benchmarks/bench_hitl.py``; use them to show what
fine-tuning buys)::

    # thick vessels on a real texture (a consistent "stack" style): mean Dice 0.27
    SimulatorConfig(em_background="gravel", nerve_width=(6.0, 12.0), nerve_sign=1, tumor_sign=-1)
    # small lesions (3-10 px across): tumor Dice 0.01
    SimulatorConfig(tumor_probability=1.0, nerve_probability=0.0,
                    tumor_diameter=(0.012, 0.04))

Changing a default here changes what ``scripts/train_bundled.py`` reproduces.
The bundled ``unet-sim-v1`` was trained before ``visibility`` existed (the
simulator of commit ``f1bc8a3``); see the model card.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Modalities the simulator draws, with the probability ``modality=None`` picks each.
MODALITY_WEIGHTS: dict[str, float] = {"mri": 0.3, "ct": 0.2, "fundus": 0.3, "em": 0.2}
MODALITIES = tuple(MODALITY_WEIGHTS)

#: scikit-image sample images used as real backgrounds for ``"em"``: all are
#: distributed with scikit-image under CC0 (see ``skimage.data.<name>.__doc__``).
REAL_BACKGROUNDS = ("grass", "gravel", "brick", "cell", "camera")

TUMOR, NERVE = 1, 2

#: Rec. 601 luma weights: RGB photos to grey, as the model's input does.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class SimulatorConfig:
    """What the simulator draws; every range is ``(low, high)``, sampled uniformly.

    ``tumor_probability``/``nerve_probability`` are the chances an image has
    any lesion / any vessel tree; ``max_tumors`` bounds lesions per image.
    ``tumor_diameter`` is a fraction of the shorter image side;
    ``nerve_width`` in pixels (1 to 12). ``tumor_contrast`` and ``contrast``
    scale how far lesions and vessels stand out from their surroundings
    (1.0 = a typical tissue difference). ``visibility`` is a floor on that
    contrast in units of the background's *local* standard deviation around
    the structure (texture and anatomy, within ~6 px): a vessel on a busy
    texture is drawn stronger, so no label marks a structure nobody could see
    (``(0, 0)`` switches the floor off). ``tumor_texture`` is the range of a
    lesion's interior texture (a fraction of its contrast); a share
    ``homogeneous_tumors`` of lesions is drawn as a solid mass instead: it
    replaces the tissue it grows in by one near-uniform level (texture
    0-0.05), where the others add their contrast to the anatomy underneath.
    Real masses are often as smooth as the organs around them, and a
    simulator whose every lesion is mottled teaches that a smooth blob is
    anatomy (0.9.3: the bundled v3, trained without them, scored tumour Dice
    0.14 / 0.06 on simulated CT / MRI solid masses against 0.45 / 0.56 on
    mottled lesions).
    ``augment`` switches the geometric and intensity
    augmentation; ``real_backgrounds`` allows scikit-image's CC0 textures.

    A fixed *style* (many images from one microscope or scanner, as in a
    user's stack): ``em_background`` fixes the EM background to
    ``"granular"``, ``"fluorescence"`` or one of :data:`REAL_BACKGROUNDS`;
    ``tumor_sign`` / ``nerve_sign`` fix lesions / vessels to brighter (+1) or
    darker (-1) than their surroundings (fundus vessels stay dark whatever
    ``nerve_sign`` says). ``None`` draws them per image. The
    random draws are the same either way, so fixing one does not change the
    rest of a seeded scan.
    """

    def __post_init__(self) -> None:
        allowed = (None, "granular", "fluorescence", *REAL_BACKGROUNDS)
        if self.em_background not in allowed:
            raise ValueError(f"em_background must be one of {allowed}, got {self.em_background!r}")
        for name in ("tumor_sign", "nerve_sign"):
            if getattr(self, name) not in (None, 1, -1, 1.0, -1.0):
                raise ValueError(f"{name} must be +1, -1 or None, got {getattr(self, name)!r}")

    tumor_probability: float = 0.9
    max_tumors: int = 3
    tumor_diameter: tuple[float, float] = (0.02, 0.34)
    tumor_contrast: tuple[float, float] = (0.5, 1.2)
    tumor_texture: tuple[float, float] = (0.15, 0.45)
    homogeneous_tumors: float = 0.4
    nerve_probability: float = 0.8
    nerve_width: tuple[float, float] = (1.0, 12.0)
    contrast: tuple[float, float] = (0.35, 1.0)
    visibility: tuple[float, float] = (1.5, 3.0)
    augment: bool = True
    real_backgrounds: bool = True
    em_background: str | None = None
    tumor_sign: float | None = None
    nerve_sign: float | None = None


def _rng(rng_or_seed: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


# ----------------------------------------------------------------- primitives
@functools.lru_cache(maxsize=256)
def _radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None] * h
    fx = np.fft.rfftfreq(w)[None, :] * w
    return np.sqrt(fy * fy + fx * fx).astype(np.float32)


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float = 3.0, cutoff: float = 2.0) -> np.ndarray:
    """Gaussian random field with a 1/f**beta power spectrum, zero mean, unit std.

    Larger ``beta`` is smoother; ``cutoff`` (cycles per image) removes the
    lowest frequencies' dominance. Computed with one inverse FFT.
    """
    radial = _radial_frequency(tuple(shape))
    amp = (radial + cutoff) ** (-beta / 2.0)
    noise = rng.standard_normal((2, *amp.shape), dtype=np.float32)
    spectrum = (noise[0] + 1j * noise[1]) * amp
    field = np.fft.irfft2(spectrum, s=shape)
    field -= field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return yy.astype(np.float32), xx.astype(np.float32)


def _blob_mask(
    rng: np.random.Generator, shape: tuple[int, int], center: tuple[float, float], radius: float,
    irregularity: float, elongation: float = 1.0, angle: float = 0.0,
) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray]:
    """An irregular star-shaped blob: returns (mask, box, normalised radius map) in a bounding box."""
    cy, cx = center
    reach = radius * max(elongation, 1.0) * (1.0 + 1.6 * irregularity) + 3
    # clamped both ways: a blob centred far outside the field gets an empty box
    # (an unclamped negative end would slice nearly the whole image)
    y0, y1 = min(max(0, int(cy - reach)), shape[0]), max(0, min(shape[0], int(cy + reach) + 1))
    x0, x1 = min(max(0, int(cx - reach)), shape[1]), max(0, min(shape[1], int(cx + reach) + 1))
    box = (slice(y0, y1), slice(x0, x1))
    if y1 <= y0 or x1 <= x0:
        return np.zeros((0, 0), bool), box, np.zeros((0, 0), np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    ca, sa = math.cos(angle), math.sin(angle)
    u = (dx * ca + dy * sa) / elongation
    v = -dx * sa + dy * ca
    theta = np.arctan2(v, u)
    r = np.sqrt(u * u + v * v)
    boundary = np.ones_like(theta)
    for k in range(2, 7):
        boundary += irregularity * rng.normal(0, 0.35 / k**0.7) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rho = r / (radius * np.maximum(boundary, 0.3))
    if irregularity > 0 and min(rho.shape) > 4:
        rough = fractal_noise(rng, rho.shape, beta=2.5, cutoff=1.0)
        rho = rho + 0.08 * irregularity * rough
    return rho <= 1.0, box, rho.astype(np.float32)


# --------------------------------------------------------------- vessel trees
def _walk(
    rng: np.random.Generator, start: tuple[float, float], angle: float, radius: float,
    length: int, curvature: float, taper: float, drift: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = max(2, int(length))
    turns = rng.normal(drift, curvature, n)
    turns = ndimage.uniform_filter1d(turns, size=7, mode="nearest")
    angles = angle + np.cumsum(turns)
    step = 0.7
    ys = start[0] + np.cumsum(np.sin(angles)) * step
    xs = start[1] + np.cumsum(np.cos(angles)) * step
    radii = radius * np.linspace(1.0, taper, n)
    return ys, xs, radii, angles


def vessel_tree(
    rng: np.random.Generator, shape: tuple[int, int], roots: list[tuple[float, float, float]],
    width: tuple[float, float], max_points: int = 30000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-line points (ys, xs, radii) of branching, tapering random walks.

    ``roots`` holds ``(y, x, angle)`` for each trunk; trunk widths are drawn from
    ``width`` (pixels) and children are thinner than their parent.
    """
    h, w = shape
    diag = math.hypot(h, w)
    stack = [(y, x, a, rng.uniform(*width) / 2.0, rng.uniform(0.5, 1.1) * diag, 0) for y, x, a in roots]
    out_y, out_x, out_r = [], [], []
    total = 0
    while stack and total < max_points:
        y, x, a, r, length, depth = stack.pop()
        r = max(r, 0.5)
        curvature = rng.uniform(0.01, 0.06)
        drift = rng.normal(0, 0.004)
        taper = rng.uniform(0.45, 0.9) if r > 0.8 else 1.0
        ys, xs, radii, angles = _walk(rng, (y, x), a, r, int(length / 0.7), curvature, taper, drift)
        inside = (ys > -2 * r - 2) & (ys < h + 2 * r + 1) & (xs > -2 * r - 2) & (xs < w + 2 * r + 1)
        stop = int(np.argmin(inside)) if not inside.all() else len(ys)
        if stop < 2:
            continue
        ys, xs, radii, angles = ys[:stop], xs[:stop], radii[:stop], angles[:stop]
        out_y.append(ys)
        out_x.append(xs)
        out_r.append(radii)
        total += stop
        if depth >= 5:
            continue
        branches = rng.poisson(stop * 0.7 / 55.0)
        for _ in range(branches):
            i = int(rng.uniform(0.1, 0.95) * stop)
            child_r = radii[i] * rng.uniform(0.45, 0.85)
            if child_r < 0.5 and rng.random() < 0.5:
                continue
            side = rng.choice((-1.0, 1.0))
            child_a = angles[i] + side * rng.uniform(0.35, 1.3)
            child_len = (stop - i) * 0.7 * rng.uniform(0.3, 1.0) + rng.uniform(10, 40)
            stack.append((ys[i], xs[i], child_a, child_r, child_len, depth + 1))
    if not out_y:
        empty = np.zeros(0, np.float32)
        return empty, empty, empty
    return np.concatenate(out_y), np.concatenate(out_x), np.concatenate(out_r)


def rasterize_vessels(
    shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, radii: np.ndarray, soft: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(profile in [0, 1], mask) of tubes around centre-line points.

    The mask is every pixel within the local radius of its nearest centre-line
    pixel (at least the centre line itself, so 1 px vessels are 1 px wide).
    """
    h, w = shape
    iy = np.round(ys).astype(np.int64)
    ix = np.round(xs).astype(np.int64)
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    radius_map = np.zeros(shape, np.float32)
    if not ok.any():
        return np.zeros(shape, np.float32), np.zeros(shape, bool)
    # where trees overlap keep the widest radius at a pixel
    np.maximum.at(radius_map, (iy[ok], ix[ok]), radii[ok].astype(np.float32))
    centre = radius_map > 0
    dist, (ny, nx) = ndimage.distance_transform_edt(~centre, return_indices=True)
    local_r = radius_map[ny, nx]
    mask = dist <= local_r
    if soft:
        sigma = np.maximum(local_r, 0.6)
        profile = np.exp(-0.693 * (dist / sigma) ** 2)
    else:
        profile = np.clip(local_r + 0.5 - dist, 0.0, 1.0)
    profile[dist > local_r + 3 * np.maximum(local_r, 1)] = 0
    return profile.astype(np.float32), mask


# ------------------------------------------------------------------ anatomy
def _irregular_ellipse(rng: np.random.Generator, shape: tuple[int, int], center, axes, wobble: float) -> np.ndarray:
    """Signed 'radius fraction' map of a wobbly ellipse (1.0 on the boundary)."""
    yy, xx = _grid(shape)
    dy, dx = (yy - center[0]) / axes[0], (xx - center[1]) / axes[1]
    theta = np.arctan2(dy, dx)
    boundary = np.ones_like(theta)
    for k in range(2, 6):
        boundary += wobble * rng.normal(0, 0.5 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.sqrt(dy * dy + dx * dx) / boundary


def _mri_body_background(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A breast/body-like MRI slice: bright fat (T1) around darker fibroglandular
    tissue, a dark muscle wall along one side, air outside."""
    h, w = shape
    s = min(h, w)
    zoom = rng.uniform(0.7, 2.0)
    center = (h / 2 + rng.normal(0, 0.1) * s, w / 2 + rng.normal(0, 0.1) * s)
    axes = (0.4 * s * zoom * rng.uniform(0.7, 1.2), 0.45 * s * zoom * rng.uniform(0.7, 1.2))
    rho = _irregular_ellipse(rng, shape, center, axes, wobble=0.35)
    body = rho <= 1.0
    fat, gland, muscle = rng.uniform(0.75, 0.95), rng.uniform(0.3, 0.5), rng.uniform(0.2, 0.35)
    if rng.random() < 0.3:  # fat-suppressed: fat dark, glands brighter
        fat, gland = rng.uniform(0.15, 0.3), rng.uniform(0.45, 0.6)
    tissue = ndimage.gaussian_filter(fractal_noise(rng, shape, beta=rng.uniform(2.2, 3.0), cutoff=3.0), 1.0)
    image = np.where(tissue > rng.uniform(-0.2, 0.8), gland, fat).astype(np.float32)
    image = ndimage.gaussian_filter(image, rng.uniform(0.6, 1.5))
    yy, xx = _grid(shape)
    t = rng.uniform(0, 2 * np.pi)
    wall = ((yy - center[0]) * math.sin(t) + (xx - center[1]) * math.cos(t)) > rng.uniform(0.3, 0.8) * min(axes)
    image[wall & body] = muscle
    image[~body] = 0.0
    return image, body


def _mri_background(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    s = min(h, w)
    if rng.random() < 0.35:
        return _mri_body_background(rng, shape)
    zoom = rng.uniform(0.6, 2.2)  # >1: a crop inside the head
    center = (h / 2 + rng.normal(0, 0.08) * s, w / 2 + rng.normal(0, 0.08) * s)
    axes = (0.42 * s * zoom * rng.uniform(0.85, 1.15), 0.36 * s * zoom * rng.uniform(0.85, 1.15))
    rho = _irregular_ellipse(rng, shape, center, axes, wobble=0.3)
    t2 = rng.random() < 0.4
    csf, gm, wm = (0.95, 0.6, 0.45) if t2 else (0.2, 0.55, 0.78)
    fat, bone = (0.7, 0.08) if t2 else (0.95, 0.06)
    tissue = fractal_noise(rng, shape, beta=rng.uniform(2.6, 3.4), cutoff=2.0)
    image = np.where(tissue > rng.uniform(-0.3, 0.4), wm, gm).astype(np.float32)
    image = ndimage.gaussian_filter(image, rng.uniform(0.7, 2.0))
    sulci = np.abs(fractal_noise(rng, shape, beta=2.4, cutoff=4.0)) < rng.uniform(0.05, 0.15)
    image[sulci & (rho > 0.3)] = csf * 0.8 + image[sulci & (rho > 0.3)] * 0.2
    # ventricles: dark (T1) or bright (T2) paired blobs near the centre
    if rng.random() < 0.8:
        for side in (-1, 1):
            vent, box, _ = _blob_mask(
                rng, shape, (center[0] + rng.normal(0, 0.03) * s * zoom, center[1] + side * 0.06 * s * zoom),
                0.035 * s * zoom, 0.4, elongation=rng.uniform(2.0, 3.5), angle=rng.uniform(1.2, 1.9))
            image[box][vent] = csf
    image[(rho > 0.86) & (rho <= 0.93)] = csf * 0.5 + 0.1
    # skull and scalp of varying thickness around the head (thick over the
    # forehead and the occiput, thin at the temples): bright fat and galea
    # bands that are anatomy, not lesions; dark cortical bone, brighter marrow
    yy, xx = _grid(shape)
    theta = np.arctan2(yy - center[0], xx - center[1])
    thick = 1.0 + 0.5 * np.cos(2 * theta + rng.uniform(0, np.pi)) * rng.uniform(0.3, 1.0)
    skull_out = 0.93 + rng.uniform(0.03, 0.07) * thick
    outer = skull_out + rng.uniform(0.04, 0.14) * thick
    skull = (rho > 0.93) & (rho <= skull_out)
    image[skull] = bone
    if rng.random() < 0.6:  # diploe: marrow between the two tables of the skull
        mid = (rho > 0.93 + 0.3 * (skull_out - 0.93)) & (rho <= 0.93 + 0.7 * (skull_out - 0.93))
        image[mid] = fat * rng.uniform(0.4, 0.8)
    scalp = (rho > skull_out) & (rho <= outer)
    bands = ndimage.gaussian_filter(fractal_noise(rng, shape, beta=2.5, cutoff=4.0), 1.0)
    image[scalp] = fat * (1.0 - rng.uniform(0.1, 0.5) * (bands[scalp] > rng.uniform(-0.3, 0.5)))
    body = rho <= outer
    if rng.random() < 0.25:  # orbits: bright retro-orbital fat around a dark globe, in front
        t0 = rng.uniform(0, 2 * np.pi)
        for side in (-1, 1):
            t = t0 + side * 0.35
            c = (center[0] + 0.8 * axes[0] * math.sin(t), center[1] + 0.8 * axes[1] * math.cos(t))
            orbit, box, orho = _blob_mask(rng, shape, c, 0.09 * s * zoom, 0.3, 1.3, t)
            fat_level, globe_level = fat * rng.uniform(0.8, 1.0), csf * rng.uniform(0.6, 1.0)
            if not orbit.size:  # centred outside the field
                continue
            image[box][orbit] = fat_level
            image[box][orho < 0.55] = globe_level
            body[box] |= orbit
    image[~body] = 0.0
    return image, body


def _organ(rng: np.random.Generator, shape: tuple[int, int], center, radius: float, irregularity: float = 0.35,
           elongation: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """A full-size mask of one irregular blob (an organ, a lung, a vertebra)."""
    mask, box, _ = _blob_mask(rng, shape, center, radius, irregularity, elongation, angle)
    full = np.zeros(shape, bool)
    if mask.size:
        full[box] = mask
    return full


#: CT tissues in Hounsfield units (``(low, high)`` drawn per scan): published
#: typical values (unenhanced to portal-venous phase).
CT_HU = {
    "air": (-1000.0, -990.0), "lung": (-900.0, -800.0), "fat": (-120.0, -80.0), "muscle": (35.0, 60.0),
    "liver": (50.0, 130.0), "spleen": (40.0, 120.0), "kidney": (30.0, 180.0), "blood": (35.0, 220.0),
    "bowel": (0.0, 40.0), "marrow": (150.0, 350.0), "cortex": (600.0, 1200.0),
}


def _ct_background(
    rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A chest or abdomen slice in HU.

    Returns ``(image, body, lesion_unit, lung)``: ``lesion_unit`` is the
    contrast unit (HU) of a lesion at each pixel (0 where lesions do not
    grow: air, fat, bone) and ``lung`` marks the aerated lung, where a
    nodule is soft tissue, ~850 HU above its surroundings.
    """
    h, w = shape
    s = min(h, w)
    hu = {k: rng.uniform(*v) for k, v in CT_HU.items()}
    zoom = rng.uniform(0.6, 2.2)
    center = (h / 2 + rng.normal(0, 0.06) * s, w / 2 + rng.normal(0, 0.06) * s)
    ay, ax = 0.33 * s * zoom * rng.uniform(0.85, 1.1), 0.45 * s * zoom * rng.uniform(0.85, 1.1)
    rho = _irregular_ellipse(rng, shape, center, (ay, ax), wobble=0.2)
    body = rho <= 1.0
    image = np.full(shape, hu["air"], np.float32)
    image[body] = hu["fat"]
    inner = rho <= rng.uniform(0.8, 0.93)
    muscle_wall = inner & (rho > rng.uniform(0.68, 0.78))
    image[inner] = hu["fat"] + 20.0  # visceral fat
    image[muscle_wall] = hu["muscle"]
    unit = np.zeros(shape, np.float32)
    unit[muscle_wall] = 65.0
    lung = np.zeros(shape, bool)
    cy, cx = center
    spine_c = (cy + 0.55 * ay, cx + rng.normal(0, 0.02) * ax)
    if rng.random() < 0.5:  # chest: two lungs, the heart and great vessels between them
        for side in (-1, 1):
            c = (cy - 0.05 * ay + rng.normal(0, 0.04) * ay, cx + side * 0.38 * ax)
            lung |= _organ(rng, shape, c, 0.5 * ay * rng.uniform(0.8, 1.15), 0.3,
                           elongation=rng.uniform(0.55, 0.8), angle=np.pi / 2 + rng.normal(0, 0.2))
        lung &= inner & ~muscle_wall
        heart = _organ(rng, shape, (cy + 0.05 * ay, cx + rng.normal(0.08, 0.05) * ax),
                       0.3 * ay * rng.uniform(0.8, 1.2), 0.25, 1.3, rng.uniform(0, np.pi)) & inner
        lung &= ~heart
        image[heart] = hu["blood"] * rng.uniform(0.8, 1.0)
        unit[heart] = 65.0
        aorta = _organ(rng, shape, (spine_c[0] - 0.22 * ay, spine_c[1] + 0.12 * ax), 0.08 * ay, 0.05)
        image[aorta] = hu["blood"]
        texture = fractal_noise(rng, shape, beta=2.2, cutoff=4.0)
        image[lung] = hu["lung"] + 25.0 * texture[lung]
        unit[lung] = 850.0
    else:  # abdomen: liver, spleen, kidneys, bowel
        side = rng.choice((-1.0, 1.0))
        organs = [
            ("liver", (cy - 0.1 * ay, cx + side * 0.35 * ax), 0.55 * ay, 1.4),
            ("spleen", (cy + 0.05 * ay, cx - side * 0.55 * ax), 0.25 * ay, 1.3),
            ("kidney", (spine_c[0] - 0.05 * ay, cx - 0.3 * ax), 0.18 * ay, 1.5),
            ("kidney", (spine_c[0] - 0.05 * ay, cx + 0.3 * ax), 0.18 * ay, 1.5),
        ]
        for _ in range(int(rng.integers(3, 9))):
            organs.append(("bowel", (cy + rng.normal(0, 0.3) * ay, cx + rng.normal(0, 0.3) * ax),
                           rng.uniform(0.06, 0.14) * ay, 1.2))
        for name, c, r, elong in organs:
            if rng.random() < 0.15:
                continue  # not every organ is in every slice
            m = _organ(rng, shape, c, r * rng.uniform(0.7, 1.2), 0.35, elong * rng.uniform(0.8, 1.2),
                       rng.uniform(0, np.pi)) & inner & ~muscle_wall
            image[m] = hu[name] + rng.normal(0, 5)
            unit[m] = 65.0
            if name == "bowel" and rng.random() < 0.4:
                gas = m & (fractal_noise(rng, shape, beta=3.0, cutoff=2.0) > 0.5)
                image[gas] = hu["air"] + 100.0
                unit[gas] = 0.0
    # muscle groups: the wall split by fat planes, thick back (paraspinal)
    # muscles behind the spine, psoas beside it in the abdomen, pectoral
    # muscles in front of the chest; all soft tissue in fat, none a lesion
    yy, xx = _grid(shape)
    theta = np.arctan2((yy - cy) / ay, (xx - cx) / ax)
    for _ in range(int(rng.integers(0, 6))):
        t, width = rng.uniform(-np.pi, np.pi), rng.uniform(0.01, 0.05)
        off = np.abs((theta - t + np.pi) % (2 * np.pi) - np.pi)  # angle to the plane, wrapped to [0, pi]
        plane = muscle_wall & (off < width)
        image[plane] = hu["fat"] + 10.0
    groups = [(spine_c[0] + 0.1 * ay, spine_c[1] + side * 0.17 * ax, 0.14 * ay, 1.6, 0.0) for side in (-1, 1)]
    if lung.any():
        groups += [(cy - 0.78 * ay, cx + side * 0.35 * ax, 0.1 * ay, 2.5, side * 0.3) for side in (-1, 1)]
    else:
        groups += [(spine_c[0] - 0.15 * ay, spine_c[1] + side * 0.2 * ax, 0.08 * ay, 1.3, 0.0) for side in (-1, 1)]
    for gy, gx, r, elong, angle in groups:
        if rng.random() < 0.25:
            continue
        m = _organ(rng, shape, (gy, gx), r * rng.uniform(0.7, 1.3), 0.3, elong * rng.uniform(0.8, 1.2),
                   angle + rng.normal(0, 0.15)) & body & ~lung
        image[m] = hu["muscle"] + rng.normal(0, 4)
        unit[m] = 65.0
    # spine and ribs
    vert = _organ(rng, shape, spine_c, 0.12 * ay, 0.15)
    cortex = vert & ~ndimage.binary_erosion(vert, iterations=max(1, int(0.015 * s * zoom)))
    image[vert] = hu["marrow"]
    image[cortex] = hu["cortex"]
    unit[vert] = 0.0
    for _ in range(int(rng.integers(4, 12))):
        t = rng.uniform(0, 2 * np.pi)
        c = (cy + 0.84 * ay * math.sin(t), cx + 0.84 * ax * math.cos(t))
        rib, box, _ = _blob_mask(rng, shape, c, rng.uniform(0.012, 0.025) * s * zoom, 0.2, 2.0, t + np.pi / 2)
        image[box][rib] = hu["cortex"] * 0.8
        unit[box][rib] = 0.0
    # parenchymal texture (a few HU) and the reconstruction's blur
    texture = ndimage.gaussian_filter(fractal_noise(rng, shape, beta=2.0, cutoff=8.0), 1.0)
    image += (inner & ~lung) * texture * rng.uniform(2.0, 8.0)
    image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.2))
    return image.astype(np.float32), body, unit, lung


def _em_background(
    rng: np.random.Generator, shape: tuple[int, int], real: bool, fixed: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    use_real = real and rng.random() < 0.35
    if fixed is not None:
        use_real = fixed in REAL_BACKGROUNDS
    if use_real:
        image = _real_crop(rng, shape, fixed)
    else:
        image = fractal_noise(rng, shape, beta=rng.uniform(1.2, 2.8), cutoff=rng.uniform(2, 20))
        image += 0.5 * fractal_noise(rng, shape, beta=3.5, cutoff=2.0)
        kind = rng.random()
        if fixed is not None:
            kind = 0.0 if fixed == "fluorescence" else 1.0
        if kind < 0.35:  # fluorescence: dark, mostly flat background
            image = 0.15 * np.clip(image, -3, 3) + 0.2
        else:
            image = 0.5 + 0.12 * image
        # vesicles / organelles: small rings and dots (not labelled)
        for _ in range(rng.poisson(3)):
            c = (rng.uniform(0, h), rng.uniform(0, w))
            blob, box, rr = _blob_mask(rng, shape, c, rng.uniform(2, 6), 0.3)
            shade = rng.uniform(-0.2, 0.2)
            region = image[box]
            region[blob] += shade * np.where(rr[blob] > 0.7, 1.5, 0.5)
    return image.astype(np.float32), np.ones(shape, bool)


@functools.cache
def _real_image(name: str) -> np.ndarray:
    from skimage import data
    from skimage.color import rgb2gray

    image = getattr(data, name)()
    if image.ndim == 3:
        image = rgb2gray(image[..., :3])
    image = image.astype(np.float32)
    return (image - image.min()) / max(float(image.max() - image.min()), 1e-6)


def _real_crop(rng: np.random.Generator, shape: tuple[int, int], name: str | None = None) -> np.ndarray:
    """A random crop of a CC0 scikit-image texture (``name`` or a random one), rescaled and rotated."""
    drawn = REAL_BACKGROUNDS[rng.integers(len(REAL_BACKGROUNDS))]
    source = _real_image(name or drawn)
    scale = rng.uniform(0.5, 1.5)
    h, w = shape
    hs, ws = source.shape
    need = (min(hs, int(h * scale) + 1), min(ws, int(w * scale) + 1))
    y0 = rng.integers(0, hs - need[0] + 1)
    x0 = rng.integers(0, ws - need[1] + 1)
    crop = source[y0 : y0 + need[0], x0 : x0 + need[1]]
    crop = ndimage.zoom(crop, (h / crop.shape[0], w / crop.shape[1]), order=1)[:h, :w]
    crop = np.rot90(crop, rng.integers(4)) if h == w else crop
    return np.ascontiguousarray(crop, dtype=np.float32)


def _fundus_background(
    rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[float, float], float]:
    """RGB fundus photo crop in [0, 1], the retina mask, the optic disc centre and the disc radius."""
    h, w = shape
    s = min(h, w)
    radius = s * rng.uniform(0.45, 3.0)  # >0.5: a crop inside the retina
    center = (h / 2 + rng.normal(0, 0.15) * s, w / 2 + rng.normal(0, 0.15) * s)
    yy, xx = _grid(shape)
    r = np.sqrt((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / radius
    retina = r <= 1.0
    base = np.array([rng.uniform(0.7, 0.95), rng.uniform(0.2, 0.5), rng.uniform(0.03, 0.2)], np.float32)
    choroid = fractal_noise(rng, shape, beta=2.2, cutoff=6.0) * rng.uniform(0.02, 0.07)
    shade = fractal_noise(rng, shape, beta=3.5, cutoff=1.0) * 0.06
    vignette = 1.0 - rng.uniform(0.2, 0.5) * np.clip(r, 0, 1) ** 2
    lum = (vignette + shade + choroid)[..., None]
    image = lum * base
    # optic disc: bright, yellow-white; macula: darker, about 2.5 disc diameters away
    disc_r = radius * rng.uniform(0.1, 0.16)
    angle = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(0.2, 0.45) * radius
    disc = (center[0] + offset * math.sin(angle), center[1] + offset * math.cos(angle))
    d = np.sqrt((yy - disc[0]) ** 2 + (xx - disc[1]) ** 2) / disc_r
    glow = np.exp(-(d**2) * 1.3)[..., None] * np.array([0.3, 0.45, 0.35], np.float32) * rng.uniform(0.6, 1.2)
    image = image + glow
    mac = (disc[0] - 5 * disc_r * math.sin(angle), disc[1] - 5 * disc_r * math.cos(angle))
    dm = np.sqrt((yy - mac[0]) ** 2 + (xx - mac[1]) ** 2) / (1.5 * disc_r)
    image = image * (1 - rng.uniform(0.1, 0.35) * np.exp(-(dm**2)))[..., None]
    edge = np.clip((1.0 - r) * radius / rng.uniform(1.0, 4.0), 0, 1)[..., None]
    image = image * edge
    return image.astype(np.float32), retina, disc, disc_r


# ---------------------------------------------------------------- visibility
def _luminance(image: np.ndarray) -> np.ndarray:
    return image @ LUMA if image.ndim == 3 else image


def _gain(image: np.ndarray, weights: np.ndarray | None) -> float:
    """How much a unit change painted with per-channel ``weights`` moves the luminance."""
    if image.ndim != 3:
        return 1.0
    weights = np.ones(3, np.float32) if weights is None else np.asarray(weights, np.float32)
    return abs(float(weights @ LUMA))


def _local_std(image: np.ndarray, box: tuple[slice, slice], sigma: float = 6.0) -> np.ndarray:
    """Standard deviation of the (luminance) background within ~``sigma`` px, in ``box``."""
    pad = int(3 * sigma)
    h, w = image.shape[:2]
    y0, y1 = max(0, box[0].start - pad), min(h, box[0].stop + pad)
    x0, x1 = max(0, box[1].start - pad), min(w, box[1].stop + pad)
    patch = _luminance(image[y0:y1, x0:x1]).astype(np.float32)
    mean = ndimage.gaussian_filter(patch, sigma)
    var = ndimage.gaussian_filter(patch * patch, sigma) - mean * mean
    std = np.sqrt(np.clip(var, 0, None))
    return std[box[0].start - y0 : box[0].stop - y0, box[1].start - x0 : box[1].stop - x0]


def _visible_amplitude(
    rng: np.random.Generator, image: np.ndarray, box: tuple[slice, slice], mask: np.ndarray,
    amplitude: float, config: SimulatorConfig, luminance_gain: float = 1.0,
) -> float:
    """``amplitude`` raised (sign kept) to at least ``visibility`` x the local
    background std on the structure's pixels. Always draws once from ``rng``."""
    floor = rng.uniform(*config.visibility)
    if floor <= 0 or not mask.any():
        return amplitude
    std = float(np.median(_local_std(image, box)[mask]))
    needed = floor * std / max(luminance_gain, 1e-6)
    return math.copysign(max(abs(amplitude), needed), amplitude if amplitude else 1.0)


# ------------------------------------------------------------------ lesions
def _add_tumors(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, region: np.ndarray,
    config: SimulatorConfig, scale: float, rgb_tint: np.ndarray | None = None,
    unit_map: np.ndarray | None = None, brighter: np.ndarray | None = None, style: str = "",
) -> None:
    """Paint lesions into ``image`` (H,W) or (H,W,3) in place; ``scale`` is the tissue contrast unit.

    ``unit_map`` (CT) replaces ``scale`` by the contrast unit at the lesion's
    centre, scaled by a further 0.25-1 (CT lesions are 10-80 HU off their
    organ); where ``brighter`` is set (aerated lung) a lesion is always
    brighter (a soft-tissue nodule). ``style="mri"`` draws more enhancing rims
    with necrotic cores and an unlabelled oedema halo around some lesions.
    """
    h, w = labels.shape
    s = min(h, w)
    count = 0 if rng.random() > config.tumor_probability else int(rng.integers(1, config.max_tumors + 1))
    candidates = np.flatnonzero(region.ravel())
    if count == 0 or candidates.size == 0:
        return
    for _ in range(count):
        idx = candidates[rng.integers(candidates.size)]
        c = (idx // w + rng.uniform(-0.5, 0.5), idx % w + rng.uniform(-0.5, 0.5))
        # log-uniform size: many small lesions, some large
        lo, hi = config.tumor_diameter
        diameter = max(3.0, math.exp(rng.uniform(math.log(lo), math.log(hi))) * s)
        if rng.random() < 0.3:  # the lesion a scan was taken for: often a sizeable part of the field
            diameter = max(diameter, rng.uniform(math.sqrt(lo * hi), hi) * s)
        mask, box, rho = _blob_mask(
            rng, (h, w), c, diameter / 2, rng.uniform(0.1, 0.9),
            elongation=rng.uniform(1.0, 1.8), angle=rng.uniform(0, np.pi))
        iy, ix = int(idx // w), int(idx % w)  # the region pixel it was seeded on
        if mask.size:  # a lesion grows in tissue, not in the air or bone beside it; in CT, in
            # the tissue of its seed (a soft-tissue lesion stops at the lung, a nodule at the wall)
            grows = region[box] if unit_map is None else unit_map[box] == unit_map[iy, ix]
            mask = mask & grows
        if not mask.any():
            continue
        # MRI: most tumour scans are T1 post-contrast, T2 or FLAIR, where lesions are bright
        sign = 1.0 if rng.random() < (0.75 if style == "mri" else 0.5) else -1.0
        sign = float(config.tumor_sign) if config.tumor_sign is not None else sign
        unit = scale
        if unit_map is not None:
            unit = float(unit_map[iy, ix]) * rng.uniform(0.25, 1.0)
            if brighter is not None and brighter[iy, ix]:
                sign, unit = 1.0, float(unit_map[iy, ix])
        contrast = sign * rng.uniform(*config.tumor_contrast) * unit
        contrast = _visible_amplitude(rng, image, box, mask, contrast, config, _gain(image, rgb_tint))
        # a solid mass replaces the tissue it grows in (one level, near-uniform,
        # as many real masses and nodules are); the others add to it, mottled
        solid = config.homogeneous_tumors > 0 and rng.random() < config.homogeneous_tumors
        inside = np.ones_like(rho)
        if min(rho.shape) > 4:  # interior texture
            tex = fractal_noise(rng, rho.shape, beta=rng.uniform(1.5, 3.0), cutoff=1.0)
            amplitude = rng.uniform(*config.tumor_texture)
            if solid:
                amplitude = rng.uniform(0.0, 0.05)
            inside = inside + amplitude * tex
        if not solid and diameter > 12 and rng.random() < (0.55 if style == "mri" else 0.25):  # necrotic core / rim
            core = rho < rng.uniform(0.3, 0.7)
            inside = np.where(core, inside * rng.uniform(-0.3, 0.5), inside * rng.uniform(1.0, 1.5))
        if style == "mri" and rng.random() < 0.4 and image.ndim == 2:
            # oedema: a diffuse unlabelled halo, darker on T1, brighter on T2 (opposite to enhancement)
            halo = (rho > 1.0) & (rho < rng.uniform(1.3, 1.9))
            fade = np.clip((rng.uniform(1.3, 1.9) - rho) / 0.6, 0, 1) * halo
            image[box] += (-0.35 * abs(contrast) * rng.uniform(0.3, 1.0) * fade).astype(np.float32)
        edge_sigma = rng.uniform(0.0, 0.4 * diameter / 2 + 0.01) if rng.random() < 0.5 else 0.0
        weight = mask.astype(np.float32)
        if edge_sigma > 0.4:
            weight = ndimage.gaussian_filter(weight, min(edge_sigma, 6.0))
            # keep the labelled core clearly visible
            weight = np.maximum(weight, 0.6 * mask)
        delta = (contrast * inside * weight).astype(np.float32)
        if solid:  # the level of the tissue it grows in (the mask is clipped to that tissue)
            level = np.median(image[box][mask], axis=0).astype(np.float32)
        if image.ndim == 3:
            tint = rgb_tint if rgb_tint is not None else np.ones(3, np.float32)
            if solid:
                image[box] += weight[..., None] * (level - image[box])
            image[box] += delta[..., None] * tint
        else:
            if solid:
                image[box] += weight * (level - image[box])
            image[box] += delta
        labels[box][mask] = TUMOR


def _vessel_roots(rng: np.random.Generator, shape: tuple[int, int], count: int) -> list[tuple[float, float, float]]:
    """Trunk starts: on the border pointing inwards, or inside pointing anywhere."""
    h, w = shape
    roots = []
    for _ in range(count):
        if rng.random() < 0.6:
            side = rng.integers(4)
            t = rng.uniform(0.1, 0.9)
            y, x, a = [(0, t * w, np.pi / 2), (h - 1, t * w, -np.pi / 2), (t * h, 0, 0.0), (t * h, w - 1, np.pi)][side]
            roots.append((y, x, a + rng.normal(0, 0.5)))
        else:
            roots.append((rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, 2 * np.pi)))
    return roots


def _add_vessels(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, roots, config: SimulatorConfig,
    scale: float, sign: float | None = None, rgb_weights: np.ndarray | None = None,
    width: tuple[float, float] | None = None, region: np.ndarray | None = None,
) -> None:
    h, w = labels.shape
    ys, xs, radii = vessel_tree(rng, (h, w), roots, width or config.nerve_width)
    if ys.size == 0:
        return
    profile, mask = rasterize_vessels((h, w), ys, xs, radii, soft=rng.random() < 0.5)
    if region is not None:
        profile *= region
        mask &= region
    if sign is None:
        sign = rng.choice((-1.0, 1.0))
        sign = float(config.nerve_sign) if config.nerve_sign is not None else sign
    contrast = sign * rng.uniform(*config.contrast) * scale
    ys_box = np.flatnonzero(mask.any(axis=1))
    xs_box = np.flatnonzero(mask.any(axis=0))
    if ys_box.size:
        box = (slice(int(ys_box[0]), int(ys_box[-1]) + 1), slice(int(xs_box[0]), int(xs_box[-1]) + 1))
        core = mask[box] & (profile[box] > 0.5)
        contrast = _visible_amplitude(rng, image, box, core if core.any() else mask[box], contrast, config,
                                      _gain(image, rgb_weights))
    else:
        rng.uniform(*config.visibility)  # keep the number of draws fixed
    # thin vessels fade towards their tips in real scans; keep them visible here
    modulation = 1.0 + 0.25 * fractal_noise(rng, (h, w), beta=3.0, cutoff=2.0)
    delta = contrast * profile * modulation
    if image.ndim == 3:
        weights = rgb_weights if rgb_weights is not None else np.ones(3, np.float32)
        image += delta[..., None] * weights
    else:
        image += delta
    labels[mask] = NERVE


# ------------------------------------------------------------- augmentation
def _geometric(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation, scaling and elastic deformation in one resampling (labels: nearest)."""
    h, w = labels.shape
    angle = rng.uniform(-np.pi, np.pi)
    zoom = math.exp(rng.uniform(-0.25, 0.25))
    yy, xx = _grid((h, w))
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ca, sa = math.cos(angle) / zoom, math.sin(angle) / zoom
    src_y = cy + ca * (yy - cy) - sa * (xx - cx)
    src_x = cx + sa * (yy - cy) + ca * (xx - cx)
    if rng.random() < 0.7:
        amp = rng.uniform(0.5, 3.0)
        src_y += amp * fractal_noise(rng, (h, w), beta=5.0, cutoff=2.0)
        src_x += amp * fractal_noise(rng, (h, w), beta=5.0, cutoff=2.0)
    coords = np.stack([src_y, src_x])
    new_labels = ndimage.map_coordinates(labels, coords, order=0, mode="reflect")
    if image.ndim == 3:
        new_image = np.stack(
            [ndimage.map_coordinates(image[..., c], coords, order=1, mode="reflect") for c in range(3)], axis=-1)
    else:
        new_image = ndimage.map_coordinates(image, coords, order=1, mode="reflect")
    return new_image, new_labels


def _intensity(rng: np.random.Generator, image: np.ndarray, invert_ok: bool) -> np.ndarray:
    """Gamma, blur, noise and inversion on an image scaled to about [0, 1]."""
    lo, hi = np.percentile(image, (0.5, 99.5))
    unit = (image - lo) / max(hi - lo, 1e-6)
    if rng.random() < 0.5:
        unit = np.clip(unit, 0, None) ** math.exp(rng.uniform(-0.5, 0.5))
    if rng.random() < 0.3:
        sigma = rng.uniform(0.3, 1.3)
        unit = ndimage.gaussian_filter(unit, (sigma, sigma, 0) if unit.ndim == 3 else sigma)
    if rng.random() < 0.5:
        unit = unit + rng.uniform(0.005, 0.05) * rng.standard_normal(unit.shape).astype(np.float32)
    if invert_ok and rng.random() < 0.12:
        unit = 1.0 - unit
    return (unit * (hi - lo) + lo).astype(np.float32)


# ---------------------------------------------------------------------- API
def simulate_scan(
    rng_or_seed: np.random.Generator | int | None,
    size: tuple[int, int] = (256, 256),
    modality: str | None = None,
    *,
    rgb: bool | None = None,
    config: SimulatorConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One simulated scan and its labels.

    ``rng_or_seed``: a ``numpy.random.Generator`` (advanced in place) or a seed.
    ``modality``: ``"mri"``, ``"ct"``, ``"fundus"``, ``"em"`` or ``None`` (random).
    ``rgb`` (fundus only): ``True`` for an (H, W, 3) photo, ``False`` for grey,
    ``None`` to choose at random (70 % colour).
    Returns ``(image, labels)``: float32 (H, W) or (H, W, 3) in the modality's
    own units, and uint8 (H, W) with 0 background, 1 tumor, 2 nerve.
    """
    rng = _rng(rng_or_seed)
    config = config or SimulatorConfig()
    shape = (int(size[0]), int(size[1]))
    if modality is None:
        names = list(MODALITY_WEIGHTS)
        p = np.array([MODALITY_WEIGHTS[n] for n in names])
        modality = names[rng.choice(len(names), p=p / p.sum())]
    if modality not in MODALITY_WEIGHTS:
        raise ValueError(f"unknown modality {modality!r}; choose from {MODALITIES} or None")
    labels = np.zeros(shape, np.uint8)
    nerve = rng.random() < config.nerve_probability
    invert_ok = True

    if modality == "fundus":
        image, retina, disc, disc_r = _fundus_background(rng, shape)
        inner = retina & (ndimage.distance_transform_edt(retina) > 3) if retina.any() else retina
        lesion_tint = rng.choice([np.array([0.6, 0.7, 0.3]), np.array([0.5, 0.15, 0.05])], axis=0).astype(np.float32)
        _add_tumors(rng, image, labels, inner, config, 0.6, lesion_tint)
        if nerve or rng.random() < 0.8:  # a fundus photo almost always shows vessels
            trunks = int(rng.integers(3, 8))
            roots = [(disc[0] + rng.normal(0, 0.3) * disc_r, disc[1] + rng.normal(0, 0.3) * disc_r,
                      rng.uniform(0, 2 * np.pi)) for _ in range(trunks)]
            roots += _vessel_roots(rng, shape, int(rng.integers(0, 4)))
            weights = np.array([rng.uniform(0.15, 0.4), 0.45, 0.25], np.float32)
            low = config.nerve_width[0]
            width = (low, max(low, min(config.nerve_width[1], max(disc_r * 0.35, 2.0)) + 1))
            _add_vessels(rng, image, labels, roots, config, 0.9, sign=-1.0, rgb_weights=weights,
                         width=width, region=retina)
        image = np.clip(image, 0, None)
        invert_ok = False
        colour = rng.random() < 0.7 if rgb is None else rgb
        if not colour:
            image = image[..., 1] if rng.random() < 0.5 else image @ LUMA
        image = image * 255.0
    else:
        if modality == "mri":
            image, body = _mri_background(rng, shape)
            scale, region = 0.4, body
        elif modality == "ct":
            image, body, unit, lung = _ct_background(rng, shape)
            _add_tumors(rng, image, labels, unit > 0, config, 65.0, unit_map=unit, brighter=lung)
            if lung.any() and rng.random() < 0.7:  # lung vessels: soft tissue in air, always bright
                roots = _vessel_roots(rng, shape, int(rng.integers(2, 6)))
                _add_vessels(rng, image, labels, roots, config, 850.0, sign=1.0, width=(1.0, 6.0), region=lung)
            scale = 150.0
            body = body & ~lung
        else:
            image, body = _em_background(rng, shape, config.real_backgrounds, config.em_background)
            scale, region = 0.35 * float(np.std(image) * 4 + 0.05), body
        if modality != "ct":
            _add_tumors(rng, image, labels, region, config, scale, style=modality)
        if nerve:
            roots = _vessel_roots(rng, shape, int(rng.integers(1, 6)))
            # vessels run inside the body, not through the air around it (CT: contrast-enhanced, bright)
            _add_vessels(rng, image, labels, roots, config, scale, sign=1.0 if modality == "ct" else None,
                         region=body)
        if modality == "mri":
            bias = np.exp(rng.uniform(0.05, 0.4) * fractal_noise(rng, shape, beta=4.0, cutoff=1.0))
            sigma = rng.uniform(0.01, 0.06)
            n1 = rng.standard_normal(shape).astype(np.float32) * sigma
            n2 = rng.standard_normal(shape).astype(np.float32) * sigma
            image = np.sqrt((image * bias + n1) ** 2 + n2**2) * 1000.0  # Rician magnitude
        elif modality == "ct":
            image = image + rng.uniform(4, 25) * rng.standard_normal(shape).astype(np.float32)
        else:
            image = image + rng.uniform(0.0, 0.05) * rng.standard_normal(shape).astype(np.float32)
    image = image.astype(np.float32)

    if config.augment:
        if rng.random() < 0.6:
            image, labels = _geometric(rng, image, labels)
        k = int(rng.integers(4))
        if shape[0] != shape[1]:
            k = 2 * (k % 2)  # a quarter turn would swap the sides of a non-square scan
        image, labels = np.rot90(image, k, axes=(0, 1)), np.rot90(labels, k)
        if rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        image = _intensity(rng, np.ascontiguousarray(image), invert_ok)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels, dtype=np.uint8)


def simulate_volume(
    rng_or_seed: np.random.Generator | int | None,
    shape: tuple[int, int, int] = (16, 128, 128),
    modality: str = "mri",
    *,
    config: SimulatorConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A simulated 3D stack (Z, Y, X) with labels, for stack-handling tests.

    The anatomy is one simulated slice, slowly deformed along Z; tumors are
    irregular ellipsoids whose cross-section grows and shrinks with Z; nerves
    are tubes that drift across slices. Cheap rather than anatomically exact.
    """
    rng = _rng(rng_or_seed)
    config = config or SimulatorConfig()
    if modality == "fundus":
        raise ValueError("fundus photos are 2D; choose mri, ct or em for a volume")
    plain = SimulatorConfig(tumor_probability=0.0, nerve_probability=0.0, augment=False,
                            real_backgrounds=config.real_backgrounds)
    depth, h, w = shape
    base, _ = simulate_scan(rng, (h, w), modality, config=plain)
    spread = float(np.percentile(base, 99) - np.percentile(base, 1)) or 1.0
    volume = np.empty(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    drift_y = fractal_noise(rng, (h, w), beta=4.0, cutoff=2.0)
    drift_x = fractal_noise(rng, (h, w), beta=4.0, cutoff=2.0)
    yy, xx = _grid((h, w))
    tumors = []
    if rng.random() < config.tumor_probability:
        for _ in range(int(rng.integers(1, config.max_tumors + 1))):
            tumors.append((rng.uniform(0.2, 0.8) * depth, rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w,
                           rng.uniform(0.05, 0.2) * min(h, w), rng.uniform(0.2, 0.5) * depth,
                           rng.choice((-1.0, 1.0)) * rng.uniform(0.3, 0.8) * spread, int(rng.integers(1 << 30))))
    nerves = []
    if rng.random() < config.nerve_probability:
        for _ in range(int(rng.integers(1, 4))):
            nerves.append((rng.uniform(0, h), rng.uniform(-1, 1) * 2.0, rng.uniform(0.5, 4.0),
                           rng.choice((-1.0, 1.0)) * rng.uniform(0.3, 0.8) * spread, rng.uniform(-0.4, 0.4)))
    for z in range(depth):
        t = z / max(depth - 1, 1) - 0.5
        coords = np.stack([yy + 2.0 * t * drift_y, xx + 2.0 * t * drift_x])
        plane = ndimage.map_coordinates(base, coords, order=1, mode="reflect")
        lab = labels[z]
        for zc, cy, cx, r, rz, contrast, seed in tumors:
            frac = 1.0 - ((z - zc) / rz) ** 2
            if frac <= 0.05:
                continue
            mask, box, _ = _blob_mask(np.random.default_rng(seed), (h, w), (cy, cx), r * math.sqrt(frac), 0.4)
            plane[box][mask] += contrast
            lab[box][mask] = TUMOR
        for y0, slope, radius, contrast, tilt in nerves:
            centre = y0 + slope * (xx - w / 2) * 0.2 + tilt * z * 2
            dist = np.abs(yy - centre)
            mask = dist <= radius
            plane += contrast * np.clip(radius + 0.5 - dist, 0, 1)
            lab[mask] = NERVE
        volume[z] = plane + 0.02 * spread * rng.standard_normal((h, w)).astype(np.float32)
    return volume, labels
