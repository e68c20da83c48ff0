"""The second digit source (typeset digits through the default's camera) and scoring a run on it."""

import json

import numpy as np
import pytest
import tonic

from sast_deploy.cli import main
from sast_deploy.data.datasets import DataConfig, DataError, load_dataset
from sast_deploy.data.fontdigits import FONT_FILES, FontDigitsConfig, Jitter, generate_fontdigits, glyph_image, source_id
from sast_deploy.data.synthetic import EVENT_DTYPE, event_statistics

# 2 fonts (one per split), one recording per glyph: 10 + 10 recordings
TINY = {"max_fonts": 2, "train_variants": 1, "test_variants": 1}


@pytest.fixture(scope="module")
def tiny_splits():
    return generate_fontdigits(FontDigitsConfig(**TINY), progress=False)


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    from sast_deploy.data.tonic_layout import write_tonic_tree

    root = tmp_path_factory.mktemp("fontdigits")
    write_tonic_tree(DataConfig(name="fontdigits-nmnist", n_time_bins=10, synthetic=TINY), root, progress=False)
    return root


def test_fonts_ship_with_matplotlib_and_every_digit_has_ink():
    """Every font (with one digit each) and every digit (of one font) rasterises to a stroke."""
    cfg = FontDigitsConfig()
    glyphs = [(font, k % 10) for k, font in enumerate(FONT_FILES)] + [(FONT_FILES[0], d) for d in range(10)]
    for font, digit in glyphs:
        ink = glyph_image(font, digit, Jitter(), cfg)
        assert ink.shape == (28, 28) and 0 <= ink.min() and ink.max() <= 1
        assert 20 < ink.sum() < 0.6 * ink.size, (font, digit)  # a stroke, neither empty nor a filled square


def test_counters_stay_open():
    """0 and 8 have holes: the centre of a 0 is dark although the pixels left and right of it are ink."""
    ink = glyph_image("DejaVuSans.ttf", 0, Jitter(), FontDigitsConfig(optics_blur_px=0.0))
    assert ink[14, 14] < 0.1 and ink[14].max() > 0.9


def test_jitter_and_stroke_change_the_image():
    cfg = FontDigitsConfig()
    plain = glyph_image("DejaVuSans.ttf", 3, Jitter(), cfg)
    assert glyph_image("DejaVuSans.ttf", 3, Jitter(stroke_px=0.75), cfg).sum() > plain.sum() + 10
    assert glyph_image("DejaVuSans.ttf", 3, Jitter(stroke_px=-0.5), cfg).sum() < plain.sum() - 10
    rotated = glyph_image("DejaVuSans.ttf", 3, Jitter(rotation_deg=15.0), cfg)
    assert np.abs(rotated - plain).sum() > 20


@pytest.mark.slow
def test_split_by_font_balanced_and_deterministic(tiny_splits):
    train, test = tiny_splits
    assert len(train) == len(test) == 10
    for split in (train, test):
        assert np.bincount(split.labels, minlength=10).tolist() == [1] * 10  # every digit once per font
        np.testing.assert_array_equal(split.labels, split.source_ids % 10)
    assert not set(train.source_ids // 10) & set(test.source_ids // 10)  # no font on both sides
    again_train, again_test = generate_fontdigits(FontDigitsConfig(**TINY), progress=False)
    np.testing.assert_array_equal(train.events, again_train.events)
    np.testing.assert_array_equal(test.offsets, again_test.offsets)
    other = generate_fontdigits(FontDigitsConfig(**TINY, seed=1), progress=False)[1]
    assert not np.array_equal(other.events[:200], test.events[:200])


def test_source_ids_name_the_glyph():
    assert source_id(0, 7) == 7 and source_id(3, 0) == 30


@pytest.mark.slow
def test_events_plausible_against_the_real_recording(reference_nmnist):
    """As the default is calibrated: events per recording, ON/OFF ratio, duration, saccade profile."""
    from sast_deploy.data.fontdigits import _recording_task

    cfg = FontDigitsConfig()
    ref = event_statistics(tonic.io.read_mnist_file(str(reference_nmnist), dtype=EVENT_DTYPE))
    seeds = np.random.SeedSequence(7).spawn(40)
    stats = [event_statistics(_recording_task((k % len(FONT_FILES), k % 10, seeds[k], cfg))) for k in range(40)]
    mean = lambda key: float(np.mean([s[key] for s in stats]))  # noqa: E731
    rel = lambda a, b: abs(a - b) / abs(b)  # noqa: E731
    assert rel(mean("n_events"), ref["n_events"]) < 0.3
    on_off = lambda f: f / (1 - f)  # noqa: E731
    assert rel(on_off(mean("on_fraction")), on_off(ref["on_fraction"])) < 0.3
    assert rel(mean("duration_ms"), ref["duration_ms"]) < 0.3
    profile = np.mean([s["saccade_profile"] for s in stats], axis=0)
    ref_profile = np.asarray(ref["saccade_profile"])
    assert np.abs(profile - ref_profile).sum() / ref_profile.sum() < 0.3


@pytest.mark.slow
def test_no_image_is_a_load_digits_image():
    """Every typeset digit, brought to load_digits' 8x8 grid and 0..16 levels, is far from every
    load_digits image: farther than the typical nearest neighbour within load_digits itself."""
    from scipy.spatial.distance import cdist
    from sklearn.datasets import load_digits

    cfg = FontDigitsConfig()
    digits = load_digits().data  # [1797, 64], 0..16
    ours = np.stack([_to_8x8(glyph_image(font, d, Jitter(), cfg)) for font in FONT_FILES for d in range(10)])
    nearest = cdist(ours, digits).min(axis=1)
    assert nearest.min() > 0  # no typeset digit coincides with a handwritten one
    within = cdist(digits[:300], digits)
    within[np.arange(300), np.arange(300)] = np.inf
    assert np.median(nearest) > np.median(within.min(axis=1))


def _to_8x8(ink: np.ndarray) -> np.ndarray:
    """A 28x28 ink image at load_digits' resolution: zoomed to 8x8, 0..16 integers."""
    from scipy import ndimage

    return np.clip(np.round(16 * ndimage.zoom(ink, 8 / 28, order=1)), 0, 16).ravel()


def test_bad_config_is_one_data_error():
    with pytest.raises(DataError, match="max_fonts"):
        DataConfig(name="fontdigits-nmnist", synthetic={"max_fonts": 1})
    with pytest.raises(DataError, match="test_fraction"):
        DataConfig(name="fontdigits-nmnist", synthetic={"test_fraction": 1.0})


def test_written_tree_reads_through_the_real_nmnist_path(tiny_tree):
    want_train, want_test = load_dataset(DataConfig(name="fontdigits-nmnist", n_time_bins=10, synthetic=TINY), progress=False)
    got_train, got_test = load_dataset(DataConfig(name="nmnist", data_dir=str(tiny_tree), n_time_bins=10), progress=False)
    for want, got in ((want_train, got_train), (want_test, got_test)):
        assert sorted(got.labels.tolist()) == sorted(want.labels.tolist()) == list(range(10))
        assert sorted(map(bytes, np.asarray(got.packed))) == sorted(map(bytes, np.asarray(want.packed)))


def test_a_run_scored_on_the_second_source(trained_run, tiny_tree, capsys):
    """evaluate --data-set: the run's surrogate, hard and emulator accuracy on the other test split."""
    from sast_deploy.analysis.transfer import evaluate_run_on

    other = ["data.name=nmnist", f"data.data_dir={tiny_tree}"]
    result = evaluate_run_on(trained_run, other)
    assert result["dataset"] == "nmnist" and result["n_samples"] == 10 and result["data"]["n_time_bins"] == 10
    for key in ("surrogate_accuracy", "hard_accuracy", "emulator_accuracy"):
        assert 0 <= result[key] <= 100 and round(result[key], 6) % 10 == 0  # whole samples of 10
    assert result["transfer_gap_pp"] == pytest.approx(result["surrogate_accuracy"] - result["hard_accuracy"])
    assert main(["evaluate", str(trained_run), "--emulator", "--quiet", *(a for kv in other for a in ("--data-set", kv))]) == 0
    printed = json.loads(capsys.readouterr().out)
    for key in ("surrogate_accuracy", "hard_accuracy", "emulator_accuracy", "n_samples"):
        assert printed[key] == pytest.approx(result[key])


@pytest.mark.parametrize("overrides, message", [
    (["data.name=synthetic-gesture"], "11 classes"),
    (["data.name=nmnist", "data.data_dir=x", "data.n_time_bins=20"], "n_time_bins"),
    (["model.hidden=[4]"], "only data.KEY=VALUE"),
    (["data.name=no-such"], "unknown dataset"),
])
def test_another_dataset_must_fit_the_run(trained_run, overrides, message, capsys):
    args = [a for kv in overrides for a in ("--data-set", kv)]
    assert main(["evaluate", str(trained_run), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err
