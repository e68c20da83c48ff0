"""A Lava sink that counts the output spikes of each sample window.

The host reads a Lava Var one element per message, relayed by the runtime service (lava
0.10's ``PyRuntimeService._relay_to_runtime_data_given_model_id``). Lava's ``RingBuffer``
sink keeps every time step, so reading it costs R messages per output neuron and sample
(R steps per window); this sink keeps one count per window, R times fewer. The read is
short enough that signals may wait for it (:func:`sast_deploy.deploy.lava_runtime.read_var`).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class SpikeCounts(AbstractProcess):
    """Sums its input over consecutive windows of ``window`` time steps: ``counts[..., w]``
    holds the sum of the inputs of steps w * window + 1 ... (w + 1) * window (Lava counts
    steps from 1), for ``windows`` windows; ``shape`` is the input port's."""

    def __init__(self, *, shape: Tuple[int, ...], window: int, windows: int) -> None:
        if window < 1 or windows < 1:
            raise ValueError(f"window and windows must be >= 1, got {window} and {windows}")
        super().__init__(shape=shape, window=window, windows=windows)
        self.a_in = InPort(shape=shape)
        self.counts = Var(shape=tuple(shape) + (windows,), init=0)


@implements(proc=SpikeCounts, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeCountsModel(PyLoihiProcessModel):
    """Integer sums of the received spikes (binary or graded) per window. A step past the last
    window raises (IndexError) where a ring buffer would overwrite the first silently."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
    counts: np.ndarray = LavaPyType(np.ndarray, np.int64)

    def run_spk(self) -> None:
        spikes = self.a_in.recv()
        self.counts[..., (self.time_step - 1) // self.proc_params["window"]] += spikes
