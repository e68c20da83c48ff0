"""Binary spike frames at dataset scale: bit-packed in memory and on disk, decoded in parallel.

A frame bin is a spike or not, so a sample of T x P x H x W bins is stored as that many
bits (``numpy.packbits`` over the flattened sample, 1/8 of a uint8 array). On disk a split
is a plain ``.npy`` file of packed rows that :class:`FrameDataset` reads through a memory
map: the full N-MNIST at T = 30 (60,000 x 69,360 bins, 4.2 GB as uint8) is 0.52 GB, and a
training run touches only the rows of its minibatches, unpacked one batch at a time.
numpy's own formats (``.npy``, ``packbits``) rather than HDF5 or zarr: every reader of the
project's files has numpy, and a memory-mapped ``.npy`` needs no chunking or extra library.

Decoding events to frames is CPU-bound and independent per recording, so it runs in a pool
of worker processes (fork: the recordings' reader is inherited, not pickled) that return
packed rows, written in order straight into the memory-mapped output.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Tuple

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


# --- decoding in worker processes ------------------------------------------------------

_WORKER_DECODE: Optional[Callable[[int], np.ndarray]] = None


def _set_worker_decode(decode: Callable[[int], np.ndarray]) -> None:
    global _WORKER_DECODE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    _WORKER_DECODE = decode


def _decode_packed(i: int) -> np.ndarray:
    return np.packbits(_WORKER_DECODE(i).reshape(-1).astype(bool))


def decoded_rows(decode: Callable[[int], np.ndarray], n: int, workers: int) -> Iterator[np.ndarray]:
    """Packed rows of ``decode(i)`` (binary frames of sample i) for i = 0..n-1, in order, from
    ``workers`` processes (in this process when 1)."""
    if workers <= 1 or n < 64:
        for i in range(n):
            yield np.packbits(decode(i).reshape(-1).astype(bool))
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_set_worker_decode, initargs=(decode,)) as pool:
        yield from pool.imap(_decode_packed, range(n), chunksize=max(1, min(256, n // (8 * workers))))


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


def read_split(folder: Path, split: str) -> FrameDataset:
    """One split of a finished cache folder, its frames memory-mapped read-only; every file is
    checked against meta.json (never unpickled), and a damaged one is named."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        shape = tuple(int(v) for v in meta["sample_shape"])
        packed = np.load(folder / f"{split}_frames.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(folder / f"{split}_labels.npy", allow_pickle=False)
        sources_path = folder / f"{split}_sources.npy"
        sources = np.load(sources_path, allow_pickle=False) if sources_path.exists() else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FrameCacheError(f"{folder}: damaged frame cache ({exc}); delete the folder to decode again") from None
    expected = (len(labels), packed_row_bytes(shape))
    if packed.dtype != np.uint8 or packed.shape != expected or (sources is not None and len(sources) != len(labels)):
        raise FrameCacheError(f"{folder}/{split}_frames.npy: {packed.dtype} {packed.shape}, expected uint8 {expected} "
                              f"for {len(labels)} labels of shape {shape}; delete the folder to decode again")
    return FrameDataset.from_packed(packed, shape, labels, sources)
