"""The embedded default: calibrated against the genuine N-MNIST recording, split by source."""

import numpy as np
import pytest
import tonic
from sklearn.datasets import load_digits

from sast_deploy.data.synthetic import (
    EVENT_DTYPE,
    SyntheticNMNISTConfig,
    event_statistics,
    generate_recording,
    generate_synthetic_nmnist,
    saccade_offsets,
)


@pytest.fixture(scope="module")
def generated_stats():
    images = load_digits().images
    cfg = SyntheticNMNISTConfig()
    stats = [event_statistics(generate_recording(images[i], np.random.default_rng(i), cfg, jitter=True)) for i in range(0, 400, 10)]
    return stats


def test_reference_recording_reads_as_documented(reference_nmnist):
    ev = tonic.io.read_mnist_file(str(reference_nmnist), dtype=EVENT_DTYPE)
    st = event_statistics(ev)
    assert st["n_events"] == 4325
    assert ev["x"].max() == 33 and ev["y"].max() == 33
    assert 300 < st["duration_ms"] < 315


def _rel(a, b):
    return abs(a - b) / abs(b)


@pytest.mark.slow
def test_calibrated_against_the_real_recording(reference_nmnist, generated_stats):
    ref = event_statistics(tonic.io.read_mnist_file(str(reference_nmnist), dtype=EVENT_DTYPE))
    mean = lambda key: float(np.mean([s[key] for s in generated_stats]))  # noqa: E731
    assert _rel(mean("n_events"), ref["n_events"]) < 0.3
    on_off = lambda f: f / (1 - f)  # noqa: E731
    assert _rel(on_off(mean("on_fraction")), on_off(ref["on_fraction"])) < 0.3
    assert _rel(mean("duration_ms"), ref["duration_ms"]) < 0.3
    gen_profile = np.mean([s["saccade_profile"] for s in generated_stats], axis=0)
    ref_profile = np.asarray(ref["saccade_profile"])
    # the per-saccade event-rate profile: its peak and its whole shape (relative L1 distance)
    assert _rel(gen_profile.max(), ref_profile.max()) < 0.3
    assert np.abs(gen_profile - ref_profile).sum() / ref_profile.sum() < 0.3
    # bell shaped within a saccade: the middle carries far more events than the ends
    assert gen_profile[8:13].mean() > 3 * gen_profile[[0, 1, -2, -1]].mean()


def test_saccades_follow_the_triangle_with_bell_speed():
    t = np.linspace(0, 315_000, 3151)
    pos = saccade_offsets(t, 105.0)
    for corner_us, corner in ((0, (0, 0)), (105_000, (3.5, 7)), (210_000, (7, 0)), (315_000, (0, 0))):
        np.testing.assert_allclose(pos[np.argmin(abs(t - corner_us))], corner, atol=1e-9)
    speed = np.linalg.norm(np.diff(pos[:1051], axis=0), axis=1)
    assert speed[525] > 1.8 * speed.mean() and speed[5] < 0.05 * speed.max()


@pytest.mark.slow
def test_generation_is_deterministic_and_split_by_source():
    cfg = SyntheticNMNISTConfig(max_sources=30, train_variants=2, test_variants=2)
    tr1, te1 = generate_synthetic_nmnist(cfg, progress=False)
    tr2, te2 = generate_synthetic_nmnist(cfg, progress=False)
    np.testing.assert_array_equal(tr1.events, tr2.events)
    np.testing.assert_array_equal(te1.offsets, te2.offsets)
    assert not set(tr1.source_ids) & set(te1.source_ids)
    assert len(tr1) == 2 * len(set(tr1.source_ids)) and len(te1) == 2 * len(set(te1.source_ids))
    # variants of one source differ (jitter), and the labels are load_digits' labels
    assert not np.array_equal(tr1.sample(0), tr1.sample(1))
    np.testing.assert_array_equal(tr1.labels, load_digits().target[tr1.source_ids])
    other = generate_synthetic_nmnist(SyntheticNMNISTConfig(max_sources=30, train_variants=2, test_variants=2, seed=1), progress=False)[0]
    assert not np.array_equal(other.events[:100], tr1.events[:100])


def test_cache_key_follows_every_parameter():
    base = SyntheticNMNISTConfig()
    assert base.cache_key() == SyntheticNMNISTConfig().cache_key()
    assert base.cache_key() != SyntheticNMNISTConfig(contrast_threshold=0.4).cache_key()
    assert base.cache_key() != SyntheticNMNISTConfig(seed=1).cache_key()
