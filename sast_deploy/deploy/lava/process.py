"""Lava processes of our own: K copies of a network in one graph (their process models:
:mod:`sast_deploy.deploy.lava.models`, as Lava lays out ``process.py`` and ``models.py``).

* :class:`CopiesNetwork`: netx's ``Network`` built from the single-copy HDF5 file, with K
  copies per graph. Dense layers hold one weight block and compute K per-copy products
  (:class:`CopiesDense`), so a step costs K products, not one block-diagonal product of
  K^2 blocks (and memory stays that of one copy). Conv layers are netx's, stacking the
  copies along the channels with K times the groups; the event-driven Conv model scatters
  them per copy and holds the groups as int32, so K is not bounded by the stock model's
  int8 groups.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from lava.lib.dl.netx.blocks.process import AbstractBlock
from lava.lib.dl.netx.hdf5 import Network
from lava.lib.dl.netx.utils import optimize_weight_bits
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var


class CopiesDense(AbstractProcess):
    """K copies of one Dense synapse side by side: input k * n_in ... (k+1) * n_in feeds
    output k * n_out ... (k+1) * n_out through ``weights`` [n_out, n_in]. Parameters as
    lava's ``Dense`` (``weight_exp``, ``num_weight_bits``, ``sign_mode``), plus ``copies``."""

    def __init__(self, *, weights: np.ndarray, copies: int, num_message_bits: int = 0,
                 name: Optional[str] = None, **kwargs) -> None:
        super().__init__(weights=weights, copies=copies, num_message_bits=num_message_bits, name=name, **kwargs)
        n_out, n_in = weights.shape
        self.s_in = InPort(shape=(copies * n_in,))
        self.a_out = OutPort(shape=(copies * n_out,))
        self.weights = Var(shape=weights.shape, init=weights)
        self.a_buff = Var(shape=(copies * n_out,), init=0)
        self.num_message_bits = Var(shape=(1,), init=num_message_bits)


class CopiesDenseBlock(AbstractBlock):
    """netx's Dense block (synapse -> LIF neurons) for K copies: a :class:`CopiesDense`
    synapse and K * n_out neurons with the layer's parameters."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.synapse = CopiesDense(
            weights=kwargs.pop("weight"), copies=kwargs.pop("copies"),
            weight_exp=kwargs.pop("weight_exponent", 0), num_weight_bits=kwargs.pop("num_weight_bits", 8),
            num_message_bits=self.input_message_bits,
        )  # no sign_mode, as netx's Dense block: the model derives it from the weights
        self.neuron = self._neuron(kwargs.pop("bias", None))
        self.inp = InPort(shape=self.synapse.s_in.shape)
        self.out = OutPort(shape=self.neuron.s_out.shape)
        self.inp.connect(self.synapse.s_in)
        self.synapse.a_out.connect(self.neuron.a_in)
        self.neuron.s_out.connect(self.out)
        self._clean()

    def export_hdf5(self, handle) -> None:
        raise NotImplementedError


class _CopiesConvConfig:
    """A conv layer's HDF5 description (netx's NetDict) seen as K copies of the layer: the
    kernel repeated along the output channels with K times the groups, so output channels
    k * C ... (k+1) * C see only input channels of copy k."""

    def __init__(self, layer_config, copies: int):
        self._config, self._copies = layer_config, copies

    def keys(self):
        return self._config.keys()

    def __getitem__(self, key: str):
        value = self._config[key]
        if key == "weight":  # [out, in / groups, kH, kW]
            return np.concatenate([value] * self._copies, axis=0)
        if key == "groups":
            return value * self._copies
        if key == "shape":  # (C, H, W)
            return np.asarray([value[0] * self._copies, *value[1:]])
        if key == "bias":
            return np.tile(value, self._copies)
        return value


class CopiesNetwork(Network):
    """netx's ``Network`` for K copies of the network in the single-copy HDF5 file
    ``net_config``: copy k reads inputs k * P ... (k+1) * P of the input channels (dense
    first layer: input features k * F ... (k+1) * F) and writes outputs k * C ... (k+1) * C.
    netx's own code builds the layers (neuron parameters, weight-bit optimisation on the
    single-copy weights, resets, flatten); only the synapses are per-copy."""

    def __init__(self, net_config: str, copies: int, **kwargs) -> None:
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.copies = copies
        self._layers_built = 0
        super().__init__(net_config=net_config, **kwargs)

    def create_dense(self, layer_config, input_message_bits: int = 0, reset_interval: Optional[int] = None,
                     reset_offset: int = 0, spike_exp: int = 6, sparse_synapse: bool = False,
                     rec: bool = False) -> Tuple[AbstractBlock, str]:
        if rec or sparse_synapse or "delay" in layer_config.keys() or "neuron" not in layer_config.keys():
            raise NotImplementedError("CopiesNetwork builds feed-forward dense layers with neurons, without delays")
        n_out = int(np.prod(layer_config["shape"]))
        weight, num_weight_bits, weight_exponent, _ = optimize_weight_bits(layer_config["weight"])
        params: Dict[str, Any] = dict(
            shape=(self.copies * n_out,), copies=self.copies, weight=weight, num_weight_bits=num_weight_bits,
            weight_exponent=weight_exponent, input_message_bits=input_message_bits,
            neuron_params=Network.get_neuron_params(layer_config["neuron"], reset_interval=reset_interval,
                                                    reset_offset=reset_offset, spike_exp=spike_exp),
        )
        if "bias" in layer_config.keys():
            params["bias"] = np.tile(layer_config["bias"], self.copies)
        self._layers_built += 1
        return CopiesDenseBlock(**params), Network._table_str(type_str="Dense", width=1, height=1,
                                                              channel=self.copies * n_out, delay=False)

    def create_conv(self, layer_config, input_shape: Tuple[int, int, int], input_message_bits: int = 0,
                    reset_interval: Optional[int] = None, reset_offset: int = 0,
                    spike_exp: int = 6) -> Tuple[AbstractBlock, str]:
        if self._layers_built == 0:  # netx read the single-copy (x, y, channels) of the input layer
            input_shape = (*input_shape[:2], input_shape[2] * self.copies)
        self._layers_built += 1
        block, table = Network.create_conv(_CopiesConvConfig(layer_config, self.copies), input_shape,
                                           input_message_bits, reset_interval, reset_offset, spike_exp)
        block.synapse.proc_params["copies"] = self.copies  # PyEventConvModel scatters per copy
        return block, table
