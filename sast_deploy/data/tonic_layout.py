"""The generated datasets written as real ones: N-MNIST ``.bin`` files and DVS Gesture ``.npy``
files in tonic's on-disk layout, so that users can run the real-data path (``data.name =
nmnist`` / ``dvsgesture`` with ``data.data_dir``) end to end on their own machine, and the
benchmarks can build a dataset of N-MNIST's size.

Layouts (what ``tonic.datasets.NMNIST`` and ``DVSGesture`` list):
  ``<out>/NMNIST/{Train,Test}/<digit>/<id>.bin``
  ``<out>/DVSGesture/{ibmGestureTrain,ibmGestureTest}/user<NN>_<lighting>/<class>.npy``

tonic has readers for these formats but no writers; the encoders below are the inverses of
``tonic.io.read_mnist_file`` and of ``DVSGesture.__getitem__``, and the tests read every
written file back through tonic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from ..fileio import atomic_directory
from .datasets import DATASETS, DataConfig, DataError, Recordings, split_recordings, stratified_subset

#: N-MNIST events: 5 bytes each, x, y, polarity in bit 7 of byte 2, a 23-bit timestamp (us)
NMNIST_MAX_T_US = (1 << 23) - 1
NMNIST_OVERFLOW_Y = 240  # y = 240 marks a timestamp-overflow event in the format, never a pixel


def encode_nmnist(events: np.ndarray) -> bytes:
    """One recording in N-MNIST's binary format (what ``tonic.io.read_mnist_file`` reads)."""
    x, y, t, p = (np.asarray(events[k], dtype=np.int64) for k in ("x", "y", "t", "p"))
    if len(t) and (t.min() < 0 or t.max() > NMNIST_MAX_T_US):
        raise DataError(f"N-MNIST timestamps must lie in [0, {NMNIST_MAX_T_US}] us, got [{t.min()}, {t.max()}]")
    if len(x) and (x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() > 255 or (y == NMNIST_OVERFLOW_Y).any()):
        raise DataError("N-MNIST pixel coordinates must lie in [0, 255] (y != 240)")
    raw = np.empty((len(t), 5), dtype=np.uint8)
    raw[:, 0], raw[:, 1] = x, y
    raw[:, 2] = ((p & 1) << 7) | ((t >> 16) & 0x7F)
    raw[:, 3], raw[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    return raw.tobytes()


def encode_dvsgesture(events: np.ndarray, scale: int = 1) -> np.ndarray:
    """One recording as tonic's DVS Gesture ``.npy`` rows (x, y, p, t in ms, float64), pixel
    coordinates multiplied by ``scale`` (tonic's ``Downsample(1 / scale)`` gives them back).

    tonic multiplies t by 1000 and truncates to integer microseconds; t is written as
    (t_us + 0.5) / 1000 so that this round trip gives t_us back exactly (a bare t_us / 1000
    can come back one microsecond short through float rounding)."""
    rows = np.empty((len(events), 4), dtype=np.float64)
    rows[:, 0], rows[:, 1], rows[:, 2] = events["x"] * scale, events["y"] * scale, events["p"]
    rows[:, 3] = (np.asarray(events["t"], dtype=np.float64) + 0.5) / 1000.0
    return rows


def write_nmnist(split_folder: Path, file_no: int, of_class: int, events: np.ndarray, label: int, scale: int) -> None:
    assert scale == 1, "the N-MNIST-like generators have N-MNIST's 34x34 sensor"
    folder = split_folder / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{file_no:05d}.bin").write_bytes(encode_nmnist(events))


def write_dvsgesture(split_folder: Path, file_no: int, of_class: int, events: np.ndarray, label: int, scale: int) -> None:
    # tonic takes the label from the file name (<class>.npy), so a (user, lighting) folder
    # holds one recording per class: the k-th recording of each class goes to user k
    folder = split_folder / f"user{of_class:02d}_synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{label}.npy", encode_dvsgesture(events, scale))


@dataclass(frozen=True)
class Layout:
    """A real dataset's folders and the writer of one recording into them."""

    real_name: str  # the data.name that reads the tree
    folder: str  # the dataset folder under <out> (tonic's class name)
    split_folders: Dict[str, str]
    #: (split folder, file number in the split, number of this class so far, events, label, pixel scale)
    write: Callable[[Path, int, int, np.ndarray, int, int], None]

    def pixel_scale(self, cfg: DataConfig) -> int:
        """The real sensor's size over the generated one's (32x32 gestures go to DVS128 as 4x4
        pixel blocks; ``data.spatial_factor = 0.25`` reads them back)."""
        real = DATASETS[self.real_name].sensor_size[0]
        generated = cfg.spec.sensor_size[0]
        if real % generated:
            raise DataError(f"data.synthetic: a {generated}-pixel sensor does not tile the {real}-pixel {self.real_name} sensor")
        return real // generated


#: generated dataset -> the layout of the real dataset it imitates
LAYOUTS = {
    "synthetic-nmnist": Layout("nmnist", "NMNIST", {"train": "Train", "test": "Test"}, write_nmnist),
    "fontdigits-nmnist": Layout("nmnist", "NMNIST", {"train": "Train", "test": "Test"}, write_nmnist),
    "synthetic-gesture": Layout("dvsgesture", "DVSGesture", {"train": "ibmGestureTrain", "test": "ibmGestureTest"}, write_dvsgesture),
}


def cyclic_subset(rec: Recordings, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` recordings of ``rec``: a seeded class-stratified subset when ``n`` is at
    most its size, else every recording repeated in turn (byte-identical copies) up to ``n``."""
    if n <= len(rec):
        return stratified_subset(rec.labels, n, seed)
    return np.arange(n) % len(rec)


def write_tonic_tree(cfg: DataConfig, out: str | Path, counts: Optional[Dict[str, int]] = None,
                     progress: bool = True) -> Path:
    """Write the generated dataset ``cfg`` (its recipe subsets applied) as files in tonic's
    layout under ``out``; ``counts`` = {"train": N, "test": M} picks or repeats recordings to
    reach N and M files (both, each >= 1). Returns the dataset folder. The folder is written beside its final
    name and renamed when complete; an existing one is an error, never overwritten."""
    from tqdm import tqdm

    if counts is not None and (set(counts) != {"train", "test"} or min(counts.values()) < 1):
        shown = ", ".join(f"{k}={v}" for k, v in counts.items())
        raise DataError(f"file counts: give both train and test, each >= 1, got {shown}")
    if cfg.name not in LAYOUTS:
        raise DataError(f"data.name: only the generated datasets ({', '.join(LAYOUTS)}) can be written, not {cfg.name!r}")
    layout = LAYOUTS[cfg.name]
    scale = layout.pixel_scale(cfg)
    final = Path(out) / layout.folder
    if final.exists():
        raise DataError(f"{final}: already exists (remove it, or choose another --out)")
    with atomic_directory(final) as tmp:
        for split in ("train", "test"):
            rec = split_recordings(cfg, split, progress)
            idx = np.arange(len(rec)) if not counts else cyclic_subset(rec, counts[split], cfg.subset_seed)
            labels = rec.labels[idx]
            seen = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int64)
            for i, (j, label) in enumerate(zip(tqdm(idx, desc=f"write {split}", disable=not progress, unit="file"), labels)):
                layout.write(tmp / layout.split_folders[split], i, int(seen[label]), rec.events(int(j)), int(label), scale)
                seen[label] += 1
    return final
