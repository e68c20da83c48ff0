"""Robustness of deployed networks to input corruption, in hard-spike mode through the
fixed-point emulator (what the chip computes).

Corruptions act on the test split's *events*, before the recipe's frame transform, as
tonic-style transforms with dataclass parameters: event drop (tonic ``DropEvent``),
background noise (tonic ``UniformNoise``, sized from a rate per pixel), timestamp jitter
(tonic ``TimeJitter``) and polarity flips of individual events (:class:`FlipPolarity`:
tonic's ``RandomFlipPolarity`` flips a whole sample at once). Each severity is seeded, so
every run sees the same corrupted samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch

from ..data.datasets import DataConfig, events_to_frames, split_recordings
from ..fileio import atomic_write_bytes, atomic_write_text
from ..deploy.emulator import emulate
from ..deploy.quantize import quantize
from ..errors import RunError
from ..training.evaluate import accuracy_pct
from ..training.runs import load_run
from ..validation import SEED_MAX

# name: (what the severity measures, severities)
CORRUPTIONS: Dict[str, tuple] = {
    "drop": ("fraction of events dropped", (0.2, 0.4, 0.6)),
    "noise": ("background events per pixel and polarity (Hz)", (2.0, 5.0, 10.0)),
    "jitter": ("timestamp jitter std (ms)", (5.0, 10.0, 20.0)),
    "flip": ("fraction of event polarities flipped", (0.1, 0.25, 0.5)),
}
TITLES = {"drop": "event drop", "noise": "background noise", "jitter": "timestamp jitter", "flip": "polarity flips"}


@dataclass(frozen=True)
class FlipPolarity:
    """Flip the polarity of each event independently with probability ``p``."""

    p: float
    seed: int = 0

    def __call__(self, events: np.ndarray) -> np.ndarray:
        events = events.copy()
        flip = np.random.default_rng(self.seed).random(len(events)) < self.p
        events["p"][flip] = 1 - events["p"][flip]
        return events


def corruption(name: str, severity: float, sensor_size, duration_s: float, seed: int):
    """The transform of one corruption at one severity."""
    import tonic.transforms as tt

    if name == "drop":
        return tt.DropEvent(p=severity)
    if name == "noise":
        w, h, p = sensor_size
        return tt.UniformNoise(sensor_size=tuple(sensor_size), n=int(round(severity * w * h * p * duration_s)))
    if name == "jitter":
        return tt.TimeJitter(std=severity * 1000.0, clip_negative=True, sort_timestamps=True)
    if name == "flip":
        return FlipPolarity(p=severity, seed=seed)
    raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")


def split_events(cfg: DataConfig) -> Tuple[List[np.ndarray], torch.Tensor]:
    """The test split's event recordings and labels, the same samples in the same order as the
    recipe's frames (:func:`sast_deploy.data.datasets.split_recordings`)."""
    rec = split_recordings(cfg, "test")
    return list(rec), torch.from_numpy(rec.labels)


def corrupted_frames(events: Sequence[np.ndarray], cfg: DataConfig, name: str, severity: float, seed: int = 0) -> torch.Tensor:
    durations = [(e["t"].max() - e["t"].min()) * 1e-6 for e in events if len(e)]
    transform = corruption(name, severity, cfg.spec.sensor_size, float(np.mean(durations)) if durations else 0.0, seed)
    corrupted = []
    with numpy_global_seed(seed):
        for i, e in enumerate(events):
            if isinstance(transform, FlipPolarity):
                transform = FlipPolarity(transform.p, seed + i)
            corrupted.append(transform(e))
    return torch.from_numpy(events_to_frames(corrupted, cfg, f"{name} {severity}", progress=False))


@contextlib.contextmanager
def numpy_global_seed(seed: int) -> Iterator[None]:
    """numpy's global generator seeded with ``seed`` inside, the caller's state restored after.
    tonic's DropEvent, UniformNoise and TimeJitter draw from the global generator and accept no
    Generator of their own; rewriting them around one would duplicate tonic and change every
    corrupted sample, so they get a seeded global state that does not leak out."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def robustness(run_dirs: Sequence[str | Path], seed: int = 0, progress: bool = True) -> Dict[str, object]:
    """Emulator accuracy (percent) of each run under each corruption and severity (0 = clean)."""
    from tqdm import tqdm

    if not 0 <= seed <= SEED_MAX:  # numpy's global seeding (tonic's transforms) takes no other
        raise RunError(f"corruption seed must be in [0, {SEED_MAX}], got {seed}")
    runs = [(str(r), *load_run(r)) for r in run_dirs]
    data_cfgs = {json.dumps(dataclasses.asdict(r[2].data), sort_keys=True, default=str) for r in runs}
    if len(data_cfgs) > 1:
        raise RunError(f"robustness compares runs on one dataset and frame transform; the [data] of {runs[0][0]} and {runs[-1][0]} differ")
    cfg = runs[0][2].data
    events, labels = split_events(cfg)
    qnets = [quantize(model) for _, model, _, _ in runs]
    rows = []
    jobs = [("clean", 0.0)] + [(name, sev) for name, (_, sevs) in CORRUPTIONS.items() for sev in sevs]
    for name, sev in tqdm(jobs, desc="robustness", disable=not progress, unit="setting"):
        if name == "clean":
            frames = torch.from_numpy(events_to_frames(events, cfg, "clean", progress=False))
        else:
            frames = corrupted_frames(events, cfg, name, sev, seed)
        for (run, _, recipe, _), qnet in zip(runs, qnets):
            acc = accuracy_pct(emulate(qnet, frames).counts, labels)
            rows.append({"run": run, "optimizer": recipe.optimizer.name, "corruption": name, "severity": sev, "accuracy": acc})
    return {"corruptions": {k: v[0] for k, v in CORRUPTIONS.items()}, "rows": rows}


def robustness_markdown(result: Dict[str, object]) -> str:
    rows = result["rows"]
    runs = list(dict.fromkeys(r["run"] for r in rows))
    lines = ["| corruption | severity | " + " | ".join(f"{Path(r).name} ({next(x['optimizer'] for x in rows if x['run'] == r)}) %" for r in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    settings = list(dict.fromkeys((r["corruption"], r["severity"]) for r in rows))
    for name, sev in settings:
        accs = [next(x["accuracy"] for x in rows if x["run"] == r and x["corruption"] == name and x["severity"] == sev) for r in runs]
        lines.append(f"| {name} | {sev:g} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")
    return "\n".join(lines) + "\n"


def robustness_figure(result: Dict[str, object], path: str | Path) -> Path:
    """Accuracy vs severity, one panel per corruption, one line per run (clean at severity 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    runs = list(dict.fromkeys(r["run"] for r in rows))
    names = list(result["corruptions"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), sharey=True)
    for ax, name in zip(axes, names):
        for run in runs:
            opt = next(x["optimizer"] for x in rows if x["run"] == run)
            clean = next(x["accuracy"] for x in rows if x["run"] == run and x["corruption"] == "clean")
            pts = [(x["severity"], x["accuracy"]) for x in rows if x["run"] == run and x["corruption"] == name]
            xs, ys = zip(*([(0.0, clean)] + pts))
            label = Path(run).name if Path(run).name == opt else f"{Path(run).name} ({opt})"
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(TITLES.get(name, name))
        ax.set_xlabel(result["corruptions"][name])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("hard-spike accuracy, Loihi 2 fixed point (%)")
    axes[-1].legend(fontsize=8, loc="lower left")
    fig.suptitle("Robustness to input corruption (quantized emulator, test split)")
    fig.tight_layout()
    path = Path(path)
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_robustness(result: Dict[str, object], out_dir: str | Path) -> Dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "robustness.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "robustness.md", robustness_markdown(result))
    return {"json": out / "robustness.json", "md": out / "robustness.md", "png": robustness_figure(result, out / "robustness.png")}
