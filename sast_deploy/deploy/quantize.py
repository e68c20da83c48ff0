"""Stage 5, quantization: a trained network in Loihi 2 fixed point, and its report.

Each LIF layer maps onto Lava's ``PyLifModelBitAcc`` fed by a Dense (``PyDenseModelBitAcc``)
or Conv (``PyConvModelFixed``) process, as lava-dl netx builds them:

* weights: signed ``weight_bits`` mantissas (8 by default), ``w_int = round(w * scale)``;
* threshold: ``vth_mant = round(v_th * scale)`` (compared as v > vth << 6), same scale, so
  the layer computes the float layer's function scaled by ``scale``;
* current decay: ``iDecay = 4096`` (netx du = 4095): no synaptic current, as in training (a
  property of the neuron model, not a choice of the target: the emulator has no current);
* voltage decay: ``vDecay = round(4096 (1 - beta))``.

(The Loihi constants, 4096, the 6-bit alignment, the 24-bit state, live in
:mod:`sast_deploy.functional.lif`.)

The scale of a layer is the largest that keeps every weight inside the mantissa range and
the threshold inside 17 bits. The sum-pool layer is a depthwise convolution with one weight
(netx 0.6.0 has no pool layer). :mod:`sast_deploy.deploy.emulator` runs exactly this arithmetic;
Lava's simulator cross-checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..configs import default_spec_path
from ..errors import SastDeployError
from ..functional.lif import LOIHI_ACT_SHIFT, LOIHI_STATE_BITS, LOIHI_VTH_BITS, LOIHI_WEIGHT_BITS
from ..training.model import SpikingNet, non_finite_parameters
from ..validation import check_ranges, file_data, ranged, validated


class QuantizationError(SastDeployError, ValueError):
    """The network cannot be represented on the target; the message names the layer and field."""


@file_data
@dataclass(frozen=True)
class Loihi2Spec:
    """A Loihi 2 export target (``export/loihi2.toml``): the mantissa widths the quantizer may
    use, at most Loihi 2's. The 24-bit state and the absent synaptic current are fixed by the
    neuron model (:mod:`sast_deploy.functional.lif`), not chosen here."""

    name: str = "loihi2"
    weight_bits: ranged(int, ge=2, le=LOIHI_WEIGHT_BITS) = LOIHI_WEIGHT_BITS  # signed weight mantissa bits
    vth_bits: ranged(int, ge=1, le=LOIHI_VTH_BITS) = LOIHI_VTH_BITS  # unsigned threshold mantissa bits

    def __post_init__(self):
        check_ranges(self, "", QuantizationError)

    @classmethod
    def from_toml(cls, path: str | Path) -> "Loihi2Spec":
        from ..training.recipe import read_toml

        return validated(cls, read_toml(path, "target spec"), str(path), QuantizationError)

    @property
    def weight_max(self) -> int:
        return (1 << (self.weight_bits - 1)) - 1

    @property
    def vth_max(self) -> int:
        return (1 << self.vth_bits) - 1


def load_spec(path: Optional[str | Path] = None) -> Loihi2Spec:
    """The target spec of ``path``; without one, export/loihi2.toml (built-in defaults when that is
    absent). A named file that does not exist is an error, never silently the default."""
    if path:
        return Loihi2Spec.from_toml(path)
    default = default_spec_path()  # export/loihi2.toml as the package ships it
    return Loihi2Spec.from_toml(default) if default.is_file() else Loihi2Spec()


def with_weight_bits(spec: Loihi2Spec, weight_bits: Optional[int]) -> Loihi2Spec:
    """``spec`` with ``weight_bits``-bit weight mantissas, named ``<name>-w<bits>`` (``spec`` itself
    for None); bits outside the target's range are a QuantizationError."""
    if weight_bits is None:
        return spec
    try:
        return replace(spec, weight_bits=weight_bits, name=f"{spec.name}-w{weight_bits}")
    except QuantizationError as exc:
        raise QuantizationError(f"target {spec.name}: {exc}") from None


@dataclass
class QuantizedLayer:
    """One layer in fixed point. Weights: dense [out, in]; conv/pool [out, in/groups, kH, kW]."""

    kind: str  # a key of sast_deploy.deploy.layers.LAYER_KINDS
    weight: np.ndarray  # int64 mantissas
    vth_mant: int
    v_decay: int
    i_decay: int
    scale: float  # mantissa units per float weight unit
    in_shape: Tuple[int, ...]  # (C, H, W) or (N,)
    out_shape: Tuple[int, ...]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    groups: int = 1
    n_clipped: int = 0
    mean_abs_error: float = 0.0  # mean |w - w_int / scale| in float weight units


@dataclass
class QuantizedNet:
    layers: List[QuantizedLayer]
    input_shape: Tuple[int, int, int]
    n_classes: int
    spec: Loihi2Spec = field(default_factory=Loihi2Spec)

    def report(self) -> List[Dict[str, object]]:
        """Per layer: scale, clipped weights, mean |quantization error|, out-of-range warnings."""
        rows = []
        for i, q in enumerate(self.layers):
            fan_in = int(np.abs(q.weight).reshape(q.weight.shape[0], -1).sum(1).max())
            worst_u = fan_in << LOIHI_ACT_SHIFT  # every input spiking at once, all weights at their magnitude
            warnings = []
            if q.vth_mant > self.spec.vth_max:
                warnings.append(f"vth_mant {q.vth_mant} exceeds {self.spec.vth_bits} bits")
            if worst_u >= 1 << (LOIHI_STATE_BITS - 1):
                warnings.append(f"worst-case input {worst_u} can exceed the {LOIHI_STATE_BITS}-bit state (wraps)")
            rows.append({
                "layer": i, "kind": q.kind, "shape": list(q.weight.shape), "scale": q.scale,
                "vth_mant": q.vth_mant, "v_decay": q.v_decay, "i_decay": q.i_decay,
                "weight_min": int(q.weight.min()), "weight_max": int(q.weight.max()),
                "clipped_weights": q.n_clipped, "mean_abs_quant_error": q.mean_abs_error,
                "worst_case_input": worst_u, "warnings": warnings,
            })
        return rows


def layer_scale(max_abs_weight: float, v_th: float, spec: Loihi2Spec) -> float:
    """Mantissa units per float unit of a layer whose largest |weight| is ``max_abs_weight``
    and whose threshold is ``v_th``: the largest scale that keeps every weight inside the
    mantissa range and the threshold inside its bits."""
    return min(spec.weight_max / max_abs_weight, spec.vth_max / v_th)  # the threshold must fit its mantissa


def threshold_mantissa(max_abs_weight: float, v_th: float, spec: Loihi2Spec) -> int:
    """The threshold mantissa the quantizer gives ``v_th`` (0: not representable, the
    layer's weights leave it no resolution below one mantissa unit)."""
    return int(round(v_th * layer_scale(max_abs_weight, v_th, spec)))


def max_abs_weight(layer) -> float:
    """The largest |weight| of one layer of a SpikingNet (the sum-pool's single weight for a pool)."""
    from .layers import layer_kind  # the layer kinds build on this module's types

    return layer_kind(layer.kind).max_abs_weight(layer.synapse)


def quantize_weights(w: np.ndarray, v_th: float, spec: Loihi2Spec, layer: str) -> Tuple[np.ndarray, int, float, int, float]:
    """Float weights ``w`` and threshold ``v_th`` of one layer in mantissas: (integer weights,
    threshold mantissa, scale (mantissa units per float unit), weights clipped, mean |w - w_int /
    scale| in float units). ``layer`` names the layer in errors."""
    max_abs = float(np.abs(w).max())
    if max_abs == 0.0:
        raise QuantizationError(f"{layer}: all weights are zero (nothing to deploy; netx cannot load it either)")
    scale = layer_scale(max_abs, v_th, spec)
    w_int = np.rint(w * scale).astype(np.int64)
    n_clipped = int(np.sum((w_int > spec.weight_max) | (w_int < -spec.weight_max - 1)))
    w_int = np.clip(w_int, -spec.weight_max - 1, spec.weight_max)
    vth_mant = threshold_mantissa(max_abs, v_th, spec)
    if vth_mant < 1:
        raise QuantizationError(f"{layer}: threshold rounds to 0 at scale {scale:.3g}")
    err = float(np.mean(np.abs(w - w_int / scale)))
    return w_int, vth_mant, scale, n_clipped, err


def quantize(model: SpikingNet, spec: Loihi2Spec = Loihi2Spec()) -> QuantizedNet:
    """Map every layer of a trained network to Loihi 2 fixed point, each as its kind
    (:mod:`sast_deploy.deploy.layers`) quantizes it."""
    from .layers import layer_kind  # the layer kinds build on this module's types

    bad = non_finite_parameters(model)
    if bad:
        raise QuantizationError(f"non-finite weights in {', '.join(bad)}: a diverged network cannot be exported")
    layers: List[QuantizedLayer] = []
    shape: Tuple[int, ...] = model.input_shape
    for i, layer in enumerate(model.layers):
        name = f"layer {i} ({layer.kind})"
        layers.append(layer_kind(layer.kind, name).quantize(layer, shape, spec, name))
        shape = layers[-1].out_shape
    return QuantizedNet(layers, model.input_shape, model.n_classes, spec)


def conv_out_shape(shape, channels, kernel, stride, padding) -> Tuple[int, int, int]:
    """The (C, H, W) output of a conv with ``channels`` outputs over (C, H, W) inputs of ``shape``
    (kernel, stride, padding: (height, width) pixels; no dilation)."""
    _, h, w = shape
    return (
        int(channels),
        (h + 2 * padding[0] - kernel[0]) // stride[0] + 1,
        (w + 2 * padding[1] - kernel[1]) // stride[1] + 1,
    )
