"""What the decoding pool's start method costs: decoding N recordings to packed frame rows in
this process, in a pool forked from this process (``multiprocessing.Pool``, fork: the pool
before issue 20) and in the pool of :func:`sast_deploy.data.frames.decoded_rows` (a fork
server's workers, ``concurrent.futures``), each in a fresh interpreter that has imported torch,
so the fork server's start is counted every time, as a command pays it.

    python benchmarks/decoding_pool.py [--n 256,1024,4096] [--workers 2]

The recordings are the small synthetic N-MNIST's (T = 30), repeated in turn up to N. Prints a
table of wall seconds; results are in the README ("Data").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BODY = r"""
import json, multiprocessing, sys, time
import numpy as np
import torch
from sast_deploy.data.datasets import DataConfig, FrameDecoder, _SampleFrames, load_synthetic_events
from sast_deploy.data import frames

n, workers, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cfg = DataConfig(synthetic={"max_sources": 200, "train_variants": 2, "test_variants": 1})
train, _ = load_synthetic_events(cfg, progress=False)
items = [(train.sample(i % len(train)), f"sample {i}") for i in range(n)]
decode = _SampleFrames(FrameDecoder(cfg), None)
torch.ones(64, 64) @ torch.ones(64, 64)  # torch's threads run, as in a command
t0 = time.perf_counter()
if how == "fork-pool":  # the pool before issue 20
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        rows = pool.starmap(frames._decode_chunk, [(decode, items[i:i + 64]) for i in range(0, n, 64)])
        rows = [r for part in rows for r in part]
else:
    frames.ROWS_PER_WORKER = 1  # time the pool itself, whatever its size rule says
    rows = list(frames.decoded_rows(decode, items, n, workers if how == "forkserver" else 1))
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": len(rows)}))
"""


def timed(n: int, workers: int, how: str) -> float:
    out = subprocess.run([sys.executable, "-c", BODY, str(n), str(workers), how], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["rows"] == n
    return result["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="256,1024,4096")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print(f"| recordings | in process s | fork Pool ({args.workers}) s | fork server pool ({args.workers}) s |")
    print("|---|---|---|---|")
    for n in (int(v) for v in args.n.split(",")):
        t = {how: timed(n, args.workers, how) for how in ("in-process", "fork-pool", "forkserver")}
        print(f"| {n} | {t['in-process']:.2f} | {t['fork-pool']:.2f} | {t['forkserver']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
