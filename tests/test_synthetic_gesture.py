"""The embedded gesture default: class kinematics, the shared calibrated pixel, split by subject."""

import dataclasses

import numpy as np
import pytest

from sast_deploy.data.synthetic import DVSPixel, SyntheticNMNISTConfig, dvs_pixel_events
from sast_deploy.data.synthetic_gesture import (
    GESTURE_CLASSES,
    GESTURES,
    SyntheticGestureConfig,
    draw_subject,
    generate_gesture_recording,
    generate_synthetic_gesture,
    hand_trajectories,
    subject_split,
)

NOISELESS = SyntheticGestureConfig(noise_rate_hz=0.0)


def _centroid_path(events, image_half: str, window_us: int = 25_000) -> np.ndarray:
    """Event centroid (x, y) per time window, in one half of the image."""
    e = events[(events["x"] < 16) if image_half == "left" else (events["x"] >= 16)]
    k = e["t"] // window_us
    return np.array([[e["x"][k == i].mean(), e["y"][k == i].mean()] for i in np.unique(k) if (k == i).sum() > 3])


def _signed_area(path: np.ndarray) -> float:
    """Shoelace area: > 0 for a clockwise path on the image (y grows downwards)."""
    x, y = path[:, 0], path[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_arm_circles_turn_the_way_their_class_says(seed):
    subject = draw_subject(np.random.default_rng(seed), NOISELESS)
    for label, half, sense in ((3, "left", 1), (4, "left", -1), (5, "right", 1), (6, "right", -1)):
        ev = generate_gesture_recording(label, subject, seed % 3, np.random.default_rng(100 + seed), NOISELESS)
        area = _signed_area(_centroid_path(ev, half))
        assert sense * area > 5, (GESTURE_CLASSES[label], area)


@pytest.mark.slow
def test_waves_are_horizontal_and_drums_vertical():
    subject = draw_subject(np.random.default_rng(0), NOISELESS)
    for label, half in ((1, "left"), (2, "right")):
        p = _centroid_path(generate_gesture_recording(label, subject, 0, np.random.default_rng(1), NOISELESS), half)
        assert p[:, 0].std() > 2 * p[:, 1].std(), GESTURE_CLASSES[label]
    for half in ("left", "right"):  # both hands drum
        p = _centroid_path(generate_gesture_recording(8, subject, 0, np.random.default_rng(1), NOISELESS), half)
        assert p[:, 1].std() > 2 * p[:, 0].std()
    # a one-hand wave leaves the other half of the image nearly silent
    ev = generate_gesture_recording(1, subject, 0, np.random.default_rng(1), NOISELESS)
    assert (ev["x"] < 16).sum() > 5 * (ev["x"] >= 16).sum()


def test_every_class_has_one_movement_and_other_labels_are_refused():
    assert len(GESTURES) == len(GESTURE_CLASSES)
    subject, t_s = draw_subject(np.random.default_rng(0), NOISELESS), np.linspace(0, 1.5, 50)
    for label in range(len(GESTURES)):
        hands = hand_trajectories(label, t_s, subject, np.random.default_rng(label))
        assert hands.shape == (2, 50, 2) and np.isfinite(hands).all()
    for bad in (-1, len(GESTURES)):
        with pytest.raises(ValueError, match="gesture label"):
            hand_trajectories(bad, t_s, subject, np.random.default_rng(0))


def test_uses_the_pixel_calibrated_on_the_real_recording():
    gesture, nmnist = SyntheticGestureConfig(), SyntheticNMNISTConfig()
    for name in ("contrast_threshold", "threshold_mismatch", "refractory_us", "jitter_us", "noise_rate_hz", "render_step_us"):
        assert getattr(gesture, name) == getattr(nmnist, name), name
    # a static scene emits only the Poisson background: 2 polarities x pixels x rate x duration
    pixel = dataclasses.replace(DVSPixel.of(nmnist), jitter_us=0.0)
    t = np.arange(0, 1_000_001, 1000, dtype=np.float64)
    ev = dvs_pixel_events(np.zeros((len(t), 32, 32)), t, 1_000_000, np.random.default_rng(0), pixel)
    expected = 2 * 32 * 32 * pixel.noise_rate_hz
    assert abs(len(ev) - expected) < 5 * np.sqrt(expected)


def test_recordings_are_balanced_and_brighter_light_means_fewer_signal_events():
    subject = draw_subject(np.random.default_rng(3), NOISELESS)
    counts = []
    for lighting in range(3):
        ev = generate_gesture_recording(3, subject, lighting, np.random.default_rng(7), NOISELESS)
        assert 0.4 < ev["p"].mean() < 0.6  # leading edges ON, trailing edges OFF
        assert ev["t"].min() >= 0 and ev["t"].max() <= NOISELESS.duration_ms * 1000
        counts.append(len(ev))
    # a brighter background lowers the hand's log contrast, so fewer threshold crossings
    assert counts[0] > counts[1] > counts[2]


@pytest.mark.slow
def test_generation_is_deterministic_and_split_by_subject():
    cfg = SyntheticGestureConfig(max_subjects=4, recordings_per_class=2, duration_ms=200.0)
    tr1, te1 = generate_synthetic_gesture(cfg, progress=False)
    tr2, te2 = generate_synthetic_gesture(cfg, progress=False)
    np.testing.assert_array_equal(tr1.events, tr2.events)
    np.testing.assert_array_equal(te1.offsets, te2.offsets)
    assert not set(tr1.source_ids) & set(te1.source_ids)
    n_cls = len(GESTURE_CLASSES)
    for split in (tr1, te1):  # every subject performs every class recordings_per_class times
        assert len(split) == len(set(split.source_ids)) * n_cls * 2
        np.testing.assert_array_equal(np.bincount(split.labels, minlength=n_cls), len(split) // n_cls)
    # the full split holds out test_subjects subjects; the small one is a subset of it
    train_subj, test_subj = subject_split(SyntheticGestureConfig())
    assert len(test_subj) == 6 and len(train_subj) == 23
    assert set(te1.source_ids) <= set(test_subj) and set(tr1.source_ids) <= set(train_subj)
    other = generate_synthetic_gesture(dataclasses.replace(cfg, seed=1), progress=False)[0]
    assert not np.array_equal(other.events[:100], tr1.events[:100])


def test_bad_gesture_config_is_rejected():
    from sast_deploy.data.datasets import DataConfig, DataError

    with pytest.raises(DataError, match="test_subjects"):
        DataConfig(name="synthetic-gesture", synthetic={"test_subjects": 40})
    with pytest.raises(DataError, match="max_sources"):  # an N-MNIST field on the gesture generator
        DataConfig(name="synthetic-gesture", synthetic={"max_sources": 3})
    with pytest.raises(DataError, match="only the generated datasets"):
        DataConfig(name="nmnist", synthetic={"seed": 3})


def test_gesture_frames_through_the_tonic_chain():
    from sast_deploy.data.datasets import DATASETS, DataConfig, load_dataset

    cfg = DataConfig(name="synthetic-gesture", n_time_bins=6, denoise_us=10000,
                     synthetic={"max_subjects": 3, "recordings_per_class": 1, "duration_ms": 300.0})
    train, test = load_dataset(cfg, progress=False)
    assert train.frames.shape[1:] == (6, 2, 32, 32) and test.frames.shape[1:] == (6, 2, 32, 32)
    assert set(np.unique(train.frames.numpy())) <= {0, 1}
    assert sorted(set(train.labels.tolist())) == list(range(DATASETS["synthetic-gesture"].n_classes))
    assert not set(train.source_ids) & set(test.source_ids)
