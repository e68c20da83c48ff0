"""The ``validation`` block of metrics.json: how the trained network scores on the run's
validation split in float (surrogate and hard spikes) and deployed, i.e. quantized with the
default target spec (``export/loihi2.toml``) and run on the bit-exact emulator, which equals
Lava's simulator spike for spike. Model selection (the tuner, calibration) reads these
numbers, never the test split's."""

from __future__ import annotations

import copy
from typing import Dict, Mapping, Optional

from ..data.datasets import class_counts
from ..data.frames import FrameDataset
from ..errors import one_line
from .evaluate import accuracy_pct, evaluate
from .model import SpikingNet


def validation_metrics(net: SpikingNet, val: FrameDataset, n_classes: int,
                       float_accuracies: Optional[Mapping[str, float]] = None, batch_size: int = 512) -> Dict[str, object]:
    """{surrogate_accuracy, hard_accuracy, emulator_accuracy (percent), emulator_synops_per_sample,
    n_samples, class_counts} on ``val``; ``emulator_accuracy`` is None, and ``emulator_error``
    says why, when the network cannot be quantized. ``float_accuracies``: the float network's
    surrogate and hard accuracy on ``val`` when already known (the last epoch's history row)."""
    if float_accuracies is None:
        float_accuracies = evaluate(net, val, ("surrogate", "hard"), batch_size)
    return {
        "surrogate_accuracy": float(float_accuracies["surrogate_accuracy"]),
        "hard_accuracy": float(float_accuracies["hard_accuracy"]),
        **deployed_accuracy(net, val),
        "n_samples": len(val),
        "class_counts": class_counts(val.labels, n_classes),
    }


def deployed_accuracy(net: SpikingNet, data: FrameDataset) -> Dict[str, object]:
    """{emulator_accuracy (percent), emulator_synops_per_sample} of ``net`` quantized with the
    default spec on ``data``; both None and ``emulator_error`` the reason when it cannot be
    quantized (a network that cannot be deployed is a result, not a crash of its training)."""
    from ..deploy.emulator import emulate_dataset
    from ..deploy.quantize import QuantizationError, load_spec, quantize

    try:
        on_cpu = net if next(net.parameters()).device.type == "cpu" else copy.deepcopy(net).cpu()
        emulation = emulate_dataset(quantize(on_cpu, load_spec()), data)
    except QuantizationError as exc:
        return {"emulator_accuracy": None, "emulator_synops_per_sample": None, "emulator_error": one_line(exc)}
    return {"emulator_accuracy": accuracy_pct(emulation.counts, data.labels),
            "emulator_synops_per_sample": emulation.synops_per_sample}
