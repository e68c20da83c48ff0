"""Faster Lava process models for the simulator, bit-identical to Lava's own.

Where a Lava time step goes (``benchmarks/lava_step_profile.py``; numbers in the README,
"Simulation speed"): nearly all of it is the synchronisation between the worker processes
(one per process model, plus the runtime service), not the arithmetic, which is 14 % of
the CPU time of a step of the 2312-128-10 MLP (the 2312-128 Dense product 77 µs of about
1.2 ms). So the product is made event-driven (it touches only the weight columns of the
inputs that spiked, as Loihi does), which does not by itself speed up one copy, and the
gain comes from simulating K samples per time step in one graph of the same number of
processes: K copies of the network side by side.

* :class:`PyEventDenseModel`: lava's ``Dense`` process, bit-identical to
  ``PyDenseModelBitAcc`` (the same weight pipeline through Lava's weight utilities, the
  same integer sums and the same shift by ``weight_exp``), selected through the run
  config (:func:`run_config`) so netx builds the same graph.
* :class:`CopiesNetwork`: netx's ``Network`` built from the single-copy HDF5 file, with K
  copies per graph. Dense layers hold one weight block and compute K per-copy products
  (:class:`CopiesDense`), so a step costs K products, not one block-diagonal product of
  K^2 blocks (and memory stays that of one copy). Conv layers stack the copies along the
  channels with K times the groups, which Lava's Conv model already computes per group.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from lava.lib.dl.netx.blocks.models import AbstractPyBlockModel
from lava.lib.dl.netx.blocks.process import AbstractBlock
from lava.lib.dl.netx.hdf5 import Network
from lava.lib.dl.netx.utils import optimize_weight_bits
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.dense.models import AbstractPyDenseModelBitAcc
from lava.proc.dense.process import Dense

from ...functional.lif import LAVA_MAX_CONV_GROUPS, exact_float
from ..netx_weights import stored_weights

# Above this fraction of spiking inputs a step takes the dense path (one BLAS product over
# all K * n_in inputs) rather than the event path (one weight-row copy per input spike):
# the crossover measured in the README, "Simulation speed".
DENSE_PATH_MIN_DENSITY = 1 / 50


class CopiesProduct:
    """Per-copy synaptic input of K copies sharing one weight matrix ``w`` [n_out, n_in]:
    for input spikes s [K * n_in] (copy k at k * n_in ... (k+1) * n_in), returns
    a [K * n_out] int64 with a[k, i] = sum_j w[i, j] s[k, j]. Exact integer arithmetic.

    Sparse steps are event-driven: only the weight columns (stored as rows of w^T) of the
    inputs that spiked are added. Dense steps use one BLAS product per step over the K
    copies. Both sum in floating point, exact because every partial sum is an integer of
    magnitude at most n_in * max|w| (float32 when that is at most 2^24, else float64, exact
    up to 2^53). Graded (non-binary) inputs take the int64 product.
    """

    def __init__(self, w: np.ndarray, copies: int):
        w = np.asarray(w, dtype=np.int64)
        self.copies = int(copies)
        self.n_out, self.n_in = w.shape
        self.columns = np.ascontiguousarray(w.T)  # [n_in, n_out]: column j of w is row j
        worst_sum = self.n_in * int(np.abs(w).max(initial=0))
        # beyond float64's exact integers (no 8-bit layer gets there) numpy's int64 product is exact too
        self.float_columns = self.columns.astype(exact_float(worst_sum) or np.int64)

    def __call__(self, spikes: np.ndarray, graded: bool = False) -> np.ndarray:
        """``spikes`` [K * n_in]: binary (any non-zero is a spike, as in the stock model) or,
        with ``graded``, integer payloads."""
        spikes = np.asarray(spikes).reshape(-1)
        if spikes.size != self.copies * self.n_in:
            raise ValueError(f"expected {self.copies * self.n_in} inputs, got {spikes.size}")
        if graded:
            return (spikes.reshape(self.copies, self.n_in).astype(np.int64) @ self.columns).reshape(-1)
        spiked = np.flatnonzero(spikes)
        if spiked.size >= DENSE_PATH_MIN_DENSITY * spikes.size:
            return self._dense(spikes != 0)
        return self._events(spiked)

    def _events(self, spiked: np.ndarray) -> np.ndarray:
        out = np.zeros((self.copies, self.n_out), dtype=self.float_columns.dtype)
        if spiked.size:
            copy = spiked // self.n_in
            rows = self.float_columns[spiked - copy * self.n_in]  # one weight column per spike
            starts = np.flatnonzero(np.r_[True, copy[1:] != copy[:-1]])  # spiked is sorted by copy
            out[copy[starts]] = np.add.reduceat(rows, starts, axis=0)
        return out.astype(np.int64).reshape(-1)  # exact integers (see class doc)

    def _dense(self, spikes: np.ndarray) -> np.ndarray:
        s = spikes.reshape(self.copies, self.n_in).astype(self.float_columns.dtype)
        return (s @ self.float_columns).astype(np.int64).reshape(-1)  # exact integers (see class doc)


def _single_threaded_blas() -> None:
    # Every process model is its own OS process; BLAS threads in each would only compete
    # for the same cores.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn, a dependency, brings it
        return
    threadpool_limits(limits=1, user_api="blas")


class _AbstractEventDenseModel(AbstractPyDenseModelBitAcc):
    """``PyDenseModelBitAcc``'s ports, variables and arithmetic with :class:`CopiesProduct`
    as the product. Sends the buffered input of step t-1 at step t, as the stock model."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._product: Optional[CopiesProduct] = None

    def run_spk(self):
        if self._product is None:
            _single_threaded_blas()
            self.weights = stored_weights(self.weights, self.proc_params.get("num_weight_bits", 8),
                                          self.proc_params.get("sign_mode"))
            self._product = CopiesProduct(self.weights, self.proc_params.get("copies", 1))
            self.weights_set = True
        self.a_out.send(self.a_buff)
        a_accum = self._product(self.s_in.recv(), graded=self.num_message_bits.item() > 0)
        weight_exp = self.proc_params.get("weight_exp", 0)
        # the stock model's shift on the same int64 sums (right shift floors, as on Loihi)
        self.a_buff = np.left_shift(a_accum, weight_exp) if weight_exp > 0 else np.right_shift(a_accum, -weight_exp)


@implements(proc=Dense, protocol=LoihiProtocol)
@requires(CPU)
@tag("bit_accurate_loihi", "fixed_pt")
class PyEventDenseModel(_AbstractEventDenseModel):
    """Event-driven model of lava's ``Dense``, bit-identical to ``PyDenseModelBitAcc``."""


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


@implements(proc=CopiesDense, protocol=LoihiProtocol)
@requires(CPU)
@tag("bit_accurate_loihi", "fixed_pt")
class PyCopiesDenseModel(_AbstractEventDenseModel):
    """Per-copy products of :class:`CopiesDense`; each copy bit-identical to ``PyDenseModelBitAcc``."""


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


@implements(proc=CopiesDenseBlock, protocol=LoihiProtocol)
class PyCopiesDenseBlockModel(AbstractPyBlockModel):
    pass


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
        if int(layer_config["groups"]) * self.copies > LAVA_MAX_CONV_GROUPS:
            raise ValueError(f"{self.copies} copies of a conv layer with {layer_config['groups']} groups exceed "
                             f"Lava's {LAVA_MAX_CONV_GROUPS} groups")
        if self._layers_built == 0:  # netx read the single-copy (x, y, channels) of the input layer
            input_shape = (*input_shape[:2], input_shape[2] * self.copies)
        self._layers_built += 1
        return Network.create_conv(_CopiesConvConfig(layer_config, self.copies), input_shape, input_message_bits,
                                   reset_interval, reset_offset, spike_exp)


@implements(proc=CopiesNetwork, protocol=LoihiProtocol)
class PyCopiesNetworkModel(AbstractPyBlockModel):
    pass


def _copies_models(net: CopiesNetwork) -> Dict[Any, type]:
    # Keyed by process instance: Lava's compiler takes such entries without searching for
    # models, a search that would execute every module of this package (it scans the
    # directory of the module that defines the process).
    models: Dict[Any, type] = {net: PyCopiesNetworkModel}
    for block in net.layers:
        if isinstance(block, CopiesDenseBlock):
            models[block] = PyCopiesDenseBlockModel
            models[block.synapse] = PyCopiesDenseModel
    return models


def run_config(event_driven: bool = True, select_tag: str = "fixed_pt", net: Optional[Network] = None) -> Loihi2SimCfg:
    """Lava's simulator config for the graph of ``net``; with ``event_driven`` (fixed point
    only) lava's ``Dense`` runs :class:`PyEventDenseModel` instead of ``PyDenseModelBitAcc``,
    through Lava's process-to-model exceptions, and a :class:`CopiesNetwork` runs its models."""
    if not event_driven:
        if isinstance(net, CopiesNetwork):
            raise ValueError("a CopiesNetwork runs on the event-driven models only")
        return Loihi2SimCfg(select_tag=select_tag)
    if select_tag != "fixed_pt":
        raise ValueError(f"the event-driven models are fixed point; select_tag is {select_tag!r}")
    models: Dict[Any, type] = {Dense: PyEventDenseModel}
    if isinstance(net, CopiesNetwork):
        models.update(_copies_models(net))
    return Loihi2SimCfg(select_tag=select_tag, exception_proc_model_map=models)
