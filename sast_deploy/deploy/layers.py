"""Layer kinds: one object per kind of layer that knows how to quantize, write, read, emulate,
simulate and interchange itself, found through :data:`LAYER_KINDS` by the kind's name (the
``kind`` of a :class:`~sast_deploy.training.model.SpikingLayer` and of a
:class:`~sast_deploy.deploy.quantize.QuantizedLayer`, the ``sast_kind`` attribute of a netx
layer group). Adding a layer kind is one class here and one entry in :data:`LAYER_KINDS`.

The stages keep what every kind shares (the LIF neuron and its netx group, the file limits,
the emulator's time loop) and ask the layer's kind for the rest, as lava-dl netx gives each
layer type its own ``create_*`` and slayer's blocks their own ``export_hdf5``. The emulator's
arithmetic stays in :mod:`sast_deploy.deploy.emulator` (its synapse classes), the Lava
models in :mod:`sast_deploy.deploy.lava`; a kind chooses them.

Weights are in the layout of :attr:`QuantizedLayer.weight`: dense [out, in], conv and pool
[out, in / groups, kH, kW]; shapes are (C, H, W) maps or (N,) feature vectors, no batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Tuple

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from ..functional.lif import LOIHI_DECAY_UNITY, LOIHI_STATE_BITS, decay_to_fixed_point
from ..training.model import SpikingLayer
from . import netx_fields as fields
from .netx_fields import MAX_WEIGHTS, NetxFormatError
from .netx_weights import netx_dense_weights
from .quantize import Loihi2Spec, QuantizationError, QuantizedLayer, conv_out_shape, quantize_weights

if TYPE_CHECKING:
    from .interchange import OnnxGraph

Shape = Tuple[int, ...]
#: The emulator's synapse of a layer: integer spikes [M, *in_shape] -> int64 synaptic input [M, *out_shape]
Synapse = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Geometry:
    """Where a layer's weights apply: its input and output shapes, and for a conv its stride and
    padding (pixels, (height, width)) and groups. Field for field the geometry of a QuantizedLayer."""

    in_shape: Shape
    out_shape: Shape
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    groups: int = 1


@dataclass(frozen=True)
class LayerKind(ABC):
    """What one kind of layer does in each stage. ``name``: the kind's key in
    :data:`LAYER_KINDS`; ``netx_type``: the netx layer type it is written as (netx 0.6.0 knows
    dense and conv); ``is_spatial``: it takes and gives (C, H, W) maps (False: feature vectors,
    so a (C, H, W) input is flattened first)."""

    name: str
    netx_type: str
    is_spatial: bool

    # --- quantization (float network -> fixed point) -------------------------------------

    def float_weight(self, synapse: torch.nn.Module, in_shape: Shape) -> np.ndarray:
        """The float64 weights of a trained synapse whose inputs have ``in_shape``."""
        return synapse.weight.detach().double().numpy()

    def max_abs_weight(self, synapse: torch.nn.Module) -> float:
        """The largest |weight| of a trained synapse (what sets the layer's scale)."""
        return float(synapse.weight.detach().abs().max())

    @abstractmethod
    def geometry(self, synapse: torch.nn.Module, in_shape: Shape) -> Geometry:
        """The geometry of a trained synapse whose inputs have ``in_shape``."""

    def quantize(self, layer: SpikingLayer, in_shape: Shape, spec: Loihi2Spec, name: str) -> QuantizedLayer:
        """A trained layer in fixed point (weights, threshold and decays; ``name`` for errors)."""
        v_decay = decay_to_fixed_point(layer.lif.beta)
        weight = self.float_weight(layer.synapse, in_shape)
        w_int, vth, scale, clipped, err = quantize_weights(weight, layer.lif.v_th, spec, name)
        return QuantizedLayer(self.name, w_int, vth, v_decay, LOIHI_DECAY_UNITY, scale, n_clipped=clipped,
                              mean_abs_error=err, **vars(self.geometry(layer.synapse, in_shape)))

    # --- netx HDF5 -------------------------------------------------------------------------

    @abstractmethod
    def write_netx(self, g: h5py.Group, q: QuantizedLayer) -> None:
        """The fields of this kind in a netx layer group (type, shape, weight and neuron are common)."""

    @abstractmethod
    def read_netx(self, g: h5py.Group, in_shape: Shape, out_shape: Shape, path: Path) -> Tuple[str, Geometry]:
        """The kind a netx group of this kind's type holds and its geometry, validated against
        the input shape and the group's /shape, and the weight's declared shape checked before
        anything reads it."""

    def stored_kind(self, g: h5py.Group, path: Path) -> str:
        """The name in a group's ``sast_kind`` attribute, one of the kinds written as this netx
        type (a file from another writer has none: this kind)."""
        names = tuple(kind.name for kind in LAYER_KINDS.values() if kind.netx_type == self.netx_type)
        name = fields.attribute(g, "sast_kind", self.name, path)
        if name not in names:
            raise NetxFormatError(f"{path}: {g.name} attribute sast_kind must be {' or '.join(names)}, got {name!r}")
        return name

    # --- emulator --------------------------------------------------------------------------

    @abstractmethod
    def synapse(self, q: QuantizedLayer, name: str) -> Synapse:
        """The emulator's synapse of a quantized layer (``name`` for errors)."""

    @abstractmethod
    def fan_out(self, q: QuantizedLayer) -> torch.Tensor:
        """Synapses leaving each input neuron of a layer, float64 of its input shape."""

    # --- interchange (NIR, ONNX) ----------------------------------------------------------

    @abstractmethod
    def nir_synapse(self, synapse: torch.nn.Module, in_shape: Shape, gain: float):
        """The NIR node of a trained synapse for inputs of ``in_shape``, its weights times ``gain``."""

    @abstractmethod
    def onnx_synapse(self, g: OnnxGraph, s: str, q: QuantizedLayer, spatial_input: bool) -> str:
        """ONNX nodes computing the layer's synaptic input (int64, weight mantissa units) from the
        spikes ``s`` ([batch, *input], (C, H, W) maps when ``spatial_input``); its name."""


@dataclass(frozen=True)
class Dense(LayerKind):
    """A fully connected layer (``torch.nn.Linear``; Lava's Dense)."""

    name: str = "dense"
    netx_type: str = "dense"
    is_spatial: bool = False

    def geometry(self, synapse: torch.nn.Module, in_shape: Shape) -> Geometry:
        return Geometry((int(np.prod(in_shape)),), (int(synapse.weight.shape[0]),))

    def write_netx(self, g: h5py.Group, q: QuantizedLayer) -> None:
        g.create_dataset("inFeatures", data=q.weight.shape[1])
        g.create_dataset("outFeatures", data=q.weight.shape[0])

    def read_netx(self, g: h5py.Group, in_shape: Shape, out_shape: Shape, path: Path) -> Tuple[str, Geometry]:
        n_in = int(np.prod(in_shape))
        declared = fields.dataset(g, "weight", path, MAX_WEIGHTS).shape
        if len(out_shape) != 1 or declared != (out_shape[0], n_in):
            raise NetxFormatError(f"{path}: {g.name}/weight has shape {declared}, expected {(out_shape[0], n_in)} "
                                  f"for /shape {out_shape}")
        return self.stored_kind(g, path), Geometry((n_in,), out_shape)

    def synapse(self, q: QuantizedLayer, name: str) -> Synapse:
        from .emulator import _DenseSynapse  # the emulator dispatches through this table

        return _DenseSynapse(q, name)

    def fan_out(self, q: QuantizedLayer) -> torch.Tensor:
        """n_out for every input."""
        return torch.full(q.in_shape, float(q.weight.shape[0]), dtype=torch.float64)

    def nir_synapse(self, synapse: torch.nn.Module, in_shape: Shape, gain: float):
        import nir

        return nir.Linear(weight=(self.float_weight(synapse, in_shape) * gain).astype(np.float32))

    def onnx_synapse(self, g: OnnxGraph, s: str, q: QuantizedLayer, spatial_input: bool) -> str:
        """netx's weight mantissas and exponent, the exponent applied as a shift."""
        if spatial_input:
            s = g.op("Flatten", [s], axis=1)
        ws, wexp = netx_dense_weights(q.weight)
        a = g.op("MatMul", [s, g.const(ws.T)])
        if wexp < 0:
            a = g.floor_div_pow2(a, -wexp)
        elif wexp > 0:
            a = g.op("Mul", [a, g.const(1 << wexp)])
        return a


@dataclass(frozen=True)
class Conv(LayerKind):
    """A 2-D convolution (``torch.nn.Conv2d``, no dilation; Lava's Conv, weights in PyTorch's
    layout: netx flips and transposes them itself)."""

    name: str = "conv"
    netx_type: str = "conv"
    is_spatial: bool = True

    def geometry(self, synapse: torch.nn.Module, in_shape: Shape) -> Geometry:
        c_out, _, kh, kw = synapse.weight.shape
        return Geometry(tuple(in_shape), conv_out_shape(in_shape, c_out, (kh, kw), synapse.stride, synapse.padding),
                        tuple(synapse.stride), tuple(synapse.padding), synapse.groups)

    def write_netx(self, g: h5py.Group, q: QuantizedLayer) -> None:
        g.create_dataset("stride", data=np.asarray(q.stride))
        g.create_dataset("padding", data=np.asarray(q.padding))
        g.create_dataset("dilation", data=np.asarray([1, 1]))
        g.create_dataset("groups", data=q.groups)

    def read_netx(self, g: h5py.Group, in_shape: Shape, out_shape: Shape, path: Path) -> Tuple[str, Geometry]:
        stride, padding = (fields.pair(g, key, path) for key in ("stride", "padding"))
        groups = fields.int_scalar(g, "groups", path)
        if min(stride) < 1 or min(padding) < 0 or groups < 1 or len(in_shape) != 3 or in_shape[0] % groups:
            raise NetxFormatError(f"{path}: {g.name}: stride {stride}, padding {padding} or groups {groups} "
                                  f"do not fit an input of shape {in_shape}")
        declared = fields.dataset(g, "weight", path, MAX_WEIGHTS).shape
        if len(declared) != 4 or declared[1] * groups != in_shape[0] or min(declared[2:]) < 1:
            raise NetxFormatError(f"{path}: {g.name}/weight has shape {declared}, "
                                  f"expected [out, {in_shape[0] // groups}, kH, kW]")
        expected = conv_out_shape(in_shape, declared[0], declared[2:], stride, padding)
        if out_shape != expected or min(expected) < 1:
            raise NetxFormatError(f"{path}: {g.name}/shape is {out_shape}; its weight, stride and padding give {expected}")
        return self.stored_kind(g, path), Geometry(tuple(in_shape), out_shape, stride, padding, groups)

    def synapse(self, q: QuantizedLayer, name: str) -> Synapse:
        from .emulator import _ConvSynapse  # the emulator dispatches through this table

        return _ConvSynapse(q, name)

    def fan_out(self, q: QuantizedLayer) -> torch.Tensor:
        """The output positions and channels each input pixel reaches (borders reach fewer): the
        gradient of the summed conv of all-ones weights."""
        x = torch.ones((1, *q.in_shape), dtype=torch.float64, requires_grad=True)
        ones = torch.ones(q.weight.shape, dtype=torch.float64)
        F.conv2d(x, ones, stride=q.stride, padding=q.padding, groups=q.groups).sum().backward()
        return x.grad[0]

    def nir_synapse(self, synapse: torch.nn.Module, in_shape: Shape, gain: float):
        return _nir_conv(self.float_weight(synapse, in_shape) * gain, in_shape, synapse.stride, synapse.padding,
                         synapse.groups)

    def onnx_synapse(self, g: OnnxGraph, s: str, q: QuantizedLayer, spatial_input: bool) -> str:
        """The conv in float64 (exact: sums of small integers), wrapped to 24 bits as Lava's Conv."""
        from onnx import TensorProto

        half = 1 << (LOIHI_STATE_BITS - 1)
        xf = g.op("Cast", [s], to=TensorProto.DOUBLE)
        conv = g.op("Conv", [xf, g.const(q.weight.astype(np.float64))], strides=list(q.stride),
                    pads=[q.padding[0], q.padding[1], q.padding[0], q.padding[1]], group=q.groups)
        a = g.op("Cast", [conv], to=TensorProto.INT64)
        return g.op("Sub", [g.op("Mod", [g.op("Add", [a, g.const(half)]), g.const(2 * half)]), g.const(half)])  # 24-bit wrap


@dataclass(frozen=True)
class SumPool(Conv):
    """A sum-pool times one fixed weight (:class:`~sast_deploy.training.model.SumPool2d`, window
    = stride = ``kernel``). netx 0.6.0 has no pool layer: it is a depthwise conv whose weights are
    all that one weight, and so is run, read and written as a conv."""

    name: str = "pool"

    def float_weight(self, synapse: torch.nn.Module, in_shape: Shape) -> np.ndarray:
        k = synapse.kernel
        return np.full((in_shape[0], 1, k, k), float(synapse.weight))

    def max_abs_weight(self, synapse: torch.nn.Module) -> float:
        return abs(float(synapse.weight))

    def geometry(self, synapse: torch.nn.Module, in_shape: Shape) -> Geometry:
        k, channels = synapse.kernel, in_shape[0]
        return Geometry(tuple(in_shape), conv_out_shape(in_shape, channels, (k, k), (k, k), (0, 0)), (k, k),
                        groups=channels)

    def nir_synapse(self, synapse: torch.nn.Module, in_shape: Shape, gain: float):
        """A conv whose kernel is diagonal in the channels (NIR's type inference does not follow
        groups, so no depthwise conv here)."""
        k, c = synapse.kernel, in_shape[0]
        w = np.zeros((c, c, k, k))
        w[np.arange(c), np.arange(c)] = float(synapse.weight)
        return _nir_conv(w * gain, in_shape, (k, k), (0, 0), 1)


def _nir_conv(weight: np.ndarray, in_shape: Shape, stride, padding, groups: int):
    """A NIR Conv2d without bias for (C, H, W) inputs of ``in_shape``."""
    import nir

    return nir.Conv2d(
        input_shape=tuple(in_shape[1:]), weight=weight.astype(np.float32), stride=tuple(stride),
        padding=tuple(padding), dilation=(1, 1), groups=groups, bias=np.zeros(weight.shape[0], dtype=np.float32),
    )


#: Every layer kind by name: the one place a stage finds what a layer's kind does.
LAYER_KINDS: Dict[str, LayerKind] = {kind.name: kind for kind in (Dense(), Conv(), SumPool())}


def layer_kind(name: str, where: str = "layer") -> LayerKind:
    """The kind named ``name``; a QuantizationError naming ``where`` if there is none."""
    kind = LAYER_KINDS.get(name)
    if kind is None:
        raise QuantizationError(f"{where}: no Loihi 2 mapping for layer kind {name!r}")
    return kind


def netx_readers() -> Dict[str, LayerKind]:
    """The kind that reads each netx layer type: the one named like it (a type's other kinds,
    the sum-pool of a conv, are told apart by the group's ``sast_kind``)."""
    return {kind.netx_type: kind for kind in LAYER_KINDS.values() if kind.name == kind.netx_type}
