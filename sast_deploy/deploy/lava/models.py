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
* :class:`PyEventConvModel`: lava's ``Conv`` process, bit-identical to ``PyConvModelFixed``,
  event-driven (each input spike scatters its kernel, :mod:`sast_deploy.deploy.conv_scatter`)
  where the stock model runs scipy's ``convolve2d`` per (group, output, input channel)
  over the whole frame every step; selected the same way.
* :class:`PyCopiesDenseModel` and the block and network models: the K-copy graph of
  :class:`sast_deploy.deploy.lava.process.CopiesNetwork`.

Processes live in :mod:`sast_deploy.deploy.lava.process`, models here, as Lava lays out
its own (``proc/dense/process.py``, ``proc/dense/models.py``). The split does not fight the
model map of :func:`run_config`: its entries are keyed by process class (``Dense``,
``Conv``) or by process instance (every process of a ``CopiesNetwork``), never by module,
so Lava's compiler takes them without its search of a process's folder; and where it does
search (a process of ours without an entry), it imports every module of that folder, this
one included, and finds the models here.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from lava.lib.dl.netx.blocks.models import AbstractPyBlockModel
from lava.lib.dl.netx.hdf5 import Network
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.proc.conv import utils as conv_utils
from lava.proc.conv.models import AbstractPyConvModel
from lava.proc.conv.process import Conv
from lava.proc.dense.models import AbstractPyDenseModelBitAcc
from lava.proc.dense.process import Dense

from ..conv_scatter import ScatterTable, lava_conv_table
from ...functional.lif import exact_float
from ..netx_weights import stored_weights
from .process import CopiesDense, CopiesDenseBlock, CopiesNetwork

__all__ = ["CopiesDense", "CopiesDenseBlock", "CopiesNetwork", "CopiesProduct", "PyEventConvModel", "PyEventDenseModel",
           "run_config"]

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


@implements(proc=Conv, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyEventConvModel(AbstractPyConvModel):
    """Event-driven model of lava's ``Conv``, bit-identical to ``PyConvModelFixed``: each
    input spike adds its kernel to the outputs it reaches (:class:`ScatterTable`, built from
    the weight Var as netx passed it), instead of a convolution of the whole frame; then the
    stock model's int32 cast and 24-bit wrap. Like the stock model it applies no
    ``weight_exp`` (netx's conv synapse leaves it at 0).

    For K copies of a layer (:class:`CopiesNetwork`; ``copies`` = K in the process's
    parameters) the process holds K times the kernel and K times the groups, copy k on
    channels k * C ... (k+1) * C. This model scatters per copy with one copy's table, so the
    copies are independent blocks and ``groups`` is held as an int32, not as the stock
    model's int8 (which wraps past 127 groups and silences the layer). The sums are float64
    integers, exact (``conv_scatter``), and equal the stock model's while they stay inside
    int32, where its float64-to-int32 cast is exact (fan_in * max|w| < 2^31: 2^23 inputs at
    8-bit weights)."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    a_buf: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    weight: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    groups: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=32)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._table: Optional[ScatterTable] = None
        self._copies = int(proc_params.get("copies", 1))

    def _build_table(self, in_xyc: Tuple[int, int, int], out_xyc: Tuple[int, int, int]) -> ScatterTable:
        k = self._copies
        one_copy = self.weight[: self.weight.shape[0] // k]
        if k > 1 and not np.array_equal(self.weight, np.concatenate([one_copy] * k)):
            raise ValueError("a K-copy conv holds K equal kernels, one per copy")
        return lava_conv_table(one_copy, (*in_xyc[:2], in_xyc[2] // k), (*out_xyc[:2], out_xyc[2] // k),
                               self.stride, self.padding, self.dilation, int(self.groups[0]) // k)

    def run_spk(self) -> None:
        self.a_out.send(self.a_buf)
        s_in = self.s_in.recv()
        if self._table is None:
            self._table = self._build_table(s_in.shape, self.a_buf.shape)
        k = self._copies
        w, h, kc = s_in.shape
        per_copy = s_in.reshape(w * h, k, kc // k).swapaxes(0, 1)  # [K, x*y, C]: copy k's frame
        a = self._table(per_copy, graded=self.num_message_bits.item() > 0)  # [K, out x*y*C]
        wo, ho, kco = self.a_buf.shape
        a = a.reshape(k, wo * ho, kco // k).swapaxes(0, 1).reshape(wo, ho, kco)
        # the stock model's cast of its sums to the weights' int32, then its 24-bit wrap
        self.a_buf = conv_utils.signed_clamp(a.astype(np.int32), bits=24)


@implements(proc=CopiesDense, protocol=LoihiProtocol)
@requires(CPU)
@tag("bit_accurate_loihi", "fixed_pt")
class PyCopiesDenseModel(_AbstractEventDenseModel):
    """Per-copy products of :class:`CopiesDense`; each copy bit-identical to ``PyDenseModelBitAcc``."""


@implements(proc=CopiesDenseBlock, protocol=LoihiProtocol)
class PyCopiesDenseBlockModel(AbstractPyBlockModel):
    pass


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
    models: Dict[Any, type] = {Dense: PyEventDenseModel, Conv: PyEventConvModel}
    if isinstance(net, CopiesNetwork):
        models.update(_copies_models(net))
    return Loihi2SimCfg(select_tag=select_tag, exception_proc_model_map=models)
