"""The real-data path at N-MNIST's full size: write a 60,000 + 10,000 N-MNIST-format tree
(``sast-deploy write-dataset``), prepare its frames (list, decode in parallel, cache), train
one epoch of ``train/nmnist-sast-paper.toml`` on it, then load it again from the cache. Each phase runs
in a process of its own, so its peak resident memory (``ru_maxrss``) is its own; beside it,
the peak over time of the summed PSS of the process and its decoding workers (sampled).

    python benchmarks/real_data_scale.py --root /tmp/nmnist-scale [--train 60000 --test 10000] [--keep]

The tree holds the embedded default's recordings (4,314 train and 718 test, ~4,100 events
each, like genuine N-MNIST's) repeated in turn up to the counts: byte copies, so decoding
costs what it would on the real files of that size. Goals (issue 15): preparation under
5 minutes on 2 cores and peak RSS under 3 GB. Results are in the README ("Real datasets").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Each phase: python code run in a fresh interpreter; it prints one JSON line of its results.
PHASE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
{body}
seconds = time.perf_counter() - t0
mib = lambda who: resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB
print(json.dumps({{"seconds": seconds, "peak_rss_mib": mib(resource.RUSAGE_SELF), **extra}}))
"""

WRITE = """
from sast_deploy.data.datasets import DataConfig
from sast_deploy.data.tonic_layout import write_tonic_tree
write_tonic_tree(DataConfig(name="synthetic-nmnist"), {root!r}, {{"train": {train}, "test": {test}}}, progress=False)
extra = {{}}
"""

PREPARE = """
from sast_deploy.data.datasets import DataConfig, load_dataset
train, test = load_dataset(DataConfig(name="nmnist", data_dir={root!r}, n_time_bins=30), progress=False)
extra = {{"n_train": len(train), "n_test": len(test), "packed_mib": (train.packed.nbytes + test.packed.nbytes) / 2**20}}
"""

TRAIN = """
from sast_deploy.training.recipe import load_recipe
from sast_deploy.training.train import train
recipe = load_recipe({recipe!r}, ["data.data_dir={root}", "training.epochs=1"])
m = train(recipe, {out!r}, progress=False, resume=False).metrics
extra = {{k: m[k] for k in ("surrogate_accuracy", "hard_accuracy", "n_train", "n_test", "train_seconds")}}
"""


def _tree(pid: int) -> list:
    """pid and its descendants (from /proc, Linux)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = [pid], [pid]
    while frontier:
        frontier = [c for c, p in parent.items() if p in frontier]
        out += frontier
    return out


def _pss_mib(pid: int) -> float:
    """Proportional set size: resident pages, shared ones split among their sharers (what a
    forked worker really adds, where its RSS would count the parent's pages again)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_phase(name: str, body: str, env: dict) -> dict:
    """Run one phase; add the peak over time of its process tree's summed PSS, sampled every 0.2 s."""
    print(f"== {name}", flush=True)
    proc = subprocess.Popen([sys.executable, "-c", PHASE.format(body=body)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_tree = 0.0
    while proc.poll() is None:
        peak_tree = max(peak_tree, sum(_pss_mib(p) for p in _tree(proc.pid)))
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"{name} failed:\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_pss_tree_mib"] = peak_tree
    print(json.dumps(result), flush=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="folder for the tree, the frame cache and the run (emptied first)")
    ap.add_argument("--train", type=int, default=60000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--keep", action="store_true", help="keep the tree and the cache afterwards")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    # the generated default's events come from the user's cache; the frames go to a fresh one
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tree, cache = root / "data", root / "cache"
    results = {"cpus": len(os.sched_getaffinity(0))}
    results["write"] = run_phase("write the tree", WRITE.format(root=str(tree), train=args.train, test=args.test), env)
    env["SAST_DEPLOY_CACHE"] = str(cache)
    results["prepare"] = run_phase("prepare (list, decode, cache)", PREPARE.format(root=str(tree)), env)
    results["train_epoch"] = run_phase("train one epoch (train/nmnist-sast-paper.toml)",
                                       TRAIN.format(recipe=str(REPO / "train" / "nmnist-sast-paper.toml"), root=tree, out=str(root / "run")), env)
    results["cached"] = run_phase("load again from the cache", PREPARE.format(root=str(tree)), env)
    results["tree_mib"] = sum(f.stat().st_size for f in tree.rglob("*.bin")) / 2**20
    print("\n| phase | seconds | peak RSS, main process (MiB) | peak PSS, process and workers (MiB) |\n|---|---|---|---|")
    for key, label in (("write", f"write {args.train}+{args.test} .bin"), ("prepare", "prepare frames"), ("train_epoch", "train 1 epoch"),
                       ("cached", "second run: cached frames")):
        r = results[key]
        print(f"| {label} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['peak_pss_tree_mib']:.0f} |")
    print(f"\ntree {results['tree_mib']:.0f} MiB of .bin; frame cache {results['prepare']['packed_mib']:.0f} MiB "
          f"(uint8 frames would be {8 * results['prepare']['packed_mib']:.0f} MiB); {results['cpus']} CPUs")
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(tree)
        shutil.rmtree(cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
