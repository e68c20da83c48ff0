"""Offline generator of DVS-Gesture-like event recordings (the embedded gesture default).

DVS128 Gesture (Amir et al. 2017) filmed 29 subjects performing 11 arm and hand gestures
in front of a DVS128 camera under three lighting conditions; it is split by subject
(23 train, 6 test) and is usually downsampled 4x to 32x32. We reproduce that recording
process on a 32x32 sensor:

1. a subject is a static torso and head (which a DVS does not see unless they move) with
   two arms: a soft capsule from each shoulder to a soft, bright hand;
2. the hands follow the trajectory of the gesture class (clockwise circles, swipes, waves,
   drumming, ...), with the subject's own size, position, speed and amplitude, jittered
   per recording, and a slow sway of the whole body;
3. the scene's log intensity goes through the same DVS pixel model as ``synthetic-nmnist``
   (:func:`sast_deploy.data.synthetic.dvs_pixel_events`), with the pixel parameters calibrated
   there against the genuine N-MNIST recording; the three lighting conditions change the
   background level (so the hand's contrast) and the background activity.

Honest limits: no genuine DVS Gesture recording is available here to calibrate the scene
against, so the pixel model is the calibrated one and the scene (sizes, speeds, durations)
follows the dataset's description. The 32x32 pixels are simulated directly, i.e. a camera
with 4x larger pixels, not a downsampled 128x128 one. Recordings are 1.5 s long (the real
ones last about 6 s; most SNN work uses the first 1-2 s).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np

from .synthetic import (ContrastThreshold, DVSPixel, EventSplit, Length, NoiseRate, RenderStep, SyntheticNMNISTConfig,
                        config_cache_key, dvs_pixel_events, generate_parallel, pack_split)
from ..validation import Count, Fraction, NonNegative, Seed, Size0, check_ranges, file_data, ranged

Spread = ranged(float, ge=0, le=256)  # a std or amplitude, relative or in px
Level = ranged(float, gt=0, le=1)  # an intensity relative to the hand (> 0: its log is taken)

#: Class names and order of tonic's ``DVSGesture`` (image left/right: the subject's right
#: arm appears on the image's left, as in the real recordings).
GESTURE_CLASSES: Tuple[str, ...] = (
    "hand clapping", "right hand wave", "left hand wave", "right arm clockwise", "right arm counter-clockwise",
    "left arm clockwise", "left arm counter-clockwise", "arm roll", "air drums", "air guitar", "other gestures",
)

GESTURE_GENERATOR_VERSION = 1  # bump when the generator's output changes for the same parameters

_PIXEL = SyntheticNMNISTConfig()  # the pixel model calibrated on the genuine N-MNIST recording


@file_data
@dataclass(frozen=True)
class SyntheticGestureConfig:
    """Parameters of the synthetic gesture generator. Lengths in pixels (px) of the 32x32
    sensor, times in ms or us as named, intensities relative to the hand (= 1)."""

    seed: Seed = 0
    n_subjects: ranged(int, ge=2, le=10_000) = 29
    test_subjects: Count = 6  # held-out subjects (split by subject, like DVS Gesture)
    recordings_per_class: Count = 4  # per subject and class (lighting sessions, repetitions)
    max_subjects: Size0 = 0  # 0 = all; tests use a few (train and test subjects alike)
    sensor_px: ranged(int, ge=1, le=32) = 32  # at most the 32x32 of the dataset's frames
    duration_ms: ranged(float, gt=0, le=60_000) = 1500.0
    hand_radius_px: Length = 2.2
    arm_halfwidth_px: Length = 1.0
    edge_px: Length = 0.5  # soft edge (optics blur) of hands and arms
    arm_intensity: Level = 0.6
    torso_intensity: Level = 0.4
    lighting_backgrounds: Tuple[Level, ...] = (0.12, 0.2, 0.3)  # background level per lighting condition
    lighting_noise_factor: Tuple[ranged(float, ge=0, le=100), ...] = (1.0, 1.5, 2.0)  # background activity per lighting condition
    subject_speed_std: Spread = 0.15  # relative, per subject; x 0.08 more per recording
    subject_size_std: Spread = 0.1  # relative
    subject_shift_px: Spread = 1.5  # std of the subject's position
    sway_px: Spread = 0.4  # amplitude of the slow body sway
    # the DVS pixel: defaults are those calibrated on the genuine N-MNIST recording
    render_step_us: RenderStep = _PIXEL.render_step_us
    contrast_threshold: ContrastThreshold = _PIXEL.contrast_threshold
    threshold_mismatch: Fraction = _PIXEL.threshold_mismatch
    refractory_us: Size0 = _PIXEL.refractory_us
    jitter_us: NonNegative = _PIXEL.jitter_us
    noise_rate_hz: NoiseRate = _PIXEL.noise_rate_hz

    def __post_init__(self):
        check_ranges(self, "data.synthetic")
        object.__setattr__(self, "lighting_backgrounds", tuple(float(b) for b in self.lighting_backgrounds))
        object.__setattr__(self, "lighting_noise_factor", tuple(float(b) for b in self.lighting_noise_factor))
        if len(self.lighting_backgrounds) != len(self.lighting_noise_factor) or not self.lighting_backgrounds:
            raise ValueError("lighting_backgrounds and lighting_noise_factor need the same, non-zero length")
        if not 0 < self.test_subjects < self.n_subjects:
            raise ValueError(f"test_subjects must be in (0, n_subjects={self.n_subjects}), got {self.test_subjects}")

    def cache_key(self) -> str:
        return config_cache_key(self, GESTURE_GENERATOR_VERSION)


@dataclass(frozen=True)
class Subject:
    """A subject's style, shared by all their recordings. Pixels of the 32x32 sensor."""

    center: Tuple[float, float]  # (x, y) of the chest
    size: float  # relative body size
    speed: float  # relative gesture speed
    amplitude: float  # relative movement amplitude


def draw_subject(rng: np.random.Generator, cfg: SyntheticGestureConfig) -> Subject:
    c = cfg.sensor_px / 2.0
    return Subject(
        center=(c + cfg.subject_shift_px * rng.standard_normal(), c + 2.0 + cfg.subject_shift_px * rng.standard_normal()),
        size=float(np.clip(1 + cfg.subject_size_std * rng.standard_normal(), 0.7, 1.3)),
        speed=float(np.clip(1 + cfg.subject_speed_std * rng.standard_normal(), 0.6, 1.5)),
        amplitude=float(np.clip(1 + 0.1 * rng.standard_normal(), 0.7, 1.3)),
    )


@dataclass(frozen=True)
class Motion:
    """What every gesture's movement is drawn from, for one recording: the subject's chest
    (cx, cy) px, size ``s`` and amplitude ``a`` (relative), the recording's ``speed``
    (relative) and ``phase`` (rad), the times ``t`` [F, 1] in s, and ``w`` = 2 pi speed t."""

    cx: float
    cy: float
    s: float
    a: float
    speed: float
    phase: float
    t: np.ndarray
    w: np.ndarray

    def circle(self, center, radius: float, freq: float, direction: int) -> np.ndarray:
        """Positions [F, 2] on a circle at ``freq`` turns per s (x speed); direction 1 runs
        clockwise on the image (y grows downwards), -1 counter-clockwise."""
        th = self.phase + direction * 2 * np.pi * freq * self.speed * self.t
        return np.asarray(center) + radius * np.concatenate([np.cos(th), np.sin(th)], axis=1)


# Each gesture gives the positions [F, 2] of the hands it moves, by hand (0: image left, the
# subject's right arm; 1: image right); the other hand rests. Some draw from ``rng``.
Gesture = Callable[[Motion, np.random.Generator], Dict[int, np.ndarray]]


def clapping(m: Motion, rng: np.random.Generator) -> Dict[int, np.ndarray]:
    """Hands meet in the middle and part again."""
    gap = 1.5 * m.s + 4.5 * m.a * m.s * (1 + np.cos(1.6 * m.w + m.phase)) / 2
    return {0: np.concatenate([m.cx - gap, np.full_like(gap, m.cy + 1)], axis=1),
            1: np.concatenate([m.cx + gap, np.full_like(gap, m.cy + 1)], axis=1)}


def hand_wave(hand: int) -> Gesture:
    """Side to side above the shoulder."""
    side = -1 if hand == 0 else 1

    def wave(m: Motion, rng: np.random.Generator) -> Dict[int, np.ndarray]:
        x = m.cx + side * 8 * m.s + 3.5 * m.a * m.s * np.sin(1.4 * m.w + m.phase)
        y = m.cy - 7 * m.s + 1.0 * m.s * np.cos(2.8 * m.w + 2 * m.phase)
        return {hand: np.concatenate([x, y], axis=1)}

    return wave


def arm_circle(hand: int, direction: int) -> Gesture:
    """The whole arm circling beside the body (direction 1: clockwise on the image)."""
    side = -1 if hand == 0 else 1

    def circle(m: Motion, rng: np.random.Generator) -> Dict[int, np.ndarray]:
        return {hand: m.circle((m.cx + side * 7 * m.s, m.cy - 2 * m.s), 5.5 * m.a * m.s, 0.9, direction)}

    return circle


def arm_roll(m: Motion, rng: np.random.Generator) -> Dict[int, np.ndarray]:
    """Forearms rolling around each other in front of the chest, either way round."""
    direction = rng.choice([-1, 1])
    roll = m.circle((0, 0), 2.5 * m.a * m.s, 1.8, direction)
    return {0: np.array([m.cx - 1.5 * m.s, m.cy + 1]) + roll, 1: np.array([m.cx + 1.5 * m.s, m.cy + 1]) - roll}


def air_drums(m: Motion, rng: np.random.Generator) -> Dict[int, np.ndarray]:
    """Alternating strikes, fast down and slow up."""
    hands = {}
    for k, side in ((0, -1), (1, 1)):
        beat = np.abs(np.sin(0.9 * m.w + m.phase + k * np.pi / 2)) ** 0.6
        hands[k] = np.concatenate([np.full_like(beat, m.cx + side * 6 * m.s), m.cy + 4 * m.s - 5 * m.a * m.s * beat], axis=1)
    return hands


def air_guitar(m: Motion, rng: np.random.Generator) -> Dict[int, np.ndarray]:
    """Fast strumming (image left) and a slow slide along the neck."""
    strum = np.sin(2.8 * m.w + m.phase)
    slide = np.sin(0.7 * m.w)
    return {0: np.concatenate([m.cx - 3 * m.s + 0.8 * strum, m.cy + 4 * m.s + 2.5 * m.a * m.s * strum], axis=1),
            1: np.concatenate([m.cx + 9 * m.s + 1.5 * m.s * slide, m.cy - 3 * m.s - 1.0 * m.s * slide], axis=1)}


def other_gestures(m: Motion, rng: np.random.Generator) -> Dict[int, np.ndarray]:
    """Smooth random movements (three sines per axis) of one or both hands."""
    moving = [0, 1] if rng.random() < 0.5 else [int(rng.integers(2))]
    hands = {}
    for k in moving:
        start = np.array([m.cx + (-1) ** (k + 1) * 6 * m.s, m.cy])
        f = rng.uniform(0.3, 2.0, (3, 1, 2)) * m.speed
        amp = rng.uniform(0.5, 2.0, (3, 1, 2)) * m.a * m.s
        ph = rng.uniform(0, 2 * np.pi, (3, 1, 2))
        hands[k] = start + (amp * np.sin(2 * np.pi * f * m.t[None] + ph)).sum(0)
    return hands


#: The movement of each class, in the order of :data:`GESTURE_CLASSES`.
GESTURES: Tuple[Gesture, ...] = (
    clapping,
    hand_wave(0), hand_wave(1),  # right (image left), left
    arm_circle(0, 1), arm_circle(0, -1),  # right arm clockwise, counter-clockwise
    arm_circle(1, 1), arm_circle(1, -1),  # left arm
    arm_roll, air_drums, air_guitar, other_gestures,
)


def hand_trajectories(label: int, t_s: np.ndarray, subject: Subject, rng: np.random.Generator) -> np.ndarray:
    """Positions (x, y) in px of the two hands [2, len(t_s), 2] for one recording of a class.

    Hand 0 is on the image's left (the subject's right arm), hand 1 on the right. y grows
    downwards, so ``(cos th, sin th)`` with th increasing runs clockwise on the image.
    """
    if not 0 <= label < len(GESTURES):
        raise ValueError(f"gesture label must be in 0..{len(GESTURE_CLASSES) - 1}, got {label}")
    cx, cy = subject.center
    s = subject.size
    speed = subject.speed * float(np.clip(1 + 0.08 * rng.standard_normal(), 0.8, 1.2))
    phase = rng.uniform(0, 2 * np.pi)
    t = t_s[:, None]
    rest = np.array([[cx - 8 * s, cy + 11 * s], [cx + 8 * s, cy + 11 * s]])  # hands hanging down
    hands = np.repeat(rest[:, None, :], len(t_s), axis=1).astype(np.float64)
    hands += 0.15 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi, (2, 1, 2)))  # idle tremor
    motion = Motion(cx=cx, cy=cy, s=s, a=subject.amplitude, speed=speed, phase=phase, t=t, w=2 * np.pi * speed * t)
    for k, positions in GESTURES[label](motion, rng).items():
        hands[k] = positions
    return hands


def _soft(distance_sq: np.ndarray, radius: float, edge: float) -> np.ndarray:
    """Coverage in [0, 1] of a shape at squared distance ``distance_sq`` px^2 from its centre (line)."""
    return 1.0 / (1.0 + np.exp((np.sqrt(distance_sq) - radius) / edge))


def _segment_distance_sq(xx: np.ndarray, yy: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance [F, H, W] of pixel centres (xx, yy [H, W]) to segments a->b ([F, 2] each)."""
    ab = (b - a)[:, None, None, :]
    dx, dy = xx[None] - a[:, 0, None, None], yy[None] - a[:, 1, None, None]
    s = np.clip((dx * ab[..., 0] + dy * ab[..., 1]) / np.maximum((ab * ab).sum(-1), 1e-9), 0, 1)
    return (dx - s * ab[..., 0]) ** 2 + (dy - s * ab[..., 1]) ** 2


def _point_distance_sq(xx: np.ndarray, yy: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distance [F, H, W] of pixel centres to points c [F, 2]."""
    return (xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2


def render_scene(hands: np.ndarray, subject: Subject, sway: np.ndarray, background: float, cfg: SyntheticGestureConfig) -> np.ndarray:
    """Intensity frames [F, H, W] (float32) of the subject with hands at ``hands`` [2, F, 2]
    and the whole body shifted by ``sway`` [F, 2]."""
    n = cfg.sensor_px
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5).astype(np.float32)
    hands, sway = hands.astype(np.float32), sway.astype(np.float32)
    cx, cy = subject.center
    s = subject.size
    # torso (a wide capsule) and head: static apart from the sway
    torso = _soft(_segment_distance_sq(xx, yy, np.array([cx, cy - 2 * s]) + sway, np.array([cx, cy + 14 * s]) + sway), 5.0 * s, cfg.edge_px)
    head = _soft(_point_distance_sq(xx, yy, np.array([cx, cy - 9 * s]) + sway), 3.0 * s, cfg.edge_px)
    image = background + (cfg.torso_intensity - background) * np.maximum(torso, head)
    for k, side in ((0, -1), (1, 1)):
        shoulder = np.array([cx + side * 5 * s, cy - 3 * s]) + sway
        arm = _soft(_segment_distance_sq(xx, yy, shoulder, hands[k] + sway), cfg.arm_halfwidth_px * s, cfg.edge_px)
        image = np.maximum(image, background + (cfg.arm_intensity - background) * arm)
        hand = _soft(_point_distance_sq(xx, yy, hands[k] + sway), cfg.hand_radius_px * s, cfg.edge_px)
        image = np.maximum(image, background + (1.0 - background) * hand)
    return image


def generate_gesture_recording(label: int, subject: Subject, lighting: int, rng: np.random.Generator,
                               cfg: SyntheticGestureConfig) -> np.ndarray:
    """Simulate one recording of gesture ``label`` by ``subject``; events sorted by t (us)."""
    duration_us = int(round(cfg.duration_ms * 1000.0))
    step = cfg.render_step_us
    frame_t = np.arange(0, duration_us + step, step, dtype=np.float64)
    t_s = frame_t * 1e-6
    hands = hand_trajectories(label, t_s, subject, rng)
    sway = cfg.sway_px * np.sin(2 * np.pi * rng.uniform(0.1, 0.3, 2) * t_s[:, None] + rng.uniform(0, 2 * np.pi, 2))
    background = cfg.lighting_backgrounds[lighting]
    log_i = np.log(render_scene(hands, subject, sway, background, cfg))
    pixel = dataclasses.replace(DVSPixel.of(cfg), noise_rate_hz=cfg.noise_rate_hz * cfg.lighting_noise_factor[lighting])
    return dvs_pixel_events(log_i, frame_t, duration_us, rng, pixel)


def _gesture_task(task) -> np.ndarray:
    label, subject, lighting, seed, cfg = task
    return generate_gesture_recording(label, subject, lighting, np.random.default_rng(seed), cfg)


def subject_split(cfg: SyntheticGestureConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Train and test subject ids: the last ``test_subjects`` of a seeded permutation are held out."""
    order = np.random.default_rng(cfg.seed).permutation(cfg.n_subjects)
    test, train = np.sort(order[: cfg.test_subjects]), np.sort(order[cfg.test_subjects :])
    if cfg.max_subjects > 0:  # keep both sides represented in small test sets
        n_test = max(1, round(cfg.max_subjects * cfg.test_subjects / cfg.n_subjects))
        train, test = train[: max(1, cfg.max_subjects - n_test)], test[:n_test]
    return train, test


def generate_synthetic_gesture(cfg: SyntheticGestureConfig, progress: bool = True) -> Tuple[EventSplit, EventSplit]:
    """Generate the train and test splits, split by subject: no subject appears on both sides.
    ``source_ids`` holds each recording's subject."""
    train_subj, test_subj = subject_split(cfg)
    root = np.random.SeedSequence(cfg.seed)
    subject_seed, recording_seed = root.spawn(2)
    subjects = [draw_subject(np.random.default_rng(s), cfg) for s in subject_seed.spawn(cfg.n_subjects)]
    n_cls, n_rec = len(GESTURE_CLASSES), cfg.recordings_per_class
    # one child seed per (subject, class, repetition): a subset or a parallel run gives the same recordings
    seeds = recording_seed.spawn(cfg.n_subjects * n_cls * n_rec)
    jobs = [(split, int(subj), label, r) for split, subjs in (("train", train_subj), ("test", test_subj))
            for subj in subjs for label in range(n_cls) for r in range(n_rec)]
    tasks = [(label, subjects[subj], r % len(cfg.lighting_backgrounds), seeds[(subj * n_cls + label) * n_rec + r], cfg)
             for _, subj, label, r in jobs]
    recs = generate_parallel(_gesture_task, tasks, "generating synthetic-gesture", progress)
    out: Dict[str, list] = {"train": [], "test": []}
    for (split, subj, label, _), ev in zip(jobs, recs):
        out[split].append((ev, label, subj))
    return pack_split(out["train"]), pack_split(out["test"])
