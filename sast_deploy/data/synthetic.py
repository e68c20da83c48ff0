"""Offline generator of N-MNIST-like event recordings (the embedded default dataset).

Real N-MNIST (Orchard et al. 2015) was recorded by an ATIS camera looking at an MNIST
digit on a monitor while the camera made three saccades along a triangle. We reproduce
that recording process on scikit-learn's ``load_digits`` (real handwritten digits that
ship with scikit-learn, so nothing is downloaded):

1. the 8x8 digit is upscaled to ``digit_size`` pixels (default 28) and blurred by optics;
2. it moves across a 34x34 sensor along (0,0) -> (+3.5,+7) -> (+7,0) -> (0,0) pixels,
   one saccade of ``saccade_ms`` each, with the bell-shaped speed profile of a minimum-jerk
   movement;
3. each pixel is a log-intensity change detector (the DVS/ATIS pixel model): it emits an
   ON (OFF) event each time its log intensity rose (fell) by its contrast threshold since
   its last event, with per-pixel threshold mismatch, a refractory period, timestamp
   jitter, plus Poisson background activity.

The defaults are calibrated against the genuine recording in
``shared/data/nmnist-reference/sample_nmnist.bin`` (``tests/test_synthetic.py`` checks
events per sample, ON fraction, duration and the per-saccade event-rate profile).
tonic has readers and transforms for event data but no event-camera simulator for
static images, which is why this module exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from ..validation import Count, Fraction, NonNegative, Seed, Size0, check_ranges, file_data, ranged

# Ranges of the DVS pixel's parameters, shared by both generators. The bounds that are not
# physical keep one recording's rendering in memory: frames = duration / render step.
RenderStep = ranged(int, ge=100, le=100_000)  # us
ContrastThreshold = ranged(float, gt=0, le=10)  # log-intensity units
NoiseRate = ranged(float, ge=0, le=1000)  # Hz per pixel and polarity
Length = ranged(float, gt=0, le=256)  # px, a length on the sensor

# The structured dtype tonic's NMNIST dataset yields, so that the synthetic and the real
# recordings go through the same tonic transforms.
EVENT_DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])

#: Saccade corners in pixels (x, y), as in the real N-MNIST recording.
SACCADE_PATH_PX: Tuple[Tuple[float, float], ...] = ((0.0, 0.0), (3.5, 7.0), (7.0, 0.0), (0.0, 0.0))

GENERATOR_VERSION = 1  # bump when the generator's output changes for the same parameters


def config_cache_key(config, version: int) -> str:
    """16 hex digits of the SHA-256 of a generator config's fields and its generator version:
    the cached dataset's file name, so any change of either regenerates the data."""
    payload = json.dumps({"v": version, **dataclasses.asdict(config)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@file_data
@dataclass(frozen=True)
class SaccadeCamera:
    """The N-MNIST recording setup: an ATIS camera making three saccades in front of a monitor
    that shows a white digit on black. Calibrated against the genuine recording; shared by every
    N-MNIST-like generator, so their recordings differ only in the digit images. Lengths in
    pixels (px), times in microseconds (us) or ms as named, intensities relative to white = 1.
    """

    sensor_px: ranged(int, ge=1, le=34) = 34  # at most the 34x34 of N-MNIST's frames
    optics_blur_px: ranged(float, ge=0, le=256) = 0.7
    saccade_ms: ranged(float, gt=0, le=1000) = 105.0
    render_step_us: RenderStep = 1000
    background_intensity: ranged(float, gt=0, le=1) = 0.15  # monitor black level relative to white = 1 (> 0: log)
    contrast_threshold: ContrastThreshold = 0.5  # log-intensity step per event
    threshold_mismatch: Fraction = 0.04  # per-pixel std of the contrast threshold
    refractory_us: Size0 = 1000
    jitter_us: NonNegative = 500.0  # timestamp jitter (std)
    noise_rate_hz: NoiseRate = 1.2  # background events per pixel and polarity
    variant_shift_px: ranged(float, ge=0, le=256) = 1.0  # std of the random placement of a variant


@file_data
@dataclass(frozen=True)
class SyntheticNMNISTConfig(SaccadeCamera):
    """Parameters of the synthetic N-MNIST generator: the camera (:class:`SaccadeCamera`) and
    the load_digits images it records. Times in microseconds (us) or ms as named.

    The cache key is derived from all fields, so any change regenerates the data.
    """

    seed: Seed = 0
    train_variants: Count = 3  # jittered recordings per training source image
    test_variants: Count = 2  # recordings per test source image
    test_fraction: ranged(float, gt=0, lt=1) = 0.2  # fraction of source images held out (split by source image)
    max_sources: Size0 = 0  # 0 = all 1797 load_digits images; tests use a few
    digit_size_px: Length = 28.0
    variant_scale: Fraction = 0.06  # std of the relative size of a variant

    def __post_init__(self):
        check_ranges(self, "data.synthetic")
        if self.max_sources == 1:
            raise ValueError("data.synthetic.max_sources must be 0 (all) or >= 2: one source image leaves no training split")

    def cache_key(self) -> str:
        return config_cache_key(self, GENERATOR_VERSION)


def _min_jerk(s: np.ndarray) -> np.ndarray:
    """Position fraction of a minimum-jerk movement at time fraction s (bell-shaped speed)."""
    return 10 * s**3 - 15 * s**4 + 6 * s**5


def saccade_offsets(times_us: np.ndarray, saccade_ms: float) -> np.ndarray:
    """Sensor-relative digit offset (x, y) in pixels at each time (us), shape [len(times), 2]."""
    sacc_us = saccade_ms * 1000.0
    path = np.asarray(SACCADE_PATH_PX)
    k = np.clip((times_us // sacc_us).astype(int), 0, len(path) - 2)
    s = np.clip(times_us / sacc_us - k, 0.0, 1.0)
    frac = _min_jerk(s)[:, None]
    return path[k] + frac * (path[k + 1] - path[k])


def _digit_image(image8: np.ndarray, size_px: float, blur_px: float) -> np.ndarray:
    """Upscale an 8x8 load_digits image (0..16) to a smooth [0, 1] ink image of ~size_px."""
    from scipy import ndimage

    side = max(8, int(round(size_px)))
    img = ndimage.zoom(image8.astype(np.float64) / 16.0, side / 8.0, order=3)
    return optics(img, blur_px)


def optics(ink: np.ndarray, blur_px: float) -> np.ndarray:
    """The camera optics' blur (Gaussian, std ``blur_px`` pixels) of an ink image, clipped to [0, 1]."""
    from scipy import ndimage

    if blur_px > 0:
        ink = ndimage.gaussian_filter(ink, blur_px)
    return np.clip(ink, 0.0, 1.0)


def _render(ink: np.ndarray, offsets: np.ndarray, origin: np.ndarray, sensor_px: int) -> np.ndarray:
    """Bilinearly sample the ink image shifted by per-frame offsets: [frames, sensor, sensor].

    The shift is uniform over the sensor, so bilinear sampling reduces to four integer
    shifts of a zero-padded copy weighted by the fractional offset.
    """
    h, w = ink.shape
    pad = sensor_px + 16
    canvas = np.zeros((h + 2 * pad, w + 2 * pad))
    canvas[pad : pad + h, pad : pad + w] = ink
    pos = offsets + origin  # top-left of the digit in sensor coordinates (x, y)
    ix = np.floor(pos[:, 0]).astype(int)
    iy = np.floor(pos[:, 1]).astype(int)
    fx = (pos[:, 0] - ix)[:, None, None]
    fy = (pos[:, 1] - iy)[:, None, None]
    grid = np.arange(sensor_px)
    # sensor pixel (yy, xx) sees digit pixel (yy - y0, xx - x0)
    rows = pad + grid[None, :] - iy[:, None]  # [F, S]
    cols = pad + grid[None, :] - ix[:, None]

    def take(dr: int, dc: int) -> np.ndarray:
        return canvas[(rows - dr)[:, :, None], (cols - dc)[:, None, :]]

    return (
        (1 - fy) * (1 - fx) * take(0, 0)
        + (1 - fy) * fx * take(0, 1)
        + fy * (1 - fx) * take(1, 0)
        + fy * fx * take(1, 1)
    )


def generate_recording(image8: np.ndarray, rng: np.random.Generator, cfg: SyntheticNMNISTConfig, jitter: bool) -> np.ndarray:
    """Simulate one N-MNIST-like recording of an 8x8 digit image; returns events sorted by t.

    ``jitter`` randomises the variant's size and placement (the source image is the same).
    """
    size = cfg.digit_size_px * (1.0 + (cfg.variant_scale * rng.standard_normal() if jitter else 0.0))
    return saccade_recording(_digit_image(image8, size, cfg.optics_blur_px), rng, cfg, shift=jitter)


def saccade_recording(ink: np.ndarray, rng: np.random.Generator, camera: SaccadeCamera, shift: bool) -> np.ndarray:
    """The N-MNIST recording of an ink image [H, W] in [0, 1] (1 = white, already through
    :func:`optics`) centred on the monitor: the camera's three saccades seen through the
    DVS/ATIS pixel model; events sorted by t (us). ``shift`` places it off centre by
    ``camera.variant_shift_px`` (std, pixels)."""
    h, w = ink.shape
    path = np.asarray(SACCADE_PATH_PX)
    span = path.max(axis=0) - path.min(axis=0)
    origin = (camera.sensor_px - np.array([w, h]) - span) / 2.0
    if shift:
        origin = origin + camera.variant_shift_px * rng.standard_normal(2)

    duration_us = int(round(3 * camera.saccade_ms * 1000.0))
    step = camera.render_step_us
    frame_t = np.arange(0, duration_us + step, step, dtype=np.float64)
    frames = _render(ink, saccade_offsets(frame_t, camera.saccade_ms), origin, camera.sensor_px)
    log_i = np.log(camera.background_intensity + frames)  # [F, S, S]

    return dvs_pixel_events(log_i, frame_t, duration_us, rng, DVSPixel.of(camera))


@dataclass(frozen=True)
class DVSPixel:
    """Parameters of the DVS/ATIS pixel model (the fields of the same names in the
    generators' configs). Times in us, thresholds in log-intensity units."""

    render_step_us: int
    contrast_threshold: float
    threshold_mismatch: float
    refractory_us: int
    jitter_us: float
    noise_rate_hz: float  # background events per pixel and polarity

    @classmethod
    def of(cls, config) -> "DVSPixel":
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


Columns = Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray], List[np.ndarray]]  # x, y, t (us), p chunks


def dvs_pixel_events(log_i: np.ndarray, frame_t: np.ndarray, duration_us: int, rng: np.random.Generator, pixel: DVSPixel) -> np.ndarray:
    """The DVS/ATIS pixel model shared by the synthetic datasets: events sorted by t.

    ``log_i`` is the log intensity [frames, H, W] rendered at times ``frame_t`` (us, evenly
    spaced by ``pixel.render_step_us``). Each pixel emits an ON (OFF) event each time its log intensity rose
    (fell) by its own contrast threshold since its last event, then Poisson background
    events and timestamp jitter are added; events jittered out of [0, duration_us] are dropped.
    """
    n_frames, height, width = log_i.shape
    columns = _contrast_events(log_i.reshape(n_frames, height * width), frame_t, width, rng, pixel)
    _background_events(columns, height, width, duration_us, rng, pixel)
    return _jittered_events(columns, duration_us, rng, pixel)


def _contrast_events(log_i: np.ndarray, frame_t: np.ndarray, width: int, rng: np.random.Generator, pixel: DVSPixel) -> Columns:
    """The threshold crossings of log intensity [frames, pixels], spread evenly (with a random
    offset) over the render step in which they happened."""
    n_px = log_i.shape[1]
    step = pixel.render_step_us
    threshold = np.maximum(pixel.contrast_threshold * (1 + pixel.threshold_mismatch * rng.standard_normal(n_px)), 0.02)
    ref = log_i[0].copy()
    last_event = np.full(n_px, -1e12)
    xs, ys, ts, ps = [], [], [], []
    for f in range(1, len(log_i)):
        diff = log_i[f] - ref
        # strict crossings: the digit returns exactly to its start at the end of the third
        # saccade, and a pixel sitting exactly (to rounding) one threshold from its reference
        # must not fire
        n = np.maximum(np.ceil(np.abs(diff) / threshold - 1e-9) - 1, 0).astype(int)
        ready = frame_t[f] - last_event >= pixel.refractory_us
        n = np.where(ready, np.minimum(n, max(1, step // max(pixel.refractory_us, 1))), 0)
        fired = np.nonzero(n)[0]
        if fired.size == 0:
            continue
        counts = n[fired]
        sign = np.sign(diff[fired])
        ref[fired] += sign * counts * threshold[fired]
        last_event[fired] = frame_t[f]
        idx = np.repeat(fired, counts)
        k = np.concatenate([np.arange(c) for c in counts])
        frac = (k + rng.random(idx.size)) / np.repeat(counts, counts)
        xs.append(idx % width)
        ys.append(idx // width)
        ts.append(frame_t[f - 1] + frac * step)
        ps.append((np.repeat(sign, counts) > 0).astype(int))
    return xs, ys, ts, ps


def _background_events(columns: Columns, height: int, width: int, duration_us: int, rng: np.random.Generator,
                       pixel: DVSPixel) -> None:
    """Append Poisson background activity (``noise_rate_hz`` per pixel and polarity), uniform
    over pixels, time and polarity."""
    xs, ys, ts, ps = columns
    n_px = height * width
    n_noise = rng.poisson(pixel.noise_rate_hz * 2 * n_px * duration_us * 1e-6)
    xs.append(rng.integers(0, width, n_noise))
    ys.append(rng.integers(0, height, n_noise))
    ts.append(rng.uniform(0, duration_us, n_noise))
    ps.append(rng.integers(0, 2, n_noise))


def _jittered_events(columns: Columns, duration_us: int, rng: np.random.Generator, pixel: DVSPixel) -> np.ndarray:
    """The events with Gaussian timestamp jitter, rounded to us, inside the recording, sorted by t."""
    xs, ys, ts, ps = columns
    t = np.round(np.concatenate(ts) + pixel.jitter_us * rng.standard_normal(sum(a.size for a in ts)))
    inside = (t >= 0) & (t <= duration_us)  # the recording window; jitter must not pile events on its edges
    events = np.empty(int(inside.sum()), dtype=EVENT_DTYPE)
    events["x"] = np.concatenate(xs)[inside]
    events["y"] = np.concatenate(ys)[inside]
    events["t"] = t[inside].astype(int)
    events["p"] = np.concatenate(ps)[inside]
    return events[np.argsort(events["t"], kind="stable")]


@dataclass
class EventSplit:
    """Variable-length event recordings stored flat: sample i is events[offsets[i]:offsets[i+1]]."""

    events: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    source_ids: np.ndarray  # what each recording came from (load_digits image, gesture subject); splits never share one

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, i: int) -> np.ndarray:
        return self.events[self.offsets[i] : self.offsets[i + 1]]

    def describe(self, i: int) -> str:
        return f"generated sample {i}"

    def to_npz_dict(self, prefix: str) -> Dict[str, np.ndarray]:
        return {f"{prefix}_{k}": v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_npz(cls, data, prefix: str) -> "EventSplit":
        return cls(**{f.name: data[f"{prefix}_{f.name}"] for f in dataclasses.fields(cls)})


def _split_sources(n_sources: int, test_fraction: float, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n_sources)
    n_test = max(1, int(round(test_fraction * n_sources)))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _recording_task(task) -> np.ndarray:
    image8, seed, cfg, jitter = task
    return generate_recording(image8, np.random.default_rng(seed), cfg, jitter)


def generate_synthetic_nmnist(cfg: SyntheticNMNISTConfig, progress: bool = True) -> Tuple[EventSplit, EventSplit]:
    """Generate the train and test splits. The split is by source image: no load_digits
    image has a recording (in any variant) on both sides."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, targets = digits.images, digits.target
    n_sources = len(images) if cfg.max_sources <= 0 else min(cfg.max_sources, len(images))
    rng = np.random.default_rng(cfg.seed)
    train_src, test_src = _split_sources(n_sources, cfg.test_fraction, rng)
    jobs = [(s, v, "train") for s in train_src for v in range(cfg.train_variants)]
    jobs += [(s, v, "test") for s in test_src for v in range(cfg.test_variants)]
    out: Dict[str, list] = {"train": [], "test": []}
    # One child seed per (source, variant, split) slot keeps each recording independent of
    # the others, so a subset (max_sources) or a parallel run gives the same recordings.
    n_var = max(cfg.train_variants, cfg.test_variants, 1)
    seeds = np.random.SeedSequence(cfg.seed).spawn(len(images) * n_var * 2)
    tasks = [
        (images[s], seeds[(s * n_var + v) * 2 + (split == "test")], cfg, v > 0 or split == "train")
        for s, v, split in jobs
    ]
    recs = generate_parallel(_recording_task, tasks, "generating synthetic-nmnist", progress)
    for (s, _, split), ev in zip(jobs, recs):
        out[split].append((ev, int(targets[s]), int(s)))
    return pack_split(out["train"]), pack_split(out["test"])


def generate_parallel(fn, tasks: list, desc: str, progress: bool) -> list:
    """``[fn(t) for t in tasks]`` on up to two worker processes, with a progress bar."""
    from tqdm import tqdm

    n_proc = min(2, os.cpu_count() or 1) if len(tasks) > 200 else 1
    if n_proc > 1:
        # fork (where the OS has it) works from unguarded user scripts too; the workers
        # only run numpy/scipy code, so forking after torch was imported is safe here
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(n_proc) as pool:
            return list(tqdm(pool.imap(fn, tasks, chunksize=32), total=len(tasks), desc=desc, disable=not progress, unit="rec"))
    return [fn(t) for t in tqdm(tasks, desc=desc, disable=not progress, unit="rec")]


def pack_split(items) -> EventSplit:
    """An :class:`EventSplit` from (events, label, source id) triples."""
    lengths = [len(e) for e, _, _ in items]
    return EventSplit(
        events=np.concatenate([e for e, _, _ in items]) if items else np.empty(0, EVENT_DTYPE),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        labels=np.array([y for _, y, _ in items], dtype=np.int64),
        source_ids=np.array([s for _, _, s in items], dtype=np.int64),
    )


def event_statistics(events: np.ndarray, saccade_ms: float = 105.0, bin_ms: float = 5.0) -> Dict[str, object]:
    """Figures used to calibrate against the real recording.

    Returns n_events, on_fraction, duration_ms (first to last event) and
    saccade_profile: events per ``bin_ms`` bin within a saccade, averaged over the three
    saccades (list of floats, length saccade_ms / bin_ms).
    """
    t_ms = events["t"] / 1000.0
    n_bins = int(round(saccade_ms / bin_ms))
    edges = np.arange(0, 3 * n_bins + 1) * bin_ms
    hist = np.histogram(np.clip(t_ms, 0, 3 * saccade_ms - 1e-9), bins=edges)[0]
    profile = hist.reshape(3, n_bins).mean(axis=0)
    return {
        "n_events": int(len(events)),
        "on_fraction": float(np.mean(events["p"] > 0)) if len(events) else 0.0,
        "duration_ms": float(t_ms.max() - t_ms.min()) if len(events) else 0.0,
        "saccade_profile": profile.tolist(),
    }
