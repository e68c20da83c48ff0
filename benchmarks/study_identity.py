"""Are two runs of the same study bit-identical? For a refactor's before/after check: per
method (one seed), the accuracies and per-epoch losses of ``metrics.json``, every weight
tensor of ``model.pt``, and the emulator's accuracy and activity (SynOps, spike rates) in
``compare.json``. Lava's accuracy is printed beside them, not compared (its subset may differ
between versions); Lava = emulator agreement is printed for the new run.

    python benchmarks/study_identity.py runs/study-nmnist-hs runs/verify-hs [--seed 0]

Prints a markdown table; exits 1 if any method differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sast_deploy.analysis.study import run_dir
from sast_deploy.training.runs import read_model_file

METRICS = ("surrogate_accuracy", "hard_accuracy", "transfer_gap_pp")
ACTIVITY = ("emulator_accuracy", "synops_per_sample", "synops_per_sample_per_layer", "spikes_per_neuron_per_step")


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = read_model_file(a)[1], read_model_file(b)[1]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def method_row(old: Path, new: Path) -> tuple:
    """(markdown row, identical?) of one method's run in both studies."""
    ma, mb = _json(old / "metrics.json"), _json(new / "metrics.json")
    same_metrics = all(ma.get(k) == mb.get(k) for k in METRICS)
    same_losses = [h.get("loss") for h in ma.get("history", [])] == [h.get("loss") for h in mb.get("history", [])]
    weights = same_weights(old / "model.pt", new / "model.pt")
    ca, cb = _json(old / "compare.json"), _json(new / "compare.json")
    emulator = bool(ca) and bool(cb) and all(ca.get(k) == cb.get(k) for k in ACTIVITY)
    lava = (f"{ca['lava_accuracy']:.2f} / {cb['lava_accuracy']:.2f} (agreement {cb['lava_emulator_agreement']:.4f})"
            if ca and cb else "-")
    same = same_metrics and same_losses and weights and emulator
    word = lambda ok: "equal" if ok else "DIFFER"
    row = (f"| {new.parent.name} | {mb['surrogate_accuracy']:.2f} | {mb['hard_accuracy']:.2f} | {word(same_metrics)} | "
           f"{word(same_losses)} | {word(weights)} | {cb.get('emulator_accuracy', float('nan')):.2f}, {word(emulator)} | {lava} | "
           f"{'yes' if same else 'NO'} |")
    return row, same


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path, help="the study folder before")
    ap.add_argument("new", type=Path, help="the study folder after")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    methods = sorted(p.name for p in args.new.iterdir() if (run_dir(args.new, p.name, args.seed) / "metrics.json").exists())
    print("| method | surrogate % | hard % | accuracies | losses | weights | emulator %, activity | Lava % before / after | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_same = True
    for m in methods:
        row, same = method_row(run_dir(args.old, m, args.seed), run_dir(args.new, m, args.seed))
        print(row)
        all_same &= same
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
