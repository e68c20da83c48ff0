"""What the decoding pool's start method costs: N recordings decoded to packed frame rows in
this process, by :func:`sast_deploy.data.frames.decoded_rows`'s pool (fork-server workers,
``concurrent.futures``) the first time in a process (the fork server starts: one import of
torch and tonic) and again (it is running), and by a ``multiprocessing.Pool`` forked from this
process (the pool before issue 20, unsafe in a process that runs threads).

    python benchmarks/decoding_pool.py [--n 2048] [--workers 2]

The recordings are the small synthetic N-MNIST's (T = 30), repeated in turn up to N; torch's
threads run, as in a command. Prints wall seconds; results are in the README ("Data").
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import torch

from sast_deploy.data import frames
from sast_deploy.data.datasets import DECODING_MODULES, DataConfig, FrameDecoder, _SampleFrames, load_synthetic_events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cfg = DataConfig(synthetic={"max_sources": 200, "train_variants": 2, "test_variants": 1})
    train, _ = load_synthetic_events(cfg, progress=False)
    items = [(train.sample(i % len(train)), f"sample {i}") for i in range(args.n)]
    decode = _SampleFrames(FrameDecoder(cfg), None)
    torch.ones(64, 64) @ torch.ones(64, 64)
    frames.ROWS_PER_WORKER = 1  # time the pool itself, whatever its size rule says
    print(f"| {args.n} recordings | wall s |\n|---|---|")
    for label, workers in (("in this process", 1), (f"fork-server pool ({args.workers}), first in the process", args.workers),
                           (f"fork-server pool ({args.workers}), fork server running", args.workers)):
        t0 = time.perf_counter()
        rows = list(frames.decoded_rows(decode, items, args.n, workers, DECODING_MODULES))
        print(f"| {label} | {time.perf_counter() - t0:.2f} |", flush=True)
        assert len(rows) == args.n
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        parts = pool.starmap(frames._decode_chunk, [(decode, items[i:i + 64]) for i in range(0, args.n, 64)])
    print(f"| multiprocessing.Pool ({args.workers}) forked from this process (before issue 20) | {time.perf_counter() - t0:.2f} |")
    assert sum(len(p) for p in parts) == args.n


if __name__ == "__main__":
    main()
