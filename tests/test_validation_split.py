"""The validation split (data.val_fraction): how it is cut, and what training reads from it."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import sast_deploy.training.train as train_mod
from sast_deploy.data.datasets import DataConfig, DataError, DatasetSplits, load_splits, split_validation, validation_indices
from sast_deploy.deploy.emulator import emulate
from sast_deploy.deploy.quantize import load_spec, quantize
from sast_deploy.errors import RunError
from sast_deploy.training.evaluate import accuracy_pct
from sast_deploy.training.runs import load_run, read_checkpoint, read_metrics
from sast_deploy.training.train import train

from helpers import tiny_recipe


# --- the cut -------------------------------------------------------------------------------


def _digits_like(n_sources=300, variants=3, n_classes=10, seed=0):
    """Labels and source ids of a split where each source (one class) has ``variants`` recordings."""
    rng = np.random.default_rng(seed)
    source_class = rng.integers(0, n_classes, n_sources)
    sources = np.repeat(np.arange(n_sources), variants)
    order = rng.permutation(len(sources))  # recordings in no particular order
    return source_class[sources][order], sources[order] + 1000


def test_split_keeps_every_source_on_one_side_and_is_stratified_by_class():
    labels, sources = _digits_like()
    val = validation_indices(labels, sources, 0.1, seed=0)
    train = np.setdiff1d(np.arange(len(labels)), val)
    assert not set(sources[val]) & set(sources[train])  # no source straddles the split
    assert len(np.unique(sources[val])) == 30  # 10 % of the 300 sources, all their recordings
    assert len(val) == 90
    source_classes = lambda idx: np.bincount([labels[idx][sources[idx] == s][0] for s in np.unique(sources[idx])], minlength=10)  # noqa: E731
    per_class_sources, all_sources = source_classes(val), source_classes(np.arange(len(labels)))
    assert np.all(np.abs(per_class_sources - 0.1 * all_sources) <= 1)  # each class's share, rounded


def test_split_is_seeded_and_independent_of_the_recordings_order():
    labels, sources = _digits_like()
    a = validation_indices(labels, sources, 0.1, seed=0)
    assert np.array_equal(a, validation_indices(labels, sources, 0.1, seed=0))
    assert not np.array_equal(a, validation_indices(labels, sources, 0.1, seed=1))
    perm = np.random.default_rng(5).permutation(len(labels))
    b = validation_indices(labels[perm], sources[perm], 0.1, seed=0)
    assert set(sources[a]) == set(sources[perm][b])  # the same sources, whatever the files' order


def test_split_without_sources_is_stratified_over_recordings():
    labels = np.repeat(np.arange(5), [100, 50, 50, 30, 20])
    val = validation_indices(labels, None, 0.2, seed=3)
    assert np.bincount(labels[val], minlength=5).tolist() == [20, 10, 10, 6, 4]


def test_sources_that_span_classes_go_whole_into_one_side():
    # DVS Gesture: a subject performs every gesture
    subjects = np.repeat(np.arange(20), 11 * 2)
    labels = np.tile(np.repeat(np.arange(11), 2), 20)
    val = validation_indices(labels, subjects, 0.1, seed=0)
    assert len(np.unique(subjects[val])) == 2 and len(val) == 2 * 22
    assert not set(subjects[val]) & set(np.delete(subjects, val))
    assert np.bincount(labels[val], minlength=11).tolist() == [4] * 11


def test_too_few_sources_for_a_split_is_a_clear_error():
    with pytest.raises(DataError, match="val_fraction"):
        validation_indices(np.array([0, 0, 1]), np.array([7, 7, 7]), 0.1, seed=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30)), min_size=4, max_size=200),
       st.floats(0.01, 0.49), st.integers(0, 2**32 - 1))
def test_split_properties(rows, fraction, seed):
    labels = np.array([label for label, _ in rows])
    sources = np.array([source for _, source in rows])
    n_sources = len(np.unique(sources))
    if max(1, round(fraction * n_sources)) >= n_sources:
        with pytest.raises(DataError):
            validation_indices(labels, sources, fraction, seed)
        return
    val = validation_indices(labels, sources, fraction, seed)
    assert np.all(np.diff(val) > 0) and len(val) < len(labels)
    assert not set(sources[val]) & set(np.delete(sources, val))
    assert len(np.unique(sources[val])) == max(1, round(fraction * n_sources))
    assert np.array_equal(val, validation_indices(labels, sources, fraction, seed))


def test_val_fraction_is_checked():
    for bad in (-0.1, 0.5, 0.9):
        with pytest.raises(DataError, match="data.val_fraction"):
            DataConfig(val_fraction=bad)


def test_splits_of_a_recipe_partition_its_training_recordings(small_data):
    cfg, (recordings, test) = small_data
    splits = load_splits(cfg, progress=False)
    assert isinstance(splits, DatasetSplits) and len(splits.test) == len(test)
    assert len(splits.train) + len(splits.val) == len(recordings)
    assert not set(splits.train.source_ids) & set(splits.val.source_ids)
    # views of the cached frames: the same samples, read from the memory map on demand
    val_idx = validation_indices(recordings.labels.numpy(), recordings.source_ids, cfg.val_fraction, cfg.subset_seed)
    assert torch.equal(splits.val.frames, recordings.frames_at(val_idx))
    assert torch.equal(splits.val[[0, 2]][0], recordings[[int(val_idx[0]), int(val_idx[2])]][0])
    none = split_validation(recordings, test, DataConfig(**{**cfg.__dict__, "val_fraction": 0.0}))
    assert none.val is None and none.train is recordings


# --- training on it ------------------------------------------------------------------------


@pytest.mark.slow
def test_epochs_read_the_validation_split_and_the_test_split_is_read_once(tmp_path, small_data, monkeypatch):
    _, data = small_data
    splits = split_validation(*data, tiny_recipe().data)
    seen = []
    real = train_mod.evaluate
    monkeypatch.setattr(train_mod, "evaluate", lambda model, ds, *a, **k: seen.append(len(ds)) or real(model, ds, *a, **k))
    metrics = train(tiny_recipe(**{"training.epochs": 3}), tmp_path, progress=False, data=splits).metrics
    assert seen == [len(splits.val)] * 3 + [len(splits.test)]
    assert all({"val_surrogate_accuracy", "val_hard_accuracy"} <= set(h) and "hard_accuracy" not in h for h in metrics["history"])
    v = metrics["validation"]
    assert v["hard_accuracy"] == metrics["history"][-1]["val_hard_accuracy"]
    assert v["n_samples"] == len(splits.val) and sum(v["class_counts"]) == len(splits.val)
    # the deployed numbers are the bit-exact emulator's on the validation split
    model, _, _ = load_run(tmp_path)
    emulation = emulate(quantize(model, load_spec()), splits.val.frames)
    assert v["emulator_accuracy"] == accuracy_pct(emulation.counts, splits.val.labels)
    assert v["emulator_synops_per_sample"] == pytest.approx(emulation.synops_per_sample)
    assert read_metrics(tmp_path)["validation"] == v


@pytest.mark.slow
def test_epoch_callback_sees_each_epoch_and_its_exception_leaves_a_resumable_run(tmp_path, small_data):
    _, data = small_data
    recipe = tiny_recipe(**{"training.epochs": 3})
    rows = []
    straight = train(recipe, tmp_path / "straight", progress=False, data=data, epoch_callback=lambda e, r: rows.append((e, r))).metrics
    assert [e for e, _ in rows] == [1, 2, 3] and [r for _, r in rows] == straight["history"]

    class Stop(Exception):
        pass

    def stop_after_two(epoch, row):
        assert read_checkpoint(tmp_path / "cut" / "checkpoint.pt")[0].epoch == epoch  # written before the call
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(recipe, tmp_path / "cut", progress=False, data=data, epoch_callback=stop_after_two)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = train(recipe, tmp_path / "cut", progress=False, data=data).metrics
    timeless = lambda history: [{k: v for k, v in row.items() if k != "train_seconds"} for row in history]  # noqa: E731
    assert timeless(resumed["history"]) == timeless(straight["history"])
    assert resumed["hard_accuracy"] == straight["hard_accuracy"] and resumed["validation"] == straight["validation"]


@pytest.mark.slow
def test_a_network_that_cannot_be_quantized_records_why(tmp_path, small_data):
    _, data = small_data
    # a first-layer threshold of 1e-6 rounds to 0 at any scale the weights allow
    metrics = train(tiny_recipe(**{"training.epochs": 1, "model.v_th_scale": "[1e-6, 1.0]"}), tmp_path, progress=False, data=data).metrics
    v = metrics["validation"]
    assert v["emulator_accuracy"] is None and v["emulator_synops_per_sample"] is None
    assert "threshold rounds to 0" in v["emulator_error"]
    assert read_metrics(tmp_path)["validation"]["emulator_error"] == v["emulator_error"]


def test_read_metrics_checks_the_file_and_loads_old_ones(tmp_path):
    old = {"surrogate_accuracy": 90.0, "hard_accuracy": 80, "transfer_gap_pp": 10.0, "history": []}
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    assert read_metrics(tmp_path) == old  # written before the validation split: no block
    (tmp_path / "metrics.json").write_text(json.dumps({**old, "validation": {"surrogate_accuracy": "high"}}))
    with pytest.raises(RunError, match=r"metrics.json.*validation"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(RunError, match="metrics.json"):
        read_metrics(tmp_path)
    with pytest.raises(RunError, match="not found"):
        read_metrics(tmp_path / "nothing")


def test_a_run_saved_before_the_split_reads_as_val_fraction_zero(trained_run, tmp_path):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(trained_run, run)
    blob = torch.load(run / "model.pt", weights_only=True)
    del blob["recipe"]["data"]["val_fraction"]
    torch.save(blob, run / "model.pt")
    assert load_run(run)[1].data.val_fraction == 0.0  # it trained on every training recording
