"""Tiled (sliding-window) prediction with smooth blending.

``predict_iter`` is a generator: it yields :class:`PredictProgress` after
every batch of tiles (a cancel point for napari's ``thread_worker``) and
returns a :class:`Prediction`. ``predict`` runs it to the end.

Planes are read one at a time from the source array (NumPy, memory-mapped
TIFF, zarr or dask), so a volume larger than memory streams through when an
``out`` array (zarr, memmap) receives the labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from . import normalize as _normalize
from .device import autocast, empty_cache, is_out_of_memory, resolve_device, resolve_precision
from .model import fuse_batchnorm
from .normalize import normalize_slice
from .postprocess import BRIDGE_SLICES, GROW_PROBABILITY, grow_candidates, keep_connected
from .tiling import auto_zoom, blend_weights, tile_grid, tile_size_for
from .uncertainty import (
    continuation_score,
    lesion_continuation,
    near_lesion_scores,
    normalized_entropy,
    slice_score,
)

log = logging.getLogger(__name__)

#: Spatial layouts the predictor understands (colour last, as napari has it).
LAYOUTS = {"YX": "2D grey", "YXC": "2D colour (RGB)", "ZYX": "3D stack", "ZYXC": "3D colour stack"}


@dataclass(frozen=True)
class PredictOptions:
    """Knobs of tiled prediction; the defaults suit the bundled model on a CPU.

    ``tile`` is the tile edge in pixels (rounded up to the network's divisor and
    shrunk for small images); ``zoom`` resamples every plane before the network
    (0.5 halves it: for structures larger than the model saw in training, such
    as the vessels of a 1400-pixel fundus photo) and the probabilities back to
    the plane's own size, so labels always have the image's shape; ``None``
    (the default) chooses it from the image (:func:`~.tiling.auto_zoom`: 1
    for grey scans, about 512 px for colour photos over 768 px); ``overlap`` the fraction of a tile shared with its
    neighbour; ``batch_size`` how many tiles run at once (halved on
    out-of-memory); ``precision`` ``auto`` chooses float16 on GPUs and bfloat16
    on CPUs that compute it natively. ``uncertainty`` also returns the
    normalised entropy of the class probabilities per pixel (0 = certain,
    1 = all classes equally likely) and its mean per slice
    (:mod:`napari_unet.core.uncertainty`). ``grow``: with seeds (the user's
    corrections of a stack), background pixels whose foreground probability
    is at least this much join a kept region they connect to
    (:func:`~.postprocess.keep_connected`); 0.5 or more switches it off.
    ``bridge``: slices on which a kept region may be missing and still go
    on (0: strict 3D connectivity).
    """

    tile: int = 512
    overlap: float = 0.125
    batch_size: int = 4
    device: str = "auto"
    precision: str = "auto"
    return_probabilities: bool = False
    zoom: float | None = None
    uncertainty: bool = False
    grow: float = GROW_PROBABILITY
    bridge: int = BRIDGE_SLICES
    #: test-time flips: 1 runs each tile once; 4 also runs it mirrored left-right,
    #: up-down and both, and averages the four probability maps (4x the time)
    flips: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.flips, bool) or self.flips not in (1, 4):
            raise ValueError(f"flips must be 1 or 4, got {self.flips!r}")
        if isinstance(self.bridge, bool) or not isinstance(self.bridge, int) or not 0 <= self.bridge <= 8:
            raise ValueError(f"bridge must be 0..8 slices, got {self.bridge!r}")
        if not 0.0 < self.grow <= 1.0:
            raise ValueError(f"grow must be a probability above 0 and at most 1, got {self.grow}")
        if self.zoom is not None and not 0.05 <= self.zoom <= 4.0:
            raise ValueError(f"zoom must be between 0.05 and 4, got {self.zoom}")
        if self.tile < 16:
            raise ValueError(f"tile must be at least 16 pixels, got {self.tile}")
        if not 0 <= self.overlap < 0.9:
            raise ValueError(f"overlap must be in [0, 0.9), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class PredictProgress:
    """``done`` of ``total`` tiles are predicted."""

    done: int
    total: int
    message: str = ""


@dataclass
class Prediction:
    labels: np.ndarray
    probabilities: np.ndarray | None = None
    #: per-pixel normalised entropy (float32, the labels' shape), with ``uncertainty=True``
    uncertainty: np.ndarray | None = None
    #: per-slice review score (Z,) for a stack, (1,) for a 2D image, with ``uncertainty=True``:
    #: mean entropy weighted by the foreground probability (:func:`~.uncertainty.slice_score`);
    #: with ``corrections``/``seeds`` in a stack, the doubt near the corrected lesions
    #: ranks first (:func:`~.uncertainty.near_lesion_scores`)
    slice_uncertainty: np.ndarray | None = None
    #: the zoom the planes were predicted at (``zoom=None`` resolves to :func:`~.tiling.auto_zoom`)
    zoom: float = 1.0
    #: regions left out because they touch no corrected pixel of their class (``seeds=``)
    removed: list = field(default_factory=list)
    device: str = "cpu"
    precision: str = "float32"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def image_layout(shape: tuple[int, ...], rgb: bool | None = None) -> str:
    """Name the layout of an image shape, or raise ``ValueError`` saying what is accepted."""
    ndim = len(shape)
    if rgb is None:
        rgb = ndim in (3, 4) and shape[-1] == 3
        if ndim == 3 and shape[-1] == 4:
            raise ValueError(f"shape {shape} looks like RGBA; drop the alpha channel (use RGB)")
    if rgb and shape[-1] == 4:
        raise ValueError(f"shape {shape} is RGBA; drop the alpha channel (use RGB)")
    if rgb and shape[-1] != 3:
        raise ValueError(f"colour images need 3 channels (RGB) last, got shape {shape}")
    layout = {(2, False): "YX", (3, True): "YXC", (3, False): "ZYX", (4, True): "ZYXC"}.get((ndim, bool(rgb)))
    if layout is None:
        raise ValueError(
            f"cannot segment an image of shape {shape}: expected 2D (Y,X), RGB (Y,X,3), "
            f"or a 3D stack (Z,Y,X); pick one channel or time point of a 4D/5D image first"
        )
    if any(s == 0 for s in shape):
        raise ValueError(f"the image is empty (shape {shape})")
    return layout


def spatial_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    return tuple(shape[:-1]) if layout.endswith("C") else tuple(shape)


# ------------------------------------------------------------------- the engine
#: the mirror images test-time flips average over (the dims each flips; () is the tile itself)
MIRRORS = ((), (-1,), (-2,), (-2, -1))


def mirror_mean(probabilities: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, flips: int) -> torch.Tensor:
    """Mean of ``probabilities`` ((N,C,H,W) -> (N,K,H,W)) over the first ``flips``
    of :data:`MIRRORS` of ``x``, each mirrored back (``flips=1``: one plain run)."""
    total = probabilities(x)
    for dims in MIRRORS[1:flips]:
        total = total + probabilities(x.flip(dims)).flip(dims)
    return total / flips if flips > 1 else total


class _TileRunner:
    """Runs batches of tiles through the network, halving the batch on OOM."""

    def __init__(self, net: torch.nn.Module, device: torch.device, dtype: torch.dtype, batch_size: int,
                 flips: int = 1):
        self.net = net
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.flips = flips
        self.notes: list[str] = []
        self.channels_last = device.type == "cpu"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities (N,C,H,W) float32 for a batch of inputs (N,C,H,W)."""
        outputs = []
        start = 0
        while start < len(batch):
            chunk = batch[start : start + self.batch_size]
            try:
                outputs.append(self._run(chunk))
                start += len(chunk)
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                empty_cache(self.device)
                if self.batch_size > 1:
                    self.batch_size = max(1, self.batch_size // 2)
                    self.notes.append(f"out of memory: tile batch reduced to {self.batch_size}")
                    log.warning(self.notes[-1])
                elif self.device.type != "cpu":
                    self.notes.append(f"out of memory on {self.device.type} with one tile: continuing on the CPU")
                    log.warning(self.notes[-1])
                    self.device = torch.device("cpu")
                    self.net = self.net.to("cpu")
                    self.dtype = torch.float32
                    self.channels_last = True
                else:
                    raise
        return np.concatenate(outputs, axis=0)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device)

        def probabilities(tiles: torch.Tensor) -> torch.Tensor:
            if self.channels_last:
                tiles = tiles.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.dtype):
                logits = self.net(tiles)
            return torch.softmax(logits.float(), dim=1)

        with torch.inference_mode():
            return mirror_mean(probabilities, x, self.flips).cpu().numpy()


@dataclass
class _PlaneAccumulator:
    index: int
    size: tuple[int, int]
    probs: np.ndarray
    weight: np.ndarray
    remaining: int


#: folded inference copies of recent U-Nets: (id, device) -> (weights fingerprint, net, copy)
_READY: dict[tuple[int, str], tuple[tuple, torch.nn.Module, torch.nn.Module]] = {}
_READY_SIZE = 4


def _fingerprint(net: torch.nn.Module) -> tuple:
    """Changes whenever a weight or buffer of ``net`` is replaced or updated in place."""
    return tuple((t.data_ptr(), t._version) for t in (*net.parameters(), *net.buffers()))


def prepare_network(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """An inference copy of ``net``: norms folded, eval mode, on ``device``.

    A U-Net's folded copy is reused while its weights are unchanged (folding
    copies the whole network: ~70 ms per call for the bundled model on a CPU);
    any optimiser step or ``load_state_dict`` changes the fingerprint.
    """
    from .model import UNet

    if not isinstance(net, UNet):
        ready = net.eval().to(device)
        return ready.to(memory_format=torch.channels_last) if device.type == "cpu" else ready
    key = (id(net), str(device))
    fingerprint = _fingerprint(net)
    cached = _READY.get(key)
    if cached is not None and cached[1] is net and cached[0] == fingerprint:
        return cached[2]
    ready = fuse_batchnorm(net).eval().to(device)
    if device.type == "cpu":
        ready = ready.to(memory_format=torch.channels_last)
    _READY.pop(key, None)
    while len(_READY) >= _READY_SIZE:
        _READY.pop(next(iter(_READY)))
    _READY[key] = (fingerprint, net, ready)
    return ready


def predict_planes(
    planes: Iterator[np.ndarray],
    num_planes: int,
    plane_shape: tuple[int, int],
    predictor: Callable[[np.ndarray], np.ndarray],
    divisor: int,
    options: PredictOptions,
) -> Generator[PredictProgress | tuple[int, np.ndarray], None, None]:
    """Core sliding window over a sequence of normalised planes (C,Y,X).

    Yields progress events and ``(index, probabilities)`` for each finished
    plane (probabilities (C,Y,X) float32). ``predictor`` maps a batch
    (N,C,h,w) to probabilities (N,K,h,w); any callable works, so tiling never
    depends on the model class.
    """
    height, width = plane_shape
    th = tile_size_for(height, options.tile, divisor)
    tw = tile_size_for(width, options.tile, divisor)
    padded = (max(height, th), max(width, tw))
    windows = tile_grid(padded, (th, tw), options.overlap)
    weights = blend_weights((th, tw))
    total = num_planes * len(windows)
    done = 0
    open_planes: dict[int, _PlaneAccumulator] = {}
    pending: list[tuple[int, tuple[slice, slice], np.ndarray]] = []

    def flush():
        nonlocal done
        batch = np.stack([tile for _, _, tile in pending])
        probs = predictor(batch)
        finished = []
        for (index, window, _), p in zip(pending, probs):
            acc = open_planes[index]
            if acc.probs.shape[0] != p.shape[0]:
                acc.probs = np.zeros((p.shape[0], *padded), np.float32)
            acc.probs[(slice(None), *window)] += p * weights
            acc.weight[window] += weights
            acc.remaining -= 1
            if acc.remaining == 0:
                finished.append(index)
        done += len(pending)
        pending.clear()
        results = []
        for index in finished:
            acc = open_planes.pop(index)
            out = acc.probs[:, :height, :width] / acc.weight[None, :height, :width]
            results.append((index, out))
        return results

    for index, plane in enumerate(planes):
        pad = ((0, 0), (0, padded[0] - height), (0, padded[1] - width))
        if pad[1][1] or pad[2][1]:
            plane = np.pad(plane, pad, mode="reflect" if min(height, width) > 1 else "edge")
        open_planes[index] = _PlaneAccumulator(
            index, padded, np.zeros((1, *padded), np.float32), np.zeros(padded, np.float32), len(windows)
        )
        for window in windows:
            pending.append((index, window, plane[(slice(None), *window)]))
            if len(pending) >= options.batch_size:
                yield from flush()
                yield PredictProgress(done, total)
    if pending:
        yield from flush()
        yield PredictProgress(done, total)


def predict_iter(
    image,
    model,
    options: PredictOptions | None = None,
    *,
    rgb: bool | None = None,
    intensity_ranges: np.ndarray | None = None,
    out=None,
    uncertainty_out=None,
    seeds: dict[int, np.ndarray] | None = None,
) -> Generator[PredictProgress, None, Prediction]:
    """Segment ``image`` with ``model`` tile by tile.

    ``image``: (Y,X), (Y,X,3), (Z,Y,X) or (Z,Y,X,3), any array supporting
    slicing (NumPy, memmap, zarr, dask). ``model``: a :class:`SegmentationModel`.
    ``intensity_ranges``: precomputed normalisation (e.g. from the whole volume
    when only one slice is segmented). ``out``: optional array receiving the
    labels plane by plane (for volumes larger than memory); ``uncertainty_out``
    the same for the uncertainty map (float32; implies ``options.uncertainty``).
    ``seeds``: ``{class id: bool mask}`` of pixels the user trusted as each
    class in this stack (:func:`~.postprocess.seeds_from_corrections`); regions
    of a seeded class that touch none of its seeds in 3D are set to background
    (:func:`~.postprocess.keep_connected`, reported in ``Prediction.removed``).
    """
    options = options or PredictOptions()
    start = time.perf_counter()
    layout = image_layout(tuple(image.shape), rgb)
    is_rgb = layout.endswith("C")
    spatial = spatial_shape(tuple(image.shape), layout)
    config = model.config
    arch = config.architecture
    if is_rgb and arch.in_channels not in (1, 3):
        raise ValueError(f"model expects {arch.in_channels} channels; it cannot read an RGB image")
    device = resolve_device(options.device)
    dtype = resolve_precision(options.precision, device)
    ranges = (
        intensity_ranges
        if intensity_ranges is not None
        else _normalize.intensity_ranges(image, config.input, is_rgb)
    )
    net = prepare_network(model.net, device)
    runner = _TileRunner(net, device, dtype, options.batch_size, options.flips)

    volume = layout.startswith("Z")
    num_planes = spatial[0] if volume else 1
    plane_shape = tuple(spatial[-2:])
    zoom = options.zoom if options.zoom is not None else auto_zoom(plane_shape, is_rgb)
    net_shape = plane_shape
    if zoom != 1.0:
        net_shape = tuple(max(1, int(round(n * zoom))) for n in plane_shape)
    if out is None:
        labels = np.zeros(spatial, dtype=np.uint8)
    else:
        if tuple(out.shape) != tuple(spatial):
            raise ValueError(f"output shape {tuple(out.shape)} differs from the image's {spatial}")
        labels = out
    probabilities = (
        np.zeros((arch.num_classes, *spatial), np.float32) if options.return_probabilities else None
    )
    want_uncertainty = options.uncertainty or uncertainty_out is not None
    uncertainty = None
    scores = np.zeros(num_planes, np.float64) if want_uncertainty else None
    if uncertainty_out is not None:
        if tuple(uncertainty_out.shape) != tuple(spatial):
            raise ValueError(f"uncertainty output shape {tuple(uncertainty_out.shape)} differs from the image's {spatial}")
        uncertainty = uncertainty_out
    elif want_uncertainty:
        uncertainty = np.zeros(spatial, np.float32)

    # background pixels a seeded class may claim (keep_connected), a byte per voxel
    candidates = None
    if seeds and volume and isinstance(labels, np.ndarray) and options.grow < 0.5:
        candidates = np.zeros(spatial, np.uint8)
    # doubt (uncertainty x foreground, 0..255) per voxel, to rank the slices near the corrected lesions first
    doubt = None
    if want_uncertainty and seeds and volume and isinstance(labels, np.ndarray):
        doubt = np.zeros(spatial, np.uint8)
    # where the corrected lesions should go on, and how much of that each slice's prediction loses
    expected = lesion_continuation(seeds) if want_uncertainty and seeds and volume else {}
    lost = np.zeros(num_planes, np.float64) if expected else None

    def planes() -> Iterator[np.ndarray]:
        for z in range(num_planes):
            plane = np.asarray(image[z] if volume else image)
            x = normalize_slice(plane, ranges, arch.in_channels, config.input)
            yield x if net_shape == plane_shape else _resample(x, net_shape)

    for event in predict_planes(planes(), num_planes, net_shape, runner, arch.divisor, options):
        if isinstance(event, PredictProgress):
            yield event
            continue
        index, probs = event
        if net_shape != plane_shape:
            probs = _resample(probs, plane_shape)
        plane_labels = probs.argmax(axis=0).astype(np.uint8)
        if want_uncertainty:
            plane_entropy = normalized_entropy(probs)
            weighted = plane_entropy * np.clip(1.0 - probs[0], 0.0, 1.0)  # class 0 is background
            scores[index] = slice_score(weighted)
            if doubt is not None:
                doubt[index] = np.rint(255.0 * weighted)
            if lost is not None:
                lost[index] = continuation_score(probs, {c: m[index] for c, m in expected.items()})
            if volume:
                uncertainty[index] = plane_entropy
            else:
                uncertainty[...] = plane_entropy
        if volume:
            labels[index] = plane_labels
            if candidates is not None:
                candidates[index] = grow_candidates(probs, plane_labels, options.grow)
            if probabilities is not None:
                probabilities[:, index] = probs
        else:
            labels[...] = plane_labels
            if probabilities is not None:
                probabilities[...] = probs
    removed = []
    if seeds and volume:
        if not isinstance(labels, np.ndarray):
            runner.notes.append("regions were not matched with the corrections: the output is not a NumPy array")
        else:
            removed = keep_connected(labels, seeds, candidates, bridge=options.bridge)
            if doubt is not None:
                focus = np.zeros(spatial, bool)
                for class_id, seed in seeds.items():
                    if class_id != 0:
                        focus |= (labels == class_id) | np.asarray(seed, dtype=bool)
                scores = near_lesion_scores(doubt, focus, scores)
    if lost is not None:
        scores = scores + lost
    return Prediction(
        labels=labels,
        probabilities=probabilities,
        removed=removed,
        uncertainty=uncertainty,
        slice_uncertainty=scores,
        zoom=zoom,
        device=runner.device.type,
        precision=str(runner.dtype).replace("torch.", ""),
        seconds=time.perf_counter() - start,
        notes=runner.notes,
    )


def _resample(planes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C,h,w) -> (C,*shape), bilinear; smoothed first when shrinking (no aliasing)."""
    from skimage.transform import resize

    shrinking = shape[0] < planes.shape[1] or shape[1] < planes.shape[2]
    out = resize(planes, (planes.shape[0], *shape), order=1, anti_aliasing=shrinking, preserve_range=True)
    return out.astype(np.float32, copy=False)


def run_to_end(generator: Generator, callback: Callable | None = None):
    """Drive a progress generator to its return value, passing events to ``callback``."""
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)


def predict(
    image,
    model=None,
    *,
    tile: int = 512,
    overlap: float = 0.125,
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "auto",
    return_probabilities: bool = False,
    zoom: float | None = None,
    uncertainty: bool = False,
    rgb: bool | None = None,
    progress: Callable[[PredictProgress], None] | None = None,
    out=None,
    uncertainty_out=None,
    corrections: tuple | None = None,
    grow: float = GROW_PROBABILITY,
    bridge: int = BRIDGE_SLICES,
    flips: int = 1,
) -> Prediction:
    """Segment an image with a model (the default bundled model when ``None``).

    Returns a :class:`Prediction` with ``labels`` (uint8, the image's spatial
    shape) and, on request, ``probabilities`` (classes first, float32) and
    ``uncertainty`` (per-pixel normalised entropy) with ``slice_uncertainty``
    (its mean per slice: the slices to review first score highest).

    ``corrections=(labels, trusted_mask)`` of this stack (what a fine-tuning
    round learned from): regions of a corrected class that do not connect in
    3D to any pixel trusted as that class are left out, as the widget does
    after a round (:mod:`~napari_unet.core.postprocess`), and background
    pixels with a foreground probability of at least ``grow`` that connect
    to a kept region join it (0.5 switches that off); a region may skip
    ``bridge`` slices and still connect (0: strict); ``removed`` says what
    went and what was added. ``flips=4`` averages the probabilities of the
    tile and its three mirror images (4x the time).
    """
    from .weights import load_model

    model = load_model(model) if not hasattr(model, "net") else model
    options = PredictOptions(
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        precision=precision,
        return_probabilities=return_probabilities,
        zoom=zoom,
        uncertainty=uncertainty,
        grow=grow,
        bridge=bridge,
        flips=flips,
    )
    seeds = None
    if corrections is not None:
        from .postprocess import seeds_from_corrections

        trusted_labels, trusted_mask = corrections
        seeds = seeds_from_corrections(trusted_labels, trusted_mask)
    generator = predict_iter(image, model, options, rgb=rgb, out=out, uncertainty_out=uncertainty_out, seeds=seeds)
    return run_to_end(generator, progress)

