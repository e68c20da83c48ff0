"""Are the deployment artefacts of a network the same before and after a refactor? For each
network (trained runs given on the command line, plus built-in seeded nets covering every
layer kind: an MLP, conv, conv -> sum-pool, grouped conv), ``write`` stores in OUT/<name>/:

* net.h5 (``write_netx``), net.nir, net.onnx, and their SHA-256;
* ``netx.json``: every group, dataset (dtype, shape, values) and attribute of net.h5;
* ``quantization.json``: the quantized layers' report;
* ``emulator.json``: emulator output counts and activity on seeded random frames, and the
  counts of the network read back from net.h5.

``compare`` prints a markdown table, one row per network and artefact, and exits 1 if any
differs. A run folder is copied first: nothing is written into it.

    python benchmarks/export_identity.py write /tmp/before RUN_DIR...
    python benchmarks/export_identity.py compare /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import h5py
import numpy as np
import torch

from sast_deploy.deploy.emulator import emulate
from sast_deploy.deploy.export import read_netx, write_netx
from sast_deploy.deploy.interchange import write_nir, write_onnx
from sast_deploy.deploy.quantize import Loihi2Spec, quantize
from sast_deploy.training.model import ModelConfig, SpikingNet, build_model
from sast_deploy.training.runs import load_run

ARTEFACTS = ("net.h5", "netx.json", "net.nir", "net.onnx", "quantization.json", "emulator.json")

#: name -> (model config, input shape (P, H, W), classes) of the built-in nets
BUILT_IN = {
    "mlp": (ModelConfig(arch="mlp", hidden=(24, 12)), (2, 6, 5), 4),
    "conv": (ModelConfig(arch="conv", hidden=(), conv_channels=4, conv_kernel=3, conv_stride=2), (2, 11, 9), 3),
    "conv-pool": (ModelConfig(arch="conv", hidden=(8,), conv_channels=3, conv_kernel=3, conv_stride=1, pool=2,
                              pool_weight=0.5), (2, 10, 8), 5),
}


def built_in_nets() -> Dict[str, SpikingNet]:
    """The seeded built-in nets, plus a grouped conv with padding (conv-pool's, replaced)."""
    nets = {}
    for i, (name, (cfg, shape, classes)) in enumerate(BUILT_IN.items()):
        torch.manual_seed(i)
        nets[name] = build_model(cfg, shape, classes)
    torch.manual_seed(7)
    grouped = build_model(BUILT_IN["conv-pool"][0], (2, 10, 8), 5)
    grouped.layers[0].synapse = torch.nn.Conv2d(2, 4, (3, 2), stride=(1, 2), padding=(1, 1), groups=2, bias=False)
    grouped.layers[2].synapse = torch.nn.Linear(4 * 5 * 2, 8, bias=False)
    nets["grouped-conv"] = grouped
    return nets


def describe_h5(path: Path) -> Dict[str, object]:
    """Every object of an HDF5 file: groups by name, datasets with dtype, shape and values, attributes."""
    out: Dict[str, object] = {}

    def attrs(obj) -> Dict[str, str]:
        return {k: repr(obj.attrs[k]) for k in obj.attrs}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            value = obj[()]
            out[name] = {"dtype": str(obj.dtype), "shape": list(obj.shape), "value": repr(np.asarray(value).tolist()),
                         "attrs": attrs(obj)}
        else:
            out[name] = {"group": True, "attrs": attrs(obj)}

    with h5py.File(path, "r") as f:
        out["/"] = {"attrs": attrs(f)}
        f.visititems(visit)
    return out


def write_artefacts(model: SpikingNet, out: Path, seed: int = 0) -> None:
    """All artefacts of ``model`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    qnet = quantize(model, Loihi2Spec())
    write_netx(qnet, out / "net.h5", {"recipe": "identity"})
    try:
        write_nir(model, out / "net.nir")
    except ValueError as exc:  # NIR's type inference does not follow conv groups: the error is the artefact
        (out / "net.nir").write_text(f"{type(exc).__name__}: {exc}\n")
    write_onnx(qnet, out / "net.onnx")
    (out / "netx.json").write_text(json.dumps(describe_h5(out / "net.h5"), indent=1, sort_keys=True))
    (out / "quantization.json").write_text(json.dumps(qnet.report(), indent=1, default=str))
    frames = torch.from_numpy((np.random.default_rng(seed).random((16, 12, *model.input_shape)) < 0.3).astype(np.uint8))
    emu = emulate(qnet, frames)
    read_back = emulate(read_netx(out / "net.h5"), frames)
    (out / "emulator.json").write_text(json.dumps({
        "counts": emu.counts.tolist(), "activity": emu.activity(), "read_back_counts": read_back.counts.tolist(),
    }, indent=1))


def write(out: Path, runs: List[Path]) -> None:
    nets = built_in_nets()
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            copy = Path(tmp) / run.name
            shutil.copytree(run, copy)
            nets[f"run-{run.name}"] = load_run(copy)[0]
    for name, model in nets.items():
        write_artefacts(model, out / name)
        print(f"{name}: layers {[layer.kind for layer in model.layers]} -> {out / name}")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"


def compare(old: Path, new: Path) -> bool:
    """Prints one row per network; True when every artefact of every network is identical."""
    names = sorted({p.name for p in old.iterdir() if p.is_dir()} | {p.name for p in new.iterdir() if p.is_dir()})
    print("| network | " + " | ".join(ARTEFACTS) + " |")
    print("|---" * (len(ARTEFACTS) + 1) + "|")
    same = True
    for name in names:
        cells: List[Tuple[str, bool]] = []
        for artefact in ARTEFACTS:
            a, b = digest(old / name / artefact), digest(new / name / artefact)
            cells.append((f"{a}" if a == b else f"DIFFER {a} / {b}", a == b and a != "missing"))
        same = same and all(ok for _, ok in cells)
        print(f"| {name} | " + " | ".join(text for text, _ in cells) + " |")
    return same


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write every network's artefacts to OUT")
    w.add_argument("out", type=Path)
    w.add_argument("runs", type=Path, nargs="*", help="trained run folders (copied, not written to)")
    c = sub.add_parser("compare", help="compare two folders that write produced")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    args = ap.parse_args(argv)
    if args.command == "write":
        write(args.out, args.runs)
        return 0
    return 0 if compare(args.old, args.new) else 1


if __name__ == "__main__":
    sys.exit(main())
