"""How much memory a network needs, estimated from its configuration before anything is
allocated, and refused when it does not fit the machine.

A recipe is a few lines of TOML; ``model.hidden = [100000000]`` asks for about 10^11 weights.
torch would try to allocate them (and fail with a traceback, or be killed by the kernel, or
swap for minutes); this module counts the parameters and the neurons of every layer from the
shapes alone and compares an estimate of the training memory with a bound: a fraction
(:data:`MEMORY_FRACTION`) of this machine's physical memory, or of the address-space limit
(``ulimit -v``) when that is lower. The estimate is deliberately rough (bytes of float32
tensors, no allocator overhead); it is there to stop settings that are off by orders of
magnitude, not to pack memory tightly.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ..errors import SastDeployError

BYTES_PER_VALUE = 4  # float32
#: copies of the weights while training: weights, gradient, Adam's two moments, SAM's saved weights, one spare
TRAINING_WEIGHT_COPIES = 6
#: float32 values per neuron, time step and sample while training: synaptic current, membrane
#: potential before and after reset, spike and surrogate derivative, kept for the backward pass,
#: plus their gradients
TRAINING_VALUES_PER_NEURON = 10
#: the same without gradients (evaluation: current, potentials, spikes)
EVAL_VALUES_PER_NEURON = 4
MEMORY_FRACTION = 0.8  # of physical memory (or of ulimit -v): leaves room for the data and Python itself
MAX_HIDDEN_LAYERS = 64  # hidden dense layers; the project's deepest recipe has 2


class ModelSizeError(SastDeployError, ValueError):
    """A network does not fit: its shapes do not fit its input, or its memory the machine."""


@dataclass(frozen=True)
class Layer:
    """One layer's weights and output neurons (per sample and time step)."""

    parameters: int
    neurons: int


@dataclass(frozen=True)
class Footprint:
    """A network's size: its layers, and the neurons of its input."""

    layers: Tuple[Layer, ...]
    input_neurons: int

    @property
    def parameters(self) -> int:
        return sum(layer.parameters for layer in self.layers)

    @property
    def neurons(self) -> int:
        """Input and layer neurons per sample and time step."""
        return self.input_neurons + sum(layer.neurons for layer in self.layers)

    def training_bytes(self, batch_size: int, n_time_bins: int) -> int:
        return BYTES_PER_VALUE * (TRAINING_WEIGHT_COPIES * self.parameters
                                  + TRAINING_VALUES_PER_NEURON * batch_size * n_time_bins * self.neurons)

    def evaluation_bytes(self, batch_size: int, n_time_bins: int) -> int:
        return BYTES_PER_VALUE * (self.parameters + EVAL_VALUES_PER_NEURON * batch_size * n_time_bins * self.neurons)


def footprint(config, input_shape: Sequence[int], n_classes: int) -> Footprint:
    """The layers of :class:`~sast_deploy.training.model.SpikingNet` for ``config`` (a
    ModelConfig), counted from shapes: conv -> optional sum-pool -> dense hidden -> readout."""
    if len(config.hidden) > MAX_HIDDEN_LAYERS:
        raise ModelSizeError(f"model.hidden has {len(config.hidden)} layers; at most {MAX_HIDDEN_LAYERS} are supported")
    shape = tuple(int(s) for s in input_shape)
    layers: List[Layer] = []
    if config.arch == "conv":
        shape, conv = _conv_layers(config, shape)
        layers += conv
    width = math.prod(shape)
    for w_out in (*config.hidden, n_classes):
        layers.append(Layer(width * w_out, w_out))
        width = w_out
    return Footprint(tuple(layers), math.prod(int(s) for s in input_shape))


def _conv_layers(config, shape: Tuple[int, ...]) -> Tuple[Tuple[int, int, int], List[Layer]]:
    """The conv (and pool) layers of a conv net and the shape after them."""
    p, h, w = shape
    k, stride, c = config.conv_kernel, config.conv_stride, config.conv_channels
    if k > min(h, w):
        raise ModelSizeError(f"model.conv_kernel = {k} is larger than the input's {h}x{w} pixels")
    h, w = (h - k) // stride + 1, (w - k) // stride + 1
    layers = [Layer(p * c * k * k, c * h * w)]
    if config.pool > 0:
        if config.pool > min(h, w):
            raise ModelSizeError(f"model.pool = {config.pool} is larger than the conv layer's {h}x{w} output")
        h, w = h // config.pool, w // config.pool
        layers.append(Layer(0, c * h * w))
    return (c, h, w), layers


def memory_bound() -> int:
    """Bytes a network may take: :data:`MEMORY_FRACTION` of physical memory, or of what the
    address-space limit (``ulimit -v``) leaves this process when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        total = min(total, max(0, soft - _address_space_used()))
    return int(MEMORY_FRACTION * total)


def _address_space_used() -> int:
    """Bytes of address space this process already maps (torch's libraries alone take GBs), 0
    where /proc does not tell."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def check_parameters(config, input_shape: Sequence[int], n_classes: int) -> Footprint:
    """Refuse a network whose weights alone exceed :func:`memory_bound` (before building it)."""
    fp = footprint(config, input_shape, n_classes)
    need, bound = BYTES_PER_VALUE * fp.parameters, memory_bound()
    if need > bound:
        raise ModelSizeError(f"model.hidden = {list(config.hidden)[:8]}{'...' if len(config.hidden) > 8 else ''}: "
                             f"{fp.parameters:.3g} weights need {gigabytes(need)}, over the bound of {gigabytes(bound)} "
                             f"({MEMORY_FRACTION:.0%} of this machine's memory)")
    return fp


def check_training(recipe) -> None:
    """Refuse a recipe whose estimated training (or evaluation) memory exceeds
    :func:`memory_bound`: weights and optimizer state, and the activations of one batch of
    ``data.n_time_bins`` time bins. Runs before any data is loaded."""
    d, t = recipe.data, recipe.training
    fp = check_parameters(recipe.model, d.input_shape(), d.spec.n_classes)
    needs = {f"training (batch {t.batch_size})": fp.training_bytes(t.batch_size, d.n_time_bins),
             f"evaluation (batch {t.eval_batch_size})": fp.evaluation_bytes(t.eval_batch_size, d.n_time_bins)}
    what, need = max(needs.items(), key=lambda item: item[1])
    bound = memory_bound()
    if need > bound:
        raise ModelSizeError(
            f"{recipe.name}: {what} needs about {gigabytes(need)} ({fp.parameters:.3g} weights, {fp.neurons:.3g} neurons "
            f"x {d.n_time_bins} time bins per sample), over the bound of {gigabytes(bound)} ({MEMORY_FRACTION:.0%} of "
            f"this machine's memory); lower model.hidden, training.batch_size, training.eval_batch_size or data.n_time_bins")
