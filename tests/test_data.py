"""Frames from the embedded default and from real datasets in tonic's on-disk layout."""

import shutil

import numpy as np
import pytest
import torch

from sast_deploy.data.datasets import (Binarize, DataConfig, DataError, FrameDataset, class_counts, load_dataset, real_event_dataset,
                              stratified_subset)


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


def test_frames_are_cached_on_disk_and_read_through_a_memory_map(small_data, _isolated_cache):
    cfg, (train, _) = small_data
    assert list(_isolated_cache.glob("frames-synthetic-nmnist-*/meta.json"))
    again, _ = load_dataset(cfg, progress=False)
    assert isinstance(again.packed, np.memmap)
    assert np.array_equal(again.frames.numpy(), train.frames.numpy())
    x, y = again[[3, 0]]  # a batch is unpacked from the packed rows, in the order asked
    assert torch.equal(x, train.frames[[3, 0]].float()) and y.tolist() == train.labels[[3, 0]].tolist()


def test_frame_dataset_packs_bits_losslessly_and_refuses_counts():
    frames = (np.random.default_rng(0).random((5, 3, 2, 7, 5)) < 0.3).astype(np.uint8)  # 210 bins: not a multiple of 8
    ds = FrameDataset(frames, np.arange(5))
    assert ds.packed.shape == (5, 27) and np.array_equal(ds.frames.numpy(), frames)
    assert np.array_equal(ds.subset([4, 1]).frames.numpy(), frames[[4, 1]])
    x, y = ds[1:4]
    assert np.array_equal(x.numpy(), frames[1:4]) and y.tolist() == [1, 2, 3] and ds[2][0].shape == (3, 2, 7, 5)
    with pytest.raises(ValueError, match="binary"):
        FrameDataset(frames * 2, np.arange(5))


def test_stratified_subset_takes_every_class_whatever_the_file_order():
    sorted_by_class = np.repeat(np.arange(10), 1000)  # tonic's N-MNIST listing: digit folder by digit folder
    idx = stratified_subset(sorted_by_class, 5000, seed=0)
    assert class_counts(sorted_by_class[idx], 10) == [500] * 10
    assert len(set(idx.tolist())) == 5000 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, stratified_subset(sorted_by_class, 5000, seed=0))  # seeded
    assert not np.array_equal(idx, stratified_subset(sorted_by_class, 5000, seed=1))
    shuffled = np.random.default_rng(3).permutation(sorted_by_class)
    assert class_counts(shuffled[stratified_subset(shuffled, 5000, seed=0)], 10) == [500] * 10
    unbalanced = np.repeat([0, 1, 2], [600, 300, 100])  # shares in proportion, largest remainder first
    assert class_counts(unbalanced[stratified_subset(unbalanced, 7, seed=0)], 3) == [4, 2, 1]
    assert np.array_equal(stratified_subset(sorted_by_class, 0, seed=0), np.arange(10000))  # 0: all, in order
    assert np.array_equal(stratified_subset(sorted_by_class, 20000, seed=0), np.arange(10000))


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


def _written_tree(tmp_path, name="synthetic-nmnist", **synthetic):
    """A generated dataset written in tonic's layout (sorted by class, as the real one)."""
    from sast_deploy.data.tonic_layout import write_tonic_tree

    cfg = DataConfig(name=name, n_time_bins=8, synthetic=synthetic)
    write_tonic_tree(cfg, tmp_path / "tree", progress=False)
    return cfg, tmp_path / "tree"


@pytest.mark.slow
def test_max_train_and_max_test_of_a_class_sorted_tree_hold_every_class(tmp_path):
    _, root = _written_tree(tmp_path, max_sources=300, train_variants=1, test_variants=1)
    cfg = DataConfig(name="nmnist", data_dir=str(root), n_time_bins=8, max_train=100, max_test=30)
    train, test = load_dataset(cfg, progress=False)
    full_train, full_test = load_dataset(DataConfig(name="nmnist", data_dir=str(root), n_time_bins=8), progress=False)
    for subset, full, n in ((train, full_train, 100), (test, full_test, 30)):
        assert len(subset) == n
        share = np.asarray(class_counts(full.labels, 10)) * n / len(full)  # each class's share of the split
        assert np.all(np.abs(np.asarray(class_counts(subset.labels, 10)) - share) < 1)  # not digits 0-4 only


@pytest.mark.slow
def test_adding_a_recording_to_data_dir_invalidates_the_frame_cache(tmp_path, _isolated_cache):
    _, root = _written_tree(tmp_path, max_sources=60, train_variants=1, test_variants=1)
    cfg = DataConfig(name="nmnist", data_dir=str(root), n_time_bins=8)
    train, _ = load_dataset(cfg, progress=False)
    before = set(_isolated_cache.glob("frames-nmnist-*"))
    digit3 = sorted((root / "NMNIST" / "Train" / "3").glob("*.bin"))
    shutil.copy(digit3[0], digit3[0].parent / "99999.bin")
    again, _ = load_dataset(cfg, progress=False)
    assert len(again) == len(train) + 1 and class_counts(again.labels, 10)[3] == class_counts(train.labels, 10)[3] + 1
    assert len(set(_isolated_cache.glob("frames-nmnist-*")) - before) == 1  # a new cache entry, the old one untouched
    (digit3[0].parent / "99999.bin").write_bytes(digit3[1].read_bytes())  # same name, other content: new key again
    third, _ = load_dataset(cfg, progress=False)
    assert len(set(_isolated_cache.glob("frames-nmnist-*")) - before) == 2


@pytest.mark.parametrize("content, message", [(b"", "empty recording"), (bytes(5 * 40 + 3), "truncated N-MNIST recording")])
def test_empty_or_truncated_recordings_are_named(tmp_path, reference_nmnist, content, message):
    _nmnist_tree(tmp_path, reference_nmnist)
    bad = tmp_path / "NMNIST" / "Train" / "5" / "00001.bin"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=f"{bad}: {message}"):
        load_dataset(DataConfig(name="nmnist", data_dir=str(tmp_path), n_time_bins=12, workers=1), progress=False)


@pytest.mark.slow
def test_parallel_decoding_gives_the_frames_of_one_process(tmp_path, _isolated_cache):
    _, root = _written_tree(tmp_path, max_sources=100, train_variants=1, test_variants=1)
    one = load_dataset(DataConfig(name="nmnist", data_dir=str(root), n_time_bins=8, workers=1), progress=False)
    for entry in _isolated_cache.glob("frames-nmnist-*"):
        shutil.rmtree(entry)
    two = load_dataset(DataConfig(name="nmnist", data_dir=str(root), n_time_bins=8, workers=2), progress=False)
    assert len(one[0]) >= 64  # enough samples that the pool is used
    for a, b in zip(one, two):
        assert np.array_equal(np.asarray(a.packed), np.asarray(b.packed)) and torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("generated, real, synthetic", [
    ("synthetic-nmnist", "nmnist", {"max_sources": 60, "train_variants": 1, "test_variants": 1}),
    ("synthetic-gesture", "dvsgesture", {"max_subjects": 3, "recordings_per_class": 1, "duration_ms": 300.0}),
])
def test_written_tree_reads_back_through_tonic_to_the_same_frames(tmp_path, generated, real, synthetic):
    """Every file written is read by tonic's own reader into the generated recording's frames."""
    cfg, root = _written_tree(tmp_path, generated, **synthetic)
    want_train, want_test = load_dataset(cfg, progress=False)
    factor = 0.25 if real == "dvsgesture" else 1.0
    got_train, got_test = load_dataset(DataConfig(name=real, data_dir=str(root), n_time_bins=8, spatial_factor=factor), progress=False)
    for want, got in ((want_train, got_train), (want_test, got_test)):
        assert len(got) == len(want) and sorted(got.labels.tolist()) == sorted(want.labels.tolist())
        # files are listed by class and name; match each file's frames to a generated recording's
        assert sorted(map(bytes, np.asarray(got.packed))) == sorted(map(bytes, np.asarray(want.packed)))


def test_a_damaged_frame_cache_is_named_not_unpickled(tmp_path, monkeypatch):
    from sast_deploy.data.frames import FrameCacheError

    _, root = _written_tree(tmp_path, max_sources=60, train_variants=1, test_variants=1)
    cfg = DataConfig(name="nmnist", data_dir=str(root), n_time_bins=8)
    monkeypatch.setenv("SAST_DEPLOY_CACHE", str(tmp_path / "cache"))  # this test's cache alone
    load_dataset(cfg, progress=False)
    (folder,) = (tmp_path / "cache").glob("frames-nmnist-*")
    np.save(folder / "test_frames.npy", np.zeros((3, 5), dtype=np.uint8))  # rows that do not fit the labels
    with pytest.raises(FrameCacheError, match="test_frames.npy: uint8 \\(3, 5\\), expected"):
        load_dataset(cfg, progress=False)
    np.save(folder / "test_labels.npy", np.array([object()]), allow_pickle=True)  # a pickle is refused, not run
    with pytest.raises(FrameCacheError, match="damaged frame cache"):
        load_dataset(cfg, progress=False)


def test_atomic_directory_leaves_no_partial_folder(tmp_path):
    from sast_deploy.fileio import atomic_directory

    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary
    with pytest.raises(FileExistsError):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "mine").write_text("x")
            (tmp_path / "out").mkdir()  # another writer finished first
            (tmp_path / "out" / "theirs").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in (tmp_path / "out").iterdir()] == ["theirs"]


# --- the decoding pool (issue 20: a pool that never hangs) ---------------------------------

# One process building a real-format tree's frame cache BUILDS times, each into a fresh cache
# folder that the other processes build at the same moment, while torch's threads and tqdm's
# monitor thread run (as in a command). Each build is bounded: faulthandler dumps the stacks and
# exits when one runs past BUILD_TIMEOUT_S. Prints a hash of the frames per build.
# ROWS_PER_WORKER is lowered so that a test-sized tree gets a pool of two workers.
CACHE_BUILDER = r"""
import faulthandler, hashlib, os, sys
import numpy as np, torch
from sast_deploy.data import frames
from sast_deploy.data.datasets import DataConfig, load_dataset
frames.ROWS_PER_WORKER = 16
torch.ones(128, 128) @ torch.ones(128, 128)
data, cache, builds, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
for build in range(builds):
    os.environ["SAST_DEPLOY_CACHE"] = os.path.join(cache, str(build))
    faulthandler.dump_traceback_later(timeout, exit=True)
    train, test = load_dataset(DataConfig(name="nmnist", data_dir=data, n_time_bins=10, workers=2), progress=True)
    faulthandler.cancel_dump_traceback_later()
    print(hashlib.sha256(np.asarray(train.packed).tobytes() + np.asarray(test.packed).tobytes()).hexdigest(), flush=True)
"""
CONCURRENT_PROCESSES, BUILDS, BUILD_TIMEOUT_S = 3, 3, 120


def _frames_hash(train, test) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(train.packed).tobytes() + np.asarray(test.packed).tobytes()).hexdigest()


@pytest.mark.slow
def test_concurrent_frame_cache_builds_finish_in_order_and_never_hang(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from helpers import SMALL_SYNTHETIC
    from sast_deploy.data.tonic_layout import write_tonic_tree

    data = tmp_path / "data"
    write_tonic_tree(DataConfig(synthetic=SMALL_SYNTHETIC), data, {"train": 128, "test": 64}, progress=False)
    monkeypatch.setenv("SAST_DEPLOY_CACHE", str(tmp_path / "reference"))
    expected = _frames_hash(*load_dataset(DataConfig(name="nmnist", data_dir=str(data), n_time_bins=10, workers=1),
                                          progress=False))  # decoded in this process
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    argv = [sys.executable, "-c", CACHE_BUILDER, str(data), str(tmp_path / "caches"), str(BUILDS), str(BUILD_TIMEOUT_S)]
    procs = [subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(CONCURRENT_PROCESSES)]
    try:
        outs = [p.communicate(timeout=60 + BUILDS * BUILD_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * CONCURRENT_PROCESSES, [err[-3000:] for _, err in outs]  # stacks of a hang
    assert [out.split() for out, _ in outs] == [[expected] * BUILDS] * CONCURRENT_PROCESSES


def test_a_recording_that_fails_in_a_worker_is_named_and_the_pool_is_gone(small_data, monkeypatch):
    import multiprocessing

    from sast_deploy.data import frames
    from sast_deploy.data.datasets import FrameDecoder, _SampleFrames

    cfg, _ = small_data
    monkeypatch.setattr(frames, "ROWS_PER_WORKER", 8)
    good = np.zeros(3, dtype=[("x", "<i8"), ("y", "<i8"), ("p", "<i8"), ("t", "<i8")])
    items = [(good, f"recording {i}") for i in range(40)]
    items[29] = (np.zeros((3, 2)), "recording 29")  # no fields: tonic cannot read it
    before = set(multiprocessing.active_children())
    rows = frames.decoded_rows(_SampleFrames(FrameDecoder(cfg), None), items, len(items), 2, ("sast_deploy.data.datasets",))
    with pytest.raises(DataError, match="recording 29: cannot turn its events into frames"):
        list(rows)
    assert set(multiprocessing.active_children()) <= before
