"""Frames from the embedded default and from real datasets in tonic's on-disk layout."""

import shutil

import numpy as np
import pytest

from sast_deploy.data import Binarize, DataConfig, DataError, load_dataset, real_event_dataset


def test_binarize_clips_counts_to_spikes():
    frames = np.array([[0, 1, 3], [7, 0, 2]])
    np.testing.assert_array_equal(Binarize()(frames), [[0, 1, 1], [1, 0, 1]])


def test_synthetic_frames_are_binary_time_first_and_split_by_source(small_data):
    cfg, (train, test) = small_data
    x, y = train[list(range(4))]
    assert x.shape == (4, cfg.n_time_bins, 2, 34, 34)
    assert set(np.unique(train.frames.numpy())) <= {0, 1}
    assert 0.005 < float(train.frames.float().mean()) < 0.5  # real activity, not empty frames
    assert not set(train.source_ids) & set(test.source_ids)
    assert set(y.tolist()) <= set(range(10))


def test_frames_are_cached_on_disk(small_data, _isolated_cache):
    cfg, (train, _) = small_data
    assert list(_isolated_cache.glob("frames-synthetic-nmnist-*.npz"))
    again, _ = load_dataset(cfg, progress=False)
    assert np.array_equal(again.frames.numpy(), train.frames.numpy())


def _nmnist_tree(root, sample):
    """tonic's N-MNIST layout: <root>/NMNIST/{Train,Test}/<digit>/<id>.bin (no archive beside it)."""
    for split, digits in (("Train", (3, 5)), ("Test", (7,))):
        for d in digits:
            folder = root / "NMNIST" / split / str(d)
            folder.mkdir(parents=True)
            for i in range(2):
                shutil.copy(sample, folder / f"{i:05d}.bin")


def test_nmnist_reader_on_genuine_recording_in_tonic_layout(tmp_path, reference_nmnist):
    _nmnist_tree(tmp_path, reference_nmnist)
    cfg = DataConfig(name="nmnist", data_dir=str(tmp_path), n_time_bins=12)
    ds = real_event_dataset(cfg, train=True)
    assert len(ds) == 4 and sorted(set(ds.targets)) == [3, 5]
    events, label = ds[0]
    assert len(events) == 4325 and label == 3
    train, test = load_dataset(cfg, progress=False)
    assert train.frames.shape == (4, 12, 2, 34, 34) and test.labels.tolist() == [7, 7]
    # the same transform chain as the synthetic set: binary, and every bin of the 311 ms has events
    assert train.frames.max() == 1 and bool((train.frames[0].sum(dim=(1, 2, 3)) > 0).all())


def test_dvsgesture_in_tonic_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("ibmGestureTrain", "ibmGestureTest"):
        for user, cls in (("user01_fluorescent", 0), ("user02_led", 4)):
            folder = tmp_path / "DVSGesture" / split / user
            folder.mkdir(parents=True, exist_ok=True)
            n = 3000  # tonic's .npy rows: x, y, p, t (ms)
            ev = np.stack([rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n), np.sort(rng.uniform(0, 1500, n))], 1)
            np.save(folder / f"{cls}.npy", ev)
    cfg = DataConfig(name="dvsgesture", data_dir=str(tmp_path), n_time_bins=8, spatial_factor=0.25)
    train, test = load_dataset(cfg, progress=False)
    assert train.frames.shape == (2, 8, 2, 32, 32)
    assert sorted(train.labels.tolist()) == [0, 4]
    assert train.frames.max() == 1


def test_missing_real_dataset_names_the_path(tmp_path):
    with pytest.raises(DataError, match="data_dir is required"):
        load_dataset(DataConfig(name="nmnist"))
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        load_dataset(DataConfig(name="nmnist", data_dir=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no nmnist recordings found"):
        real_event_dataset(DataConfig(name="nmnist", data_dir=str(tmp_path / "empty")), train=True)


def test_bad_data_config_is_rejected():
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        DataConfig(name="mnist")
    with pytest.raises(DataError, match="n_time_bins"):
        DataConfig(n_time_bins=0)
    with pytest.raises(DataError, match=r"unknown key data\.synthetic\.nope"):
        DataConfig(synthetic={"nope": 1})
