"""The weight-precision sweep: hard-spike accuracy and SynOps of the quantized emulator at
several weight mantissa widths, per run and as mean ± std per optimizer (full test split).
Accuracies are percent."""

from __future__ import annotations

import statistics
from typing import Dict, List, Sequence

from ..data.datasets import load_dataset
from ..deploy.emulator import emulate
from ..deploy.quantize import Loihi2Spec, QuantizationError, load_spec, quantize, with_weight_bits
from ..training.evaluate import accuracy_pct
from ..training.runs import load_run


def sweep_specs(bits: Sequence[int]) -> List[Loihi2Spec]:
    """The default target spec at each weight mantissa width of ``bits`` (bits, each once); a
    width the target does not take, or one given twice, is a QuantizationError."""
    if len(set(bits)) != len(bits):
        raise QuantizationError(f"weight bits: each width once, got {','.join(map(str, bits))}")
    spec = load_spec()
    return [with_weight_bits(spec, b) for b in bits]


def precision_table(run_dirs, bits=(8, 6, 4), progress: bool = False) -> Dict[str, object]:
    """Hard-spike accuracy of the quantized emulator at each weight precision, per run and as
    mean ± std per optimizer (full test split). The widths are checked before any run is read."""
    specs = sweep_specs(bits)
    rows = []
    for run in run_dirs:
        model, recipe, metrics = load_run(run)
        _, test = load_dataset(recipe.data, progress=progress)
        row = {"run": str(run), "optimizer": recipe.optimizer.name, "hard_float": metrics.get("hard_accuracy")}
        for b, spec in zip(bits, specs):
            e = emulate(quantize(model, spec), test.frames)
            row[f"w{b}"] = accuracy_pct(e.counts, test.labels)
            row[f"synops_w{b}"] = e.synops_per_sample
        rows.append(row)
    summary = {}
    for opt in sorted({r["optimizer"] for r in rows}):
        group = [r for r in rows if r["optimizer"] == opt]
        summary[opt] = {}
        for key in ["hard_float"] + [f"w{b}" for b in bits] + [f"synops_w{b}" for b in bits]:
            vals = [r[key] for r in group]
            summary[opt][key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return {"bits": list(bits), "runs": rows, "summary": summary}


def precision_markdown(table: Dict[str, object]) -> str:
    bits = table["bits"]
    head = "| method | runs | hard float % | " + " | ".join(f"hard {b}-bit %" for b in bits) + " | " + " | ".join(f"SynOps/sample {b}-bit" for b in bits) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(bits))]
    for opt, s in table["summary"].items():
        n = sum(1 for r in table["runs"] if r["optimizer"] == opt)
        cells = [f"{s['hard_float'][0]:.2f} ± {s['hard_float'][1]:.2f}"]
        cells += [f"{s[f'w{b}'][0]:.2f} ± {s[f'w{b}'][1]:.2f}" for b in bits]
        cells += [f"{s[f'synops_w{b}'][0]:.0f} ± {s[f'synops_w{b}'][1]:.0f}" for b in bits]
        lines.append(f"| {opt} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
