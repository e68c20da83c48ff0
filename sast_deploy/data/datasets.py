"""Stage 1, data: event datasets turned into binary spike frames [N, T, P, H, W].

Datasets (one :class:`DatasetSpec` each in :data:`DATASETS`):
  ``synthetic-nmnist``  embedded default, generated offline (see :mod:`sast_deploy.data.synthetic`)
  ``synthetic-gesture`` embedded DVS-Gesture-like default, 11 classes on 32x32
                        (see :mod:`sast_deploy.data.synthetic_gesture`)
  ``fontdigits-nmnist`` a second N-MNIST-like source, typeset digits through the same camera,
                        for transfer checks (see :mod:`sast_deploy.data.fontdigits`)
  ``nmnist``            real N-MNIST in tonic's layout (``tonic.datasets.NMNIST``)
  ``dvsgesture``        real DVS128 Gesture in tonic's layout (``tonic.datasets.DVSGesture``)

All go through the same tonic transforms (optional ``Denoise``, optional ``Downsample``,
``ToFrame(n_time_bins=T)``) and :class:`Binarize`, so that every frame bin is a spike (1) or
not (0), which is what a neuromorphic chip's input port takes.

Every subset of a split (``max_train``, ``max_test``, the Lava samples of ``compare``) is
cut by one function, :func:`stratified_subset`: seeded and class-stratified, never the first
N files (tonic lists N-MNIST by digit folder, so the first N are a few digits only).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import SastDeployError
from ..fileio import atomic_directory, atomic_save_npz
from .frames import FRAME_CACHE_FORMAT, FrameDataset, decoded_rows, default_workers, read_split, write_meta, write_split
from .synthetic import EventSplit, SyntheticNMNISTConfig, generate_synthetic_nmnist
from .fontdigits import FontDigitsConfig, generate_fontdigits
from .synthetic_gesture import SyntheticGestureConfig, generate_synthetic_gesture
from ..validation import Count, Seed, Size0, check_ranges, file_data, ranged, validated

MAX_WORKERS = 256  # decoding processes; more is a typo, not a machine
Workers = ranged(int, ge=0, le=MAX_WORKERS)
ValFraction = ranged(float, ge=0, lt=0.5)  # a validation split of half the training data or more leaves too little to train on
DownsampleFactor = ranged(float, gt=0, le=1)


@dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know of one dataset."""

    name: str
    n_classes: int
    sensor_size: Tuple[int, int, int]  # (width, height, polarities), tonic's order
    #: generated datasets: the parameter dataclass (``data.synthetic`` overrides it) and the generator
    generator: Optional[Tuple[type, Callable]] = None
    tonic_class: str = ""  # real datasets: the ``tonic.datasets`` class
    file_suffix: str = ""  # real datasets: one recording per file of this suffix

    @property
    def generated(self) -> bool:
        return self.generator is not None


DATASETS: Dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("synthetic-nmnist", 10, (34, 34, 2), generator=(SyntheticNMNISTConfig, generate_synthetic_nmnist)),
    DatasetSpec("synthetic-gesture", 11, (32, 32, 2), generator=(SyntheticGestureConfig, generate_synthetic_gesture)),
    DatasetSpec("fontdigits-nmnist", 10, (34, 34, 2), generator=(FontDigitsConfig, generate_fontdigits)),
    DatasetSpec("nmnist", 10, (34, 34, 2), tonic_class="NMNIST", file_suffix=".bin"),
    DatasetSpec("dvsgesture", 11, (128, 128, 2), tonic_class="DVSGesture", file_suffix=".npy"),
)}
GENERATED = tuple(name for name, spec in DATASETS.items() if spec.generated)
SPLITS = ("train", "test")


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
    n_time_bins: Count = 30
    denoise_us: Size0 = 0  # tonic Denoise filter_time; 0 = off
    spatial_factor: DownsampleFactor = 1.0  # tonic Downsample factor (e.g. 0.25 for 128x128 DVS Gesture -> 32x32)
    data_dir: str = ""  # root of the real dataset in tonic's layout
    download: bool = False  # let tonic download the real dataset when absent
    max_train: Size0 = 0  # 0 = all; otherwise a seeded class-stratified subset of N training samples
    max_test: Size0 = 0
    subset_seed: Seed = 0  # seed of the max_train / max_test subsets and of the validation split
    val_fraction: ValFraction = 0.1  # of the training recordings (by source), held out for validation; 0 = none
    workers: Workers = 0  # processes that decode events to frames; 0 = one per CPU
    synthetic: Dict[str, object] = field(default_factory=dict)  # generator overrides (SyntheticNMNISTConfig, SyntheticGestureConfig, FontDigitsConfig)

    def __post_init__(self):
        if self.name not in DATASETS:
            raise DataError(f"data.name: unknown dataset {self.name!r}; known: {', '.join(DATASETS)}")
        check_ranges(self, "data", DataError)
        if self.synthetic and not self.spec.generated:
            raise DataError(f"data.synthetic: only the generated datasets ({', '.join(GENERATED)}) take it, not {self.name!r}")
        if self.spec.generated:
            self.synthetic_config()

    @property
    def spec(self) -> DatasetSpec:
        return DATASETS[self.name]

    def synthetic_config(self):
        """The generator's parameters (:class:`SyntheticNMNISTConfig` or :class:`SyntheticGestureConfig`)."""
        if not self.spec.generated:
            raise DataError(f"{self.name!r} is not a generated dataset")
        return validated(self.spec.generator[0], dict(self.synthetic), "", DataError, prefix="data.synthetic")

    def frame_sensor_size(self) -> Tuple[int, int, int]:
        w, h, p = self.spec.sensor_size
        return (int(w * self.spatial_factor), int(h * self.spatial_factor), p)

    def input_shape(self) -> Tuple[int, int, int]:
        """Shape of one time bin: (polarity, height, width)."""
        w, h, p = self.frame_sensor_size()
        return (p, h, w)

    def sample_shape(self) -> Tuple[int, int, int, int]:
        """Shape of one sample's frames: (T, polarity, height, width)."""
        return (self.n_time_bins,) + self.input_shape()


CACHE_ENV = "SAST_DEPLOY_CACHE"


def cache_dir() -> Path:
    """Where generated data and frames are cached (outside git): $SAST_DEPLOY_CACHE (made
    absolute) or ~/.cache/sast-deploy. Checked before any work: it is created when missing,
    and must be a folder this process can write to."""
    value = os.environ.get(CACHE_ENV)
    if value is not None and not value.strip():
        raise DataError(f"{CACHE_ENV} is set but empty; unset it (cache in ~/.cache/sast-deploy) or name a folder")
    path = Path(value).expanduser().absolute() if value is not None else Path.home() / ".cache" / "sast-deploy"
    _check_writable_folder(path)
    return path


def _check_writable_folder(path: Path) -> None:
    """Create ``path`` if missing and write a probe file there (permission bits do not tell
    for root, nor for a read-only mount)."""
    where = f"{CACHE_ENV}={path}" if os.environ.get(CACHE_ENV) else f"dataset cache {path}"
    if path.exists() and not path.is_dir():
        raise DataError(f"{where}: not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise DataError(f"{where}: cannot write there ({exc.strerror or exc})") from None


def load_synthetic_events(data: DataConfig, progress: bool = True) -> Tuple[EventSplit, EventSplit]:
    """The events of a generated dataset: generated once and cached on disk, keyed by the
    generator's parameters."""
    cfg = data.synthetic_config()
    path = cache_dir() / f"{data.name}-{cfg.cache_key()}.npz"
    if path.exists():
        with np.load(path) as saved:
            return EventSplit.from_npz(saved, "train"), EventSplit.from_npz(saved, "test")
    train, test = data.spec.generator[1](cfg, progress=progress)
    atomic_save_npz(path, **train.to_npz_dict("train"), **test.to_npz_dict("test"))
    return train, test


def frame_transform(cfg: DataConfig):
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


@dataclass(frozen=True)
class FrameDecoder:
    """Events of one recording -> its binary frames [T, P, H, W] (all zero for no events)."""

    cfg: DataConfig

    @functools.cached_property
    def transform(self):
        return frame_transform(self.cfg)

    def __call__(self, events: np.ndarray) -> np.ndarray:
        out = np.zeros(self.cfg.sample_shape(), dtype=np.uint8)
        if len(events):
            fr = self.transform(events)
            out[: fr.shape[0]] = fr[: self.cfg.n_time_bins]
        return out


def events_to_frames(samples: Sequence[np.ndarray], cfg: DataConfig, desc: str = "frames", progress: bool = False) -> np.ndarray:
    """Binary frames [N, T, P, H, W] of event recordings through the recipe's transform chain."""
    from tqdm import tqdm

    decode = FrameDecoder(cfg)
    out = np.zeros((len(samples),) + cfg.sample_shape(), dtype=np.uint8)
    for i, ev in enumerate(tqdm(samples, desc=desc, disable=not progress, unit="sample")):
        out[i] = decode(ev)
    return out


# --- subsets ---------------------------------------------------------------------------


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified subset of ``n`` samples (all, in order,
    when ``n`` is 0 or at least the split's size).

    Each class gets its share of ``n`` in proportion to its frequency in ``labels`` (largest
    remainders first, ties to the lower class), its members drawn by a seeded permutation of
    that class; the result does not depend on the order of the files."""
    labels = np.asarray(labels)
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    share = n * counts / len(labels)
    quota = np.floor(share).astype(np.int64)
    by_remainder = np.lexsort((classes, -(share - quota)))
    quota[by_remainder[: n - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def class_counts(labels, n_classes: int) -> List[int]:
    """Samples per class, [n_classes]."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).tolist()


# --- recordings ------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingFiles:
    """A real dataset's split as tonic lists it: one file per recording, its label."""

    paths: Tuple[str, ...]
    labels: np.ndarray
    suffix: str

    source_ids = None

    def __len__(self) -> int:
        return len(self.paths)

    def sample(self, i: int) -> np.ndarray:
        return read_recording(self.paths[i], self.suffix)

    def describe(self, i: int) -> str:
        return self.paths[i]

    def listing_key(self) -> str:
        """A hash of every file's path, size and modification time: changes when files change.
        Empty and truncated files are reported here, before any decoding."""
        h = hashlib.sha256()
        for path, label in zip(self.paths, self.labels.tolist()):
            st = os.stat(path)
            check_recording_size(path, st.st_size, self.suffix)  # before any decoding starts
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Recordings:
    """The recordings of one split that a recipe uses: ``source``'s samples ``index``."""

    source: Union[EventSplit, RecordingFiles]
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.source.labels)[self.index]

    @property
    def source_ids(self) -> Optional[np.ndarray]:
        ids = self.source.source_ids
        return None if ids is None else np.asarray(ids)[self.index]

    def events(self, i: int) -> np.ndarray:
        return self.source.sample(int(self.index[i]))

    def describe(self, i: int) -> str:
        """The file of recording i, or its index in a generated split."""
        return self.source.describe(int(self.index[i]))

    def __iter__(self):
        return (self.events(i) for i in range(len(self)))

    @property
    def files(self) -> bool:
        """Whether the recordings are a real dataset's files (else generated events in memory)."""
        return isinstance(self.source, RecordingFiles)

    def decoding_items(self) -> Iterator[Tuple[Union[str, np.ndarray], str]]:
        """(recording, its name) in order, as a decoding worker takes them: a file's path (the
        worker reads it) or a generated recording's events, never the whole split."""
        for i in range(len(self)):
            j = int(self.index[i])
            yield (self.source.paths[j] if self.files else self.source.sample(j)), self.source.describe(j)


def split_recordings(cfg: DataConfig, split: str, progress: bool = False) -> Recordings:
    """The recordings of ``split`` ('train' or 'test') that a recipe uses, in one place for
    training, evaluation and robustness alike: the whole split, or the seeded class-stratified
    subset of ``max_train`` / ``max_test``."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _recipe_subset(cfg, split, _split_source(cfg, split, progress))


def _recipe_subset(cfg: DataConfig, split: str, source: Union[EventSplit, RecordingFiles]) -> Recordings:
    limit = cfg.max_train if split == "train" else cfg.max_test
    return Recordings(source, stratified_subset(source.labels, limit, cfg.subset_seed))


def _split_source(cfg: DataConfig, split: str, progress: bool) -> Union[EventSplit, RecordingFiles]:
    if cfg.spec.generated:
        train, test = load_synthetic_events(cfg, progress)
        return train if split == "train" else test
    ds = real_event_dataset(cfg, train=split == "train")
    # sorted by path: tonic lists DVS Gesture in the file system's order, which differs between machines
    listing = sorted(zip(ds.data, ds.targets))
    return RecordingFiles(tuple(p for p, _ in listing), np.asarray([t for _, t in listing], dtype=np.int64), cfg.spec.file_suffix)


# --- frames of a recipe, cached --------------------------------------------------------


def _frames_cache_path(cfg: DataConfig, files: Optional[Dict[str, RecordingFiles]]) -> Path:
    """The cache folder of a recipe's frames: keyed by the transform, the subsets and the
    source (a generated dataset's parameters, or every real file's path, size and mtime)."""
    # val_fraction is not part of the key: the validation split is cut from the cached
    # training frames by indices (:func:`load_splits`), the frames are the same
    spec = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("download", "workers", "val_fraction")}
    src = cfg.synthetic_config().cache_key() if files is None else {split: f.listing_key() for split, f in files.items()}
    payload = json.dumps({"format": FRAME_CACHE_FORMAT, "src": src, **spec}, sort_keys=True, default=str)
    return cache_dir() / f"frames-{cfg.name}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def load_dataset(cfg: DataConfig, progress: bool = True) -> Tuple[FrameDataset, FrameDataset]:
    """The recipe's training recordings (validation split included: cut it with
    :func:`cut_validation`, or call :func:`load_splits`) and its test split, as binary frames,
    cached on disk per (source, transform, subset) and read back through a memory map
    (:mod:`sast_deploy.data.frames`)."""
    # a real dataset's files are listed (and stat'ed) on every load: that is its cache key;
    # a generated one's events are loaded only when its frames are not cached yet
    files = None if cfg.spec.generated else {split: _split_source(cfg, split, progress) for split in SPLITS}
    folder = _frames_cache_path(cfg, files)
    if not (folder / "meta.json").exists():
        sources = files or {split: _split_source(cfg, split, progress) for split in SPLITS}
        splits = {split: _recipe_subset(cfg, split, sources[split]) for split in SPLITS}
        _write_frames_cache(cfg, splits, folder, progress)
    n = cfg.spec.n_classes
    return read_split(folder, "train", n), read_split(folder, "test", n)


@dataclass(frozen=True)
class DatasetSplits:
    """A recipe's three splits: ``train`` (what the optimizer sees), ``val`` (held out from the
    training recordings for model selection; None when ``data.val_fraction`` is 0) and
    ``test`` (read once, for the final numbers)."""

    train: FrameDataset
    val: Optional[FrameDataset]
    test: FrameDataset


def load_splits(cfg: DataConfig, progress: bool = True) -> DatasetSplits:
    """Train, validation and test splits of a recipe (:func:`load_dataset`, then
    :func:`cut_validation`)."""
    recordings, test = load_dataset(cfg, progress)
    return split_validation(recordings, test, cfg)


def split_validation(recordings: FrameDataset, test: FrameDataset, cfg: DataConfig) -> DatasetSplits:
    """The splits of a recipe from its training recordings and test split."""
    train, val = cut_validation(recordings, cfg.val_fraction, cfg.subset_seed)
    return DatasetSplits(train, val, test)


def cut_validation(recordings: FrameDataset, fraction: float, seed: int) -> Tuple[FrameDataset, Optional[FrameDataset]]:
    """(train, validation) of a recipe's training recordings: views of the same (memory-mapped)
    frames, no copy; validation is None when ``fraction`` is 0."""
    if fraction == 0:
        return recordings, None
    val_idx = validation_indices(recordings.labels.numpy(), recordings.source_ids, fraction, seed)
    train_idx = np.setdiff1d(np.arange(len(recordings)), val_idx)
    return recordings.view(train_idx), recordings.view(val_idx)


def validation_indices(labels: np.ndarray, source_ids: Optional[np.ndarray], fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the validation split: ``fraction`` of the sources (of the recordings
    when ``source_ids`` is None), every recording of a chosen source, so that variants of one
    source never straddle the split.

    Seeded and class-stratified: when each source holds one class (an N-MNIST digit image and
    its variants), the sources are drawn by :func:`stratified_subset` over their classes; when
    a source spans classes (a DVS Gesture subject performs every gesture), sources are drawn by
    a seeded permutation and each chosen source brings its share of every class. The seed is
    derived from ``seed`` (``data.subset_seed``) so that it draws independently of the
    ``max_train`` subset."""
    labels = np.asarray(labels)
    groups = np.arange(len(labels)) if source_ids is None else np.asarray(source_ids)
    unique, inverse = np.unique(groups, return_inverse=True)
    n_val = max(1, int(round(fraction * len(unique))))
    if n_val >= len(unique):
        raise DataError(f"data.val_fraction = {fraction}: the training split has {len(unique)} "
                        f"{'recordings' if source_ids is None else 'sources'}, too few to hold out a validation "
                        f"split and train on the rest (set data.val_fraction = 0)")
    val_seed = int(np.random.SeedSequence([seed, _VALIDATION_STREAM]).generate_state(1)[0])
    group_label = np.zeros(len(unique), dtype=labels.dtype)
    group_label[inverse] = labels
    single_class = np.array_equal(group_label[inverse], labels)
    if single_class:
        chosen = stratified_subset(group_label, n_val, val_seed)
    else:
        chosen = np.sort(np.random.default_rng(val_seed).permutation(len(unique))[:n_val])
    return np.flatnonzero(np.isin(inverse, chosen))


_VALIDATION_STREAM = 1  # the validation split's seed: SeedSequence([subset_seed, 1])


def _write_frames_cache(cfg: DataConfig, splits: Dict[str, Recordings], folder: Path, progress: bool) -> None:
    from tqdm import tqdm

    try:
        with atomic_directory(folder) as tmp:
            for split, rec in splits.items():
                rows = decoded_rows(_SampleFrames(FrameDecoder(cfg), rec.source.suffix if rec.files else None),
                                    rec.decoding_items(), len(rec), default_workers(cfg.workers), DECODING_MODULES)
                bar = lambda it, split=split, n=len(rec): tqdm(it, total=n, desc=f"{split} frames", disable=not progress, unit="sample")
                write_split(tmp, split, rows, len(rec), cfg.sample_shape(), rec.labels, rec.source_ids, bar)
            write_meta(tmp, {"dataset": cfg.name, "sample_shape": list(cfg.sample_shape()),
                             "samples": {split: len(rec) for split, rec in splits.items()}, "data": dataclasses.asdict(cfg)})
    except FileExistsError:
        if not (folder / "meta.json").exists():
            raise  # not another process's finished cache
        # another process cached the same frames first: use those


DECODING_MODULES = (__name__, "tonic.transforms")  # what a decoding worker imports (frames.decoding_context)


@dataclass(frozen=True)
class _SampleFrames:
    """(recording, its name) -> binary frames, in a decoding worker: the recording is a real
    dataset's file (read here, with ``suffix``) or a generated one's events (``suffix`` None).
    A recording that cannot be read or decoded is named."""

    decode: FrameDecoder
    suffix: Optional[str]

    def __call__(self, item: Tuple[Union[str, np.ndarray], str]) -> np.ndarray:
        recording, name = item
        events = read_recording(recording, self.suffix) if self.suffix else recording
        try:
            return self.decode(events)
        except Exception as exc:
            raise DataError(f"{name}: cannot turn its events into frames ({exc})") from None


# --- real datasets through tonic -------------------------------------------------------


def check_recording_size(path: str, size: int, suffix: str) -> None:
    """A file of 0 bytes, or an N-MNIST file cut inside an event (5 bytes each), is an error naming it."""
    if size == 0:
        raise DataError(f"{path}: empty recording (0 bytes)")
    if suffix == ".bin" and size % 5:
        raise DataError(f"{path}: truncated N-MNIST recording ({size} bytes is not a whole number of 5-byte events)")


def read_recording(path: str, suffix: str) -> np.ndarray:
    """The events of one real recording (tonic's structured dtype), checked first: a file of
    0 bytes, or an N-MNIST file cut inside an event (5 bytes each), is an error naming it."""
    check_recording_size(path, os.path.getsize(path), suffix)
    try:
        return _READERS[suffix](path)
    except Exception as exc:  # name the file that failed, not just an index
        raise DataError(f"{path}: cannot read event file ({exc})") from None


def _read_nmnist(path: str) -> np.ndarray:
    from tonic.datasets import NMNIST
    from tonic.io import read_mnist_file

    return read_mnist_file(path, dtype=NMNIST.dtype)


def _read_dvsgesture(path: str) -> np.ndarray:
    # tonic.datasets.DVSGesture.__getitem__'s reading, without a dataset object (which the
    # decoding workers would need pickled): rows x, y, p, t in ms
    from numpy.lib import recfunctions
    from tonic.datasets import DVSGesture

    events = np.load(path, allow_pickle=False)
    if events.ndim != 2 or events.shape[1] != 4:
        raise DataError(f"{path}: expected an array of rows (x, y, p, t), got shape {events.shape}")
    events = events.astype(np.float64)
    events[:, 3] *= 1000  # ms -> us
    return recfunctions.unstructured_to_structured(events, DVSGesture.dtype)


_READERS: Dict[str, Callable[[str], np.ndarray]] = {".bin": _read_nmnist, ".npy": _read_dvsgesture}


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
    base = getattr(td, cfg.spec.tonic_class)
    suffix = cfg.spec.file_suffix
    check_class_folders(cfg, root / base.__name__ / TONIC_SPLIT_FOLDERS[base.__name__][0 if train else 1])

    class Extracted(base):
        def _check_exists(self) -> bool:
            return _has_files(Path(self.location_on_system, self.folder_name), suffix) or super()._check_exists()

        def download(self) -> None:
            _download_or_explain(self, base, cfg)

    # tonic derives the dataset folder from the class name (<data_dir>/NMNIST/...)
    Extracted.__name__ = Extracted.__qualname__ = base.__name__
    return Extracted(save_to=str(root), train=train)


#: tonic class -> its (train, test) folders under <data_dir>/<class>/
TONIC_SPLIT_FOLDERS = {"NMNIST": ("Train", "Test"), "DVSGesture": ("ibmGestureTrain", "ibmGestureTest")}
SKIPPED = ""  # a file tonic does not list


def _nmnist_label(rel: PurePath) -> Optional[str]:
    """tonic labels an N-MNIST recording by the last character of its folder's path: only
    <split>/<class>/<file> gives the class that was meant."""
    return rel.parts[0] if len(rel.parts) == 2 else None


def _dvsgesture_label(rel: PurePath) -> Optional[str]:
    """tonic labels a DVS Gesture recording by its file name (<class>.npy) in a user<NN>_<lighting>
    folder and skips files at the split's top."""
    if len(rel.parts) == 1:
        return SKIPPED
    if len(rel.parts) != 2 or not re.fullmatch(r"user\d+_.+", rel.parts[0]):
        return None
    return rel.name[: -len(".npy")]


#: tonic class -> the label tonic gives a recording at this path (relative to its split folder)
TONIC_LABELS: Dict[str, Callable[[PurePath], Optional[str]]] = {"NMNIST": _nmnist_label, "DVSGesture": _dvsgesture_label}


def check_class_folders(cfg: DataConfig, split_folder: Path) -> None:
    """Every recording tonic would list under ``split_folder`` sits where tonic reads one of the
    dataset's classes from its path. tonic parses labels from names (N-MNIST: int of the last
    character of the folder, so a folder '10' would be class 0 and 'notadigit' an exception
    inside tonic); this check names the file first."""
    if not split_folder.is_dir():
        return  # nothing extracted yet (download = true), or tonic's own message follows
    classes = {str(c) for c in range(cfg.spec.n_classes)}
    label_of = TONIC_LABELS[cfg.spec.tonic_class]
    suffix = cfg.spec.file_suffix.lstrip(".")  # tonic matches the name's end, dot or not
    for path in sorted(p for p in split_folder.rglob(f"*{suffix}") if p.is_file()):
        rel = path.relative_to(split_folder)
        label = label_of(rel)
        if label != SKIPPED and label not in classes:
            raise DataError(f"{path}: tonic would take its label from '{rel}', which names none of {cfg.name}'s "
                            f"classes 0..{cfg.spec.n_classes - 1} (expected {cfg.spec.tonic_class} layout)")


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
