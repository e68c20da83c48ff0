"""Stage 1, data: event datasets turned into binary spike frames [N, T, P, H, W].

Datasets:
  ``synthetic-nmnist``  embedded default, generated offline (see :mod:`sast_deploy.synthetic`)
  ``synthetic-gesture`` embedded DVS-Gesture-like default, 11 classes on 32x32
                        (see :mod:`sast_deploy.synthetic_gesture`)
  ``nmnist``            real N-MNIST through ``tonic.datasets.NMNIST``
  ``dvsgesture``        real DVS128 Gesture through ``tonic.datasets.DVSGesture``

All go through the same tonic transforms (optional ``Denoise``, optional ``Downsample``,
``ToFrame(n_time_bins=T)``) and :class:`Binarize`, so that every frame bin is a spike (1) or
not (0), which is what a neuromorphic chip's input port takes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import SastDeployError
from .fileio import atomic_save_npz
from .synthetic import EventSplit, SyntheticNMNISTConfig, generate_synthetic_nmnist
from .synthetic_gesture import SyntheticGestureConfig, generate_synthetic_gesture
from .validation import file_data, validated

DATASETS = ("synthetic-nmnist", "synthetic-gesture", "nmnist", "dvsgesture")
N_CLASSES = {"synthetic-nmnist": 10, "synthetic-gesture": 11, "nmnist": 10, "dvsgesture": 11}
SENSOR_SIZE = {"synthetic-nmnist": (34, 34, 2), "synthetic-gesture": (32, 32, 2), "nmnist": (34, 34, 2),
               "dvsgesture": (128, 128, 2)}
#: The generated datasets: their parameter dataclass (``data.synthetic`` overrides it) and generator.
SYNTHETIC = {
    "synthetic-nmnist": (SyntheticNMNISTConfig, generate_synthetic_nmnist),
    "synthetic-gesture": (SyntheticGestureConfig, generate_synthetic_gesture),
}


class DataError(SastDeployError, ValueError):
    """A dataset could not be found or read; the message names the path or field."""


@dataclass(frozen=True)
class Binarize:
    """Clip event-count frames to {0, 1}: a bin holds a spike if it holds any event.

    tonic's ``ToFrame`` yields counts; Loihi's input ports take binary spikes.
    """

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return (frames > 0).astype(np.uint8)


@file_data
@dataclass(frozen=True)
class DataConfig:
    """The data section of a recipe. Times in microseconds (us)."""

    name: str = "synthetic-nmnist"
    n_time_bins: int = 30
    denoise_us: int = 0  # tonic Denoise filter_time; 0 = off
    spatial_factor: float = 1.0  # tonic Downsample factor (e.g. 0.25 for 128x128 DVS Gesture -> 32x32)
    data_dir: str = ""  # root of the real dataset in tonic's layout
    download: bool = False  # let tonic download the real dataset when absent
    max_train: int = 0  # 0 = all; otherwise the first N (deterministic) training samples
    max_test: int = 0
    synthetic: Dict[str, object] = field(default_factory=dict)  # generator overrides (SyntheticNMNISTConfig, SyntheticGestureConfig)

    def __post_init__(self):
        if self.name not in DATASETS:
            raise DataError(f"data.name: unknown dataset {self.name!r}; known: {', '.join(DATASETS)}")
        if self.n_time_bins < 1:
            raise DataError(f"data.n_time_bins must be >= 1, got {self.n_time_bins}")
        if not 0 < self.spatial_factor <= 1:
            raise DataError(f"data.spatial_factor must be in (0, 1], got {self.spatial_factor}")
        if self.synthetic and self.name not in SYNTHETIC:
            raise DataError(f"data.synthetic: only the generated datasets ({', '.join(SYNTHETIC)}) take it, not {self.name!r}")
        if self.name in SYNTHETIC:
            self.synthetic_config()

    def synthetic_config(self):
        """The generator's parameters (:class:`SyntheticNMNISTConfig` or :class:`SyntheticGestureConfig`)."""
        if self.name not in SYNTHETIC:
            raise DataError(f"{self.name!r} is not a generated dataset")
        return validated(SYNTHETIC[self.name][0], dict(self.synthetic), "", DataError, prefix="data.synthetic")

    def frame_sensor_size(self) -> Tuple[int, int, int]:
        w, h, p = SENSOR_SIZE[self.name]
        return (int(w * self.spatial_factor), int(h * self.spatial_factor), p)

    def input_shape(self) -> Tuple[int, int, int]:
        """Shape of one time bin: (polarity, height, width)."""
        w, h, p = self.frame_sensor_size()
        return (p, h, w)


def cache_dir() -> Path:
    """Where generated data and frames are cached (outside git): $SAST_DEPLOY_CACHE or ~/.cache/sast-deploy."""
    return Path(os.environ.get("SAST_DEPLOY_CACHE", Path.home() / ".cache" / "sast-deploy"))


def load_synthetic_events(data: DataConfig, progress: bool = True) -> Tuple[EventSplit, EventSplit]:
    """The events of a generated dataset: generated once and cached on disk, keyed by the
    generator's parameters."""
    cfg = data.synthetic_config()
    path = cache_dir() / f"{data.name}-{cfg.cache_key()}.npz"
    if path.exists():
        with np.load(path) as saved:
            return EventSplit.from_npz(saved, "train"), EventSplit.from_npz(saved, "test")
    train, test = SYNTHETIC[data.name][1](cfg, progress=progress)
    atomic_save_npz(path, **train.to_npz_dict("train"), **test.to_npz_dict("test"))
    return train, test


def frame_transform(cfg: DataConfig, sensor_size: Tuple[int, int, int]):
    """The tonic transform chain of a recipe: events (structured array) -> binary frames [T, P, H, W]."""
    import tonic.transforms as tt

    steps = []
    if cfg.denoise_us > 0:
        steps.append(tt.Denoise(filter_time=cfg.denoise_us))
    if cfg.spatial_factor != 1.0:
        steps.append(tt.Downsample(spatial_factor=cfg.spatial_factor))
    steps.append(tt.ToFrame(sensor_size=cfg.frame_sensor_size(), n_time_bins=cfg.n_time_bins))
    steps.append(Binarize())
    return tt.Compose(steps)


def events_to_frames(samples: Sequence[np.ndarray], cfg: DataConfig, desc: str = "frames", progress: bool = False) -> np.ndarray:
    """Binary frames [N, T, P, H, W] of event recordings through the recipe's transform chain."""
    from tqdm import tqdm

    transform = frame_transform(cfg, SENSOR_SIZE[cfg.name])
    p, h, w = cfg.input_shape()
    out = np.zeros((len(samples), cfg.n_time_bins, p, h, w), dtype=np.uint8)
    for i, ev in enumerate(tqdm(samples, desc=desc, disable=not progress, unit="sample")):
        if len(ev) == 0:
            continue  # an empty recording is all-zero frames
        fr = transform(ev)
        out[i, : fr.shape[0]] = fr[: cfg.n_time_bins]
    return out


class FrameDataset(torch.utils.data.Dataset):
    """Binary frames held in memory as uint8. Indexing with a list of indices returns a batch
    ``(frames float32 [B, T, P, H, W], labels int64 [B])`` in one gather, which is far faster
    than collating single items."""

    def __init__(self, frames: np.ndarray, labels: np.ndarray, source_ids: Optional[np.ndarray] = None):
        if len(frames) != len(labels):
            raise DataError(f"{len(frames)} frame samples but {len(labels)} labels")
        self.frames = torch.from_numpy(np.ascontiguousarray(frames))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.source_ids = None if source_ids is None else np.asarray(source_ids)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx):
        return self.frames[idx].float(), self.labels[idx]

    @property
    def n_time_bins(self) -> int:
        return int(self.frames.shape[1])

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.frames.shape[2:])


def _limit(n: int, limit: int) -> int:
    return n if limit <= 0 else min(n, limit)


def _frames_cache_path(cfg: DataConfig, source_key: str) -> Path:
    spec = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("download",)}
    key = hashlib.sha256(json.dumps({"src": source_key, **spec}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / f"frames-{cfg.name}-{key}.npz"


def load_dataset(cfg: DataConfig, progress: bool = True) -> Tuple[FrameDataset, FrameDataset]:
    """Train and test splits as binary frames, cached on disk per (source, transform)."""
    if cfg.name in SYNTHETIC:
        source_key = cfg.synthetic_config().cache_key()
    else:
        root = _real_root(cfg)
        source_key = str(root.resolve())
    path = _frames_cache_path(cfg, source_key)
    if path.exists():
        with np.load(path) as d:
            return (
                FrameDataset(d["train_frames"], d["train_labels"], d["train_sources"]),
                FrameDataset(d["test_frames"], d["test_labels"], d["test_sources"]),
            )
    splits = {}
    if cfg.name in SYNTHETIC:
        train_ev, test_ev = load_synthetic_events(cfg, progress)
        for name, split, limit in (("train", train_ev, cfg.max_train), ("test", test_ev, cfg.max_test)):
            n = _limit(len(split), limit)
            frames = events_to_frames([split.sample(i) for i in range(n)], cfg, f"{name} frames", progress)
            splits[name] = (frames, split.labels[:n], split.source_ids[:n])
    else:
        for name, train, limit in (("train", True, cfg.max_train), ("test", False, cfg.max_test)):
            ds = real_event_dataset(cfg, train=train)
            n = _limit(len(ds), limit)
            samples, labels = [], []
            for i in range(n):
                try:
                    ev, y = ds[i]
                except Exception as exc:  # name the file that failed, not just the index
                    raise DataError(f"{ds.data[i]}: cannot read event file ({exc})") from exc
                samples.append(ev)
                labels.append(y)
            frames = events_to_frames(samples, cfg, f"{name} frames", progress)
            splits[name] = (frames, np.asarray(labels, dtype=np.int64), np.arange(n))
    atomic_save_npz(
        path,
        **{f"{s}_{k}": v for s in ("train", "test") for k, v in zip(("frames", "labels", "sources"), splits[s])},
    )
    return FrameDataset(*splits["train"]), FrameDataset(*splits["test"])


# --- real datasets through tonic -------------------------------------------------------


def _real_root(cfg: DataConfig) -> Path:
    if not cfg.data_dir:
        raise DataError(f"data.data_dir is required for dataset {cfg.name!r} (a folder in tonic's on-disk layout)")
    root = Path(cfg.data_dir)
    if not root.is_dir() and not cfg.download:
        raise DataError(f"data.data_dir: {root} is not a directory (set data.download=true to let tonic fetch it)")
    return root


def real_event_dataset(cfg: DataConfig, train: bool):
    """The tonic dataset object for a real dataset (events, label) per item.

    tonic only accepts a dataset folder when its downloaded archive sits beside it (it checks
    the archive's md5) and otherwise downloads again. Users who extracted the archive and
    deleted it, and machines without internet, need the extracted files to be enough, so
    these subclasses accept an extracted folder that holds at least one recording.
    """
    import tonic.datasets as td

    root = _real_root(cfg)

    base = {"nmnist": td.NMNIST, "dvsgesture": td.DVSGesture}[cfg.name]
    suffix = {"nmnist": ".bin", "dvsgesture": ".npy"}[cfg.name]

    class Extracted(base):
        def _check_exists(self) -> bool:
            return _has_files(Path(self.location_on_system, self.folder_name), suffix) or super()._check_exists()

        def download(self) -> None:
            _download_or_explain(self, base, cfg)

    # tonic derives the dataset folder from the class name (<data_dir>/NMNIST/...)
    Extracted.__name__ = Extracted.__qualname__ = base.__name__
    return Extracted(save_to=str(root), train=train)


def _has_files(folder: Path, suffix: str) -> bool:
    return folder.is_dir() and any(p.suffix == suffix for p in folder.rglob(f"*{suffix}"))


def _download_or_explain(ds, base, cfg: DataConfig) -> None:
    folder = Path(ds.location_on_system, ds.folder_name)
    if not cfg.download:
        raise DataError(
            f"{folder}: no {cfg.name} recordings found. Point data.data_dir at a folder in tonic's layout "
            f"(<data_dir>/{base.__name__}/{ds.folder_name}/...) or set data.download=true."
        )
    base.download(ds)

