"""Binary spike frames at dataset scale: bit-packed in memory and on disk, decoded in parallel.

A frame bin is a spike or not, so a sample of T x P x H x W bins is stored as that many
bits (``numpy.packbits`` over the flattened sample, 1/8 of a uint8 array). On disk a split
is a plain ``.npy`` file of packed rows that :class:`FrameDataset` reads through a memory
map: the full N-MNIST at T = 30 (60,000 x 69,360 bins, 4.2 GB as uint8) is 0.52 GB, and a
training run touches only the rows of its minibatches, unpacked one batch at a time.
numpy's own formats (``.npy``, ``packbits``) rather than HDF5 or zarr: every reader of the
project's files has numpy, and a memory-mapped ``.npy`` needs no chunking or extra library.

Decoding events to frames is CPU-bound and independent per recording, so it runs in a pool
of worker processes (started from a fork server, never forked from this threaded process) that
return packed rows, written in order straight into the memory-mapped output.
"""

from __future__ import annotations

import collections
import itertools
import json
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Deque, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch

from ..errors import SastDeployError

#: Version of the on-disk layout below; part of every cache key.
FRAME_CACHE_FORMAT = 2


class FrameDataset(torch.utils.data.Dataset):
    """Binary frames [N, T, P, H, W] with labels, stored bit-packed (a numpy array or a
    read-only memory map of shape [N, ceil(T*P*H*W / 8)]).

    Indexing with a list or tensor of indices returns a batch ``(frames float32 [B, T, P, H, W],
    labels int64 [B])`` unpacked in one gather; an int returns one sample. :attr:`frames`
    unpacks every sample at once (uint8): for test splits and small sets, not for training
    on a full dataset."""

    def __init__(self, frames: np.ndarray, labels: np.ndarray, source_ids: Optional[np.ndarray] = None):
        frames = np.asarray(frames)
        if len(frames) != len(labels):
            raise ValueError(f"{len(frames)} frame samples but {len(labels)} labels")
        if frames.size and (frames.min() < 0 or frames.max() > 1):
            raise ValueError(f"frames must be binary spikes (0 or 1), got values in [{frames.min()}, {frames.max()}]")
        self._init(np.packbits(frames.reshape(len(frames), -1).astype(bool), axis=1), frames.shape[1:], labels, source_ids)

    @classmethod
    def from_packed(cls, packed: np.ndarray, sample_shape: Sequence[int], labels: np.ndarray,
                    source_ids: Optional[np.ndarray] = None) -> "FrameDataset":
        ds = cls.__new__(cls)
        ds._init(packed, sample_shape, labels, source_ids)
        return ds

    def _init(self, packed, sample_shape, labels, source_ids) -> None:
        self.packed = packed
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64))
        self.source_ids = None if source_ids is None else np.asarray(source_ids)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self._unpack([int(idx)])[0].float(), self.labels[int(idx)]
        rows = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        return self._unpack(rows).float(), self.labels[torch.from_numpy(rows)]

    def _unpack(self, rows) -> torch.Tensor:
        n_bins = int(np.prod(self.sample_shape))
        bits = np.unpackbits(self.packed[rows], axis=1, count=n_bins)
        return torch.from_numpy(bits.reshape((len(bits),) + self.sample_shape))

    def frames_at(self, idx: Sequence[int]) -> torch.Tensor:
        """The frames of samples ``idx``, uint8 [len(idx), T, P, H, W]."""
        return self._unpack(np.asarray(idx, dtype=np.int64))

    def subset(self, idx: Sequence[int]) -> "FrameDataset":
        """The samples ``idx`` (in that order) as a dataset of their own (their packed rows copied)."""
        rows = np.asarray(idx, dtype=np.int64)
        sources = None if self.source_ids is None else self.source_ids[rows]
        return FrameDataset.from_packed(np.asarray(self.packed[rows]), self.sample_shape, self.labels.numpy()[rows], sources)

    def view(self, idx: Sequence[int]) -> "FrameDataset":
        """The samples ``idx`` (in that order) as a dataset that reads this one's packed rows
        (a memory map stays a memory map: nothing is copied)."""
        rows = np.asarray(idx, dtype=np.int64)
        sources = None if self.source_ids is None else self.source_ids[rows]
        return FrameDataset.from_packed(RowView(self.packed, rows), self.sample_shape, self.labels.numpy()[rows], sources)

    @property
    def frames(self) -> torch.Tensor:
        """Every sample's frames, uint8 [N, T, P, H, W] (unpacked: 8x the packed size)."""
        return self._unpack(np.arange(len(self)))

    @property
    def n_time_bins(self) -> int:
        return self.sample_shape[0]

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return self.sample_shape[1:]


class RowView:
    """Rows ``rows`` of a 2-D array (or memory map), indexed like one: ``view[r]`` reads
    ``base[rows[r]]`` only. numpy's fancy indexing would copy the rows at once; this keeps a
    split cut from a memory-mapped cache on disk until its minibatches are read."""

    def __init__(self, base, rows: np.ndarray):
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx):
        return self.base[self.rows[idx]]

    @property
    def shape(self) -> Tuple[int, ...]:
        return (len(self.rows),) + tuple(self.base.shape[1:])

    @property
    def dtype(self):
        return self.base.dtype


def packed_row_bytes(sample_shape: Sequence[int]) -> int:
    return -(-int(np.prod(sample_shape)) // 8)


# --- frames as the deploy stages take them --------------------------------------------------

#: Spike frames as :func:`~sast_deploy.deploy.emulator.emulate`,
#: :func:`~sast_deploy.deploy.simulate.simulate_lava` and the comparison take them: a numpy
#: array or a torch tensor [N, T, P, H, W] (N samples, T time bins, P polarities, H x W pixels;
#: or [N, T, P*H*W] flattened), of any bool, integer or float dtype holding whole numbers of
#: spikes per bin (0 or 1 from the datasets; a larger count is a graded input). What
#: :meth:`FrameDataset.frames_at` returns is one.
Frames = Union[np.ndarray, torch.Tensor]

#: The largest count per bin: frames are held as uint8.
FRAME_MAX = 255


class FramesError(SastDeployError, ValueError):
    """Frames handed to a deploy stage have the wrong shape, dtype or values."""


def as_frames(frames: Frames, input_shape: Optional[Sequence[int]] = None, max_value: int = FRAME_MAX) -> torch.Tensor:
    """``frames`` (:data:`Frames`) as the one type the deploy stages compute on: a CPU uint8
    torch tensor [N, T, *input_shape] (a uint8 input is not copied). With ``input_shape`` (a
    network's (P, H, W) or (features,)), the trailing dims must be it, or either side flat with
    as many values. Values must be whole numbers in 0..``max_value``; else a FramesError."""
    x = _as_tensor(frames)
    if x.ndim < 3:
        raise FramesError(f"frames must be [N, T, P, H, W] (or [N, T, features]), got shape {tuple(x.shape)}")
    if input_shape is not None:
        x = _fit_shape(x, tuple(int(s) for s in input_shape))
    if x.dtype == torch.uint8 and max_value >= FRAME_MAX:
        return x
    if x.numel() and x.dtype != torch.bool:
        lo, hi = float(x.min()), float(x.max())
        whole = x.dtype.is_floating_point is False or bool(torch.equal(x, x.round()))
        if not (whole and 0 <= lo and hi <= max_value):  # false for nan
            raise FramesError(f"frames must hold whole numbers of spikes in 0..{max_value}, got {x.dtype} "
                              f"values in [{lo:g}, {hi:g}]" + ("" if whole else " with fractions"))
    return x.to(torch.uint8)


def _as_tensor(frames: Frames) -> torch.Tensor:
    if isinstance(frames, torch.Tensor):
        x = frames.detach().cpu()
    else:
        array = np.asarray(frames)
        if array.dtype.kind not in "biuf":
            raise FramesError(f"frames must be a numeric array or tensor, got dtype {array.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(array))
    if x.is_complex():
        raise FramesError(f"frames must be real, got {x.dtype}")
    return x


def _fit_shape(x: torch.Tensor, input_shape: Tuple[int, ...]) -> torch.Tensor:
    """[N, T, ...] reshaped to [N, T, *input_shape]: the same trailing shape, or one side flat."""
    have = tuple(x.shape[2:])
    if have == input_shape:
        return x
    if (len(have) == 1 or len(input_shape) == 1) and int(np.prod(have)) == int(np.prod(input_shape)):
        return x.reshape(*x.shape[:2], *input_shape)
    raise FramesError(f"frames of shape {tuple(x.shape)}: the network takes [N, T, {', '.join(map(str, input_shape))}]")


# --- decoding in worker processes ------------------------------------------------------

#: Rows per worker below which another worker process costs more than it saves (the fork
#: server's start and a worker's: benchmarks/decoding_pool.py, figures in the README, "Data").
ROWS_PER_WORKER = 1024
#: Chunks queued per worker beyond the one it decodes: keeps workers busy while bounding the
#: memory held by rows not yet written.
CHUNKS_AHEAD_PER_WORKER = 2

Item = TypeVar("Item")


def _worker_signals() -> None:
    """A decoding worker's signal policy: Ctrl-C reaches the whole process group but is the
    parent's to handle (it stops the pool), and SIGTERM kills the worker outright (the
    default), whatever handler the process it was forked from had installed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _decode_chunk(decode: Callable[[Item], np.ndarray], items: List[Item]) -> List[np.ndarray]:
    return [np.packbits(decode(item).reshape(-1).astype(bool)) for item in items]


def pool_size(n: int, workers: int) -> int:
    """Worker processes for ``n`` rows: ``workers``, but no more than one per
    :data:`ROWS_PER_WORKER` rows (0 or 1: decode in this process)."""
    return max(1, min(workers, n // ROWS_PER_WORKER))


def decoding_context(preload: Sequence[str] = ()) -> multiprocessing.context.BaseContext:
    """The start method of the decoding workers: a fork server, never a fork of this process.

    Forking a process that already runs threads (torch's, tqdm's monitor) can leave a lock
    held forever in the child, and a pool of such children once hung a study for good (issue
    20). The fork server is a fresh single-threaded interpreter that imports the workers'
    modules once (``preload``, this module and the main module) and forks each worker from
    there, where ``spawn`` would import torch again in every worker (benchmarks/decoding_pool.py).
    It must import sast_deploy before a worker unpickles a task: Lava's import calls
    ``multiprocessing.set_start_method('fork')`` unforced (see ``sast_deploy/__init__.py``),
    which raises in a child whose start method multiprocessing has already set. A context
    object is used, never the global start method, which Lava owns. The fork server starts
    with the first pool and serves every later one of this process (its preload is fixed then)."""
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    # a `python -m` main module is run again in every worker unless the fork server has it
    run_as_module = [main.name] if main is not None and not main.name.endswith("__main__") else []
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", *run_as_module, __name__, *preload])
    return ctx


def decoded_rows(decode: Callable[[Item], np.ndarray], items: Iterable[Item], n: int, workers: int,
                 preload: Sequence[str] = ()) -> Iterator[np.ndarray]:
    """Packed rows of ``decode(item)`` (binary frames of a sample) for the ``n`` ``items``, in
    order, decoded by up to ``workers`` processes (:func:`pool_size`; in this process when 1).
    ``decode`` and the items travel to the workers pickled, so an item should be what a worker
    needs to decode the sample (a path, the events), not a handle on the whole dataset;
    ``preload`` names the modules they need (:func:`decoding_context`).

    The pool is shut down on every way out: when done, its workers finish and are joined; on an
    error, SIGINT or SIGTERM (or a consumer that stops early) the queued chunks are cancelled
    and the ones running finish first (a chunk is a fraction of a second of work). Like any
    multiprocessing code that does not fork, a script calling this must guard its entry point
    (``if __name__ == "__main__":``): each worker imports the main module again."""
    workers = pool_size(n, workers)
    if workers <= 1:
        yield from (_decode_chunk(decode, [item])[0] for item in items)
        return
    chunk = max(1, min(64, n // (4 * workers)))
    source = iter(items)
    pool = ProcessPoolExecutor(workers, mp_context=decoding_context(preload), initializer=_worker_signals)
    try:
        pending: Deque[Future] = collections.deque()
        while True:
            while len(pending) < workers * (1 + CHUNKS_AHEAD_PER_WORKER):
                part = list(itertools.islice(source, chunk))
                if not part:
                    break
                pending.append(pool.submit(_decode_chunk, decode, part))
            if not pending:
                break
            yield from pending.popleft().result()
    except BrokenProcessPool as exc:
        raise FrameCacheError(f"a frame-decoding worker process ended abruptly ({exc}): killed, out of memory, or "
                              f"the main script starts work without `if __name__ == '__main__':`; rerun, or set "
                              f"data.workers=1 to decode in this process") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def default_workers(setting: int) -> int:
    """Worker processes for decoding: ``setting``, or every CPU this process may use when 0."""
    if setting > 0:
        return setting
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --- the on-disk cache -----------------------------------------------------------------


def write_split(folder: Path, split: str, rows: Iterator[np.ndarray], n: int, sample_shape: Sequence[int],
                labels: np.ndarray, source_ids: Optional[np.ndarray], progress: Callable[[Iterator], Iterator]) -> None:
    """Write one split's packed rows (streamed into a memory-mapped .npy), labels and sources."""
    out = np.lib.format.open_memmap(folder / f"{split}_frames.npy", mode="w+", dtype=np.uint8,
                                    shape=(n, packed_row_bytes(sample_shape)))
    for i, row in enumerate(progress(rows)):
        out[i] = row
    out.flush()
    del out
    np.save(folder / f"{split}_labels.npy", np.asarray(labels, dtype=np.int64))
    if source_ids is not None:
        np.save(folder / f"{split}_sources.npy", np.asarray(source_ids, dtype=np.int64))


class FrameCacheError(SastDeployError, ValueError):
    """A frame cache folder cannot be read; the message names the file and says how to recover."""


def write_meta(folder: Path, meta: dict) -> None:
    """meta.json, the last file of a cache folder: its presence marks the folder complete."""
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def read_split(folder: Path, split: str, n_classes: Optional[int] = None) -> FrameDataset:
    """One split of a finished cache folder, its frames memory-mapped read-only; every file is
    checked against meta.json (never unpickled), the labels against ``n_classes`` (the
    dataset's classes), and a damaged one is named."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        shape = tuple(int(v) for v in meta["sample_shape"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FrameCacheError(f"{folder}/meta.json: damaged frame cache ({exc}); delete the folder to decode again") from None
    packed = _load_npy(folder / f"{split}_frames.npy", mmap_mode="r")
    labels = _load_npy(folder / f"{split}_labels.npy")
    sources_path = folder / f"{split}_sources.npy"
    sources = _load_npy(sources_path) if sources_path.exists() else None
    _check_labels(folder / f"{split}_labels.npy", labels, n_classes)
    expected = (len(labels), packed_row_bytes(shape))
    if packed.dtype != np.uint8 or packed.shape != expected or (sources is not None and len(sources) != len(labels)):
        raise FrameCacheError(f"{folder}/{split}_frames.npy: {packed.dtype} {packed.shape}, expected uint8 {expected} "
                              f"for {len(labels)} labels of shape {shape}; delete the folder to decode again")
    return FrameDataset.from_packed(packed, shape, labels, sources)


def _load_npy(path: Path, **kwargs) -> np.ndarray:
    """One .npy file of a cache folder, never unpickled; a damaged one is named."""
    try:
        return np.load(path, allow_pickle=False, **kwargs)
    except (OSError, EOFError, ValueError) as exc:  # EOFError: a file of 0 bytes
        raise FrameCacheError(f"{path}: damaged frame cache ({exc or type(exc).__name__}); "
                              f"delete the folder to decode again") from None


def _check_labels(path: Path, labels: np.ndarray, n_classes: Optional[int]) -> None:
    """Labels are integers, one per sample, each a class of the dataset (0..n_classes-1)."""
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise FrameCacheError(f"{path}: labels must be a list of integers, got {labels.dtype} {labels.shape}; "
                              f"delete the folder to decode again")
    if n_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise FrameCacheError(f"{path}: labels hold {int(labels.min())}..{int(labels.max())}, the dataset's classes are "
                              f"0..{n_classes - 1}; delete the folder to decode again")
