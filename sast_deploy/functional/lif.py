"""The neuron equations, written once. Every backend (training, evaluation, the fixed-point
emulator and the Loihi export) derives from this file.

Discrete-time LIF without synaptic current, one step per frame bin::

    v'[t] = beta * v[t-1] + I[t]            beta = 1 - dt * tau_mem_inv   (v_leak = 0)
    s[t]  = f(v'[t] - v_th)                 f: the spike function of the mode
    v[t]  = v'[t] * (1 - s[t])              multiplicative reset (norse's reset_value, v_reset = 0)

Spike modes on the same weights:

* ``surrogate``: f = a smooth sigmoid sigma(x) of the recipe's surrogate family in the forward
  pass, so the network is smooth and its gradients are exact;
* ``hard``: f = Heaviside with a strict comparison (v > v_th, as Loihi's ``v > vth``);
  reset becomes reset-to-zero, as on Loihi;
* ``ste``: hard forward, the family's derivative sigma'(x) backward (the conventional
  surrogate-gradient baseline).

Surrogate families (``model.surrogate``), all with sigma(0) = 1/2 and sigma'(0) = alpha/2, so
alpha is the same slope at threshold in each; they differ in their tails:

* ``arctan``:      arctan(pi/2 alpha x)/pi + 1/2     heavy tail, sigma(-x) ~ 1/(pi^2 alpha x / 2)
* ``sigmoid``:     1 / (1 + exp(-2 alpha x))         logistic, light (exponential) tail
* ``hardsigmoid``: clamp(1/2 + alpha x / 2, 0, 1)    compact support: exactly 0 below -1/alpha,
                                                     exactly 1 above +1/alpha

Unlike norse's ``lif_box_feed_forward_step`` (which scales the input by dt * tau_mem_inv),
the input current is added unscaled after the decay: that is Loihi's CUBA update with
du = 4095 (no synaptic current), so a trained layer maps onto the chip with the same
weights. As in norse, the step is a pure function of (input, state, parameters); the
parameters are our own small tuple (:class:`LIFParameters`: beta, v_th, alpha, surrogate)
and the spike mode is an argument of the step, not a parameter.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import numba
import numpy as np
import torch
from norse.torch.functional.reset import reset_value

SPIKE_MODES = ("surrogate", "hard", "ste")


def arctan_sigmoid(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """sigma(x) = arctan(pi/2 * alpha * x) / pi + 1/2."""
    return torch.atan((math.pi / 2) * alpha * x) / math.pi + 0.5


def arctan_sigmoid_grad(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """d sigma / dx = (alpha / 2) / (1 + (pi/2 * alpha * x)^2)."""
    return (alpha / 2) / (1 + ((math.pi / 2) * alpha * x) ** 2)


def logistic_sigmoid(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """sigma(x) = 1 / (1 + exp(-2 alpha x))."""
    return torch.sigmoid(2 * alpha * x)


def logistic_sigmoid_grad(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """d sigma / dx = 2 alpha sigma (1 - sigma)."""
    s = torch.sigmoid(2 * alpha * x)
    return 2 * alpha * s * (1 - s)


def hard_sigmoid(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """sigma(x) = clamp(1/2 + alpha x / 2, 0, 1): exactly 0 for x <= -1/alpha, 1 for x >= 1/alpha."""
    return (0.5 + 0.5 * alpha * x).clamp(0.0, 1.0)


def hard_sigmoid_grad(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """d sigma / dx = alpha / 2 inside the band |x| < 1/alpha, 0 outside."""
    return (alpha / 2) * ((alpha * x).abs() < 1).to(x.dtype)


class Surrogate(NamedTuple):
    """A surrogate family: sigma(x; alpha) for the surrogate forward pass and its derivative
    sigma'(x; alpha) for the straight-through backward pass."""

    sigma: Callable[[torch.Tensor, float], torch.Tensor]
    grad: Callable[[torch.Tensor, float], torch.Tensor]


SURROGATES: Dict[str, Surrogate] = {
    "arctan": Surrogate(arctan_sigmoid, arctan_sigmoid_grad),
    "sigmoid": Surrogate(logistic_sigmoid, logistic_sigmoid_grad),
    "hardsigmoid": Surrogate(hard_sigmoid, hard_sigmoid_grad),
}


def heaviside_strict(x: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """H(x) with H(0) = 0: a neuron exactly at threshold does not spike (Loihi compares v > vth)."""
    return (x > 0).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float, surrogate: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.alpha, ctx.surrogate = alpha, surrogate
        return heaviside_strict(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_output * SURROGATES[ctx.surrogate].grad(x, ctx.alpha), None, None


def straight_through(x: torch.Tensor, alpha: float, surrogate: str = "arctan") -> torch.Tensor:
    """Hard spike forward, the surrogate family's derivative backward."""
    return _StraightThrough.apply(x, alpha, surrogate)


def spike(x: torch.Tensor, mode: str, alpha: float, surrogate: str = "arctan") -> torch.Tensor:
    """The spike function f(x), x = v' - v_th, of a spike mode and surrogate family."""
    if mode == "surrogate":
        return SURROGATES[surrogate].sigma(x, alpha)
    if mode == "ste":
        return straight_through(x, alpha, surrogate)
    return heaviside_strict(x)


class LIFParameters(NamedTuple):
    """The parameters of our LIF population: ``beta`` the membrane decay per time bin (0..1),
    ``v_th`` the threshold theta, ``alpha`` the surrogate slope at threshold (sigma'(0) =
    alpha / 2), ``surrogate`` the family of sigma (a key of :data:`SURROGATES`)."""

    beta: float = 0.9
    v_th: float = 1.0
    alpha: float = 2.0
    surrogate: str = "arctan"


def lif_parameters(beta: float, v_th: float, alpha: float, surrogate: str = "arctan") -> LIFParameters:
    """Checked :class:`LIFParameters`."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta (membrane decay per step) must be in [0, 1], got {beta}")
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate family {surrogate!r}; known: {', '.join(SURROGATES)}")
    return LIFParameters(beta=float(beta), v_th=float(v_th), alpha=float(alpha), surrogate=surrogate)


class LIFState(NamedTuple):
    """norse's LIFBoxFeedForwardState plus the potential before this step's spike and reset
    (``v_pre`` = v', what the threshold is compared with: the membrane margin diagnostics read it)."""

    v: torch.Tensor
    v_pre: torch.Tensor


def lif_initial_state(current: torch.Tensor) -> LIFState:
    """The resting state (v = 0) of a population shaped like one step's ``current``."""
    zeros = torch.zeros_like(current)
    return LIFState(v=zeros, v_pre=zeros)


def lif_step(input_current: torch.Tensor, state: LIFState, p: LIFParameters, mode: str) -> Tuple[torch.Tensor, LIFState]:
    """One step of the LIF above in spike mode ``mode``: (spikes, new state). ``state`` may
    also be norse's ``LIFBoxFeedForwardState`` (only ``v`` is read)."""
    # v' = beta v + I, written as norse's leak v + dt/tau (v_leak - v) with dt/tau = 1 - beta
    # and v_leak = 0: in float32, beta * v rounds differently, and trained runs would change
    v_decayed = state.v + (1.0 - p.beta) * (0.0 - state.v) + input_current
    z = spike(v_decayed - p.v_th, mode, p.alpha, p.surrogate)
    v_new = reset_value(z, v_decayed, 0.0, p.v_th)
    return z, LIFState(v=v_new, v_pre=v_decayed)


# --- the same equations in Loihi 2 fixed point ------------------------------------------
#
# Lava's PyLifModelBitAcc (lava-nc 0.10.0, lava/proc/lif/models.py) with du = 4095
# (netx iDecay = 4096: no synaptic current) computes, per step, in integers:
#
#     u  = wrap24(a << 6)                           a: synaptic input (weight mantissa units)
#     v' = sign(v * (4096 - dv)) * (|v * (4096 - dv)| >> 12) + u     decay truncates toward 0
#     v' = clip(v', -(2^23 - 1), 2^23 - 1)          24-bit state saturates
#     s  = v' > (vth << 6)                          strict threshold
#     v  = v' * (1 - s)                             reset to zero
#
# That is lif_step above with beta = (4096 - dv) / 4096, v_th = vth and input = a: one model.

LOIHI_DECAY_BITS = 12
LOIHI_DECAY_UNITY = 1 << LOIHI_DECAY_BITS  # 4096: decays are 12-bit fractions of 4096
LOIHI_ACT_SHIFT = 6  # synaptic input and threshold are MSB-aligned by 6 bits
LOIHI_STATE_BITS = 24  # u and v are signed 24-bit
LOIHI_VTH_BITS = 17  # unsigned threshold mantissa: vth <= (1 << 17) - 1
LOIHI_WEIGHT_BITS = 8  # signed weight mantissa
# (lava.proc.conv's PyConvModel holds a conv's ``groups`` in an int8 Var: beyond 127 it wraps
# and the layer goes silent. K copies of a layer in one graph have K times its groups, which
# is why they run on sast_deploy.deploy.lava.models.PyEventConvModel, with int32 groups.)
# every integer of magnitude up to these is a float32 (24-bit significand), a float64 (53-bit)
FLOAT_EXACT_INTEGERS = {"float32": 1 << 24, "float64": 1 << 53}


def exact_float(worst_sum: int) -> Optional[str]:
    """The narrowest float type ("float32" or "float64") in which every sum of integers whose
    magnitudes add up to at most ``worst_sum`` is exact in any order (no partial sum is ever
    rounded); None when float64 is not enough. The emulator and Lava's event-driven models
    sum integer weights in it."""
    return next((name for name, limit in FLOAT_EXACT_INTEGERS.items() if worst_sum <= limit), None)


def decay_to_fixed_point(beta: float) -> int:
    """Loihi's voltage decay dv (0..4096) for a membrane decay beta per step: round(4096 (1 - beta))."""
    return int(round(LOIHI_DECAY_UNITY * (1.0 - beta)))


def shift_toward_zero(x: torch.Tensor, bits: int) -> torch.Tensor:
    """sign(x) * (|x| >> bits): Lava's decay rounding (truncation toward zero), int64 tensors."""
    return torch.sign(x) * (x.abs() >> bits)


def lif_step_fixed_point(a_in: torch.Tensor, v: torch.Tensor, dv: int, vth_mant: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """One bit-accurate Loihi 2 LIF step (no synaptic current). ``a_in`` and ``v`` are int64
    tensors; returns (spikes as int64 0/1, new v)."""
    half = 1 << (LOIHI_STATE_BITS - 1)
    limit = half - 1
    u = a_in << LOIHI_ACT_SHIFT
    # Lava wraps u once (not modulo): > 2^23 loses 2^24, <= -2^23 gains 2^24
    u = torch.where(u > half, u - 2 * half, torch.where(u <= -half, u + 2 * half, u))
    v_new = shift_toward_zero(v * (LOIHI_DECAY_UNITY - dv), LOIHI_DECAY_BITS) + u
    v_new = v_new.clamp(-limit, limit)
    s = (v_new > (vth_mant << LOIHI_ACT_SHIFT)).to(torch.int64)
    return s, v_new * (1 - s)


# The same step over a whole time window, compiled: the emulator's LIF. A loop of torch ops
# per step (lif_step_fixed_point) makes a dozen int64 temporaries of the population per time
# step; numba runs the update neuron by neuron in registers, and neither numpy nor torch has
# a fused elementwise recurrence over time. Pinned against lif_step_fixed_point in tests.


@numba.njit(cache=True, nogil=True)
def _lif_neuron_step_fixed_point(a: int, v: int, decay_keep: int, threshold: int):
    """:func:`lif_step_fixed_point` for one neuron, term by term in int64 (so the same
    integers: |v| < 2^23 and decay_keep <= 4096 keep v * decay_keep below 2^35).
    ``decay_keep`` = 4096 - dv, ``threshold`` = vth_mant << 6. Returns (spike 0/1, new v)."""
    half = 1 << (LOIHI_STATE_BITS - 1)
    u = np.int64(a) << LOIHI_ACT_SHIFT
    if u > half:  # the single wrap of lif_step_fixed_point
        u -= 2 * half
    elif u <= -half:
        u += 2 * half
    p = np.int64(v) * decay_keep
    decayed = (p >> LOIHI_DECAY_BITS) if p >= 0 else -((-p) >> LOIHI_DECAY_BITS)  # toward zero
    v_new = min(max(decayed + u, 1 - half), half - 1)
    if v_new > threshold:
        return 1, np.int64(0)
    return 0, v_new


@numba.njit(cache=True, nogil=True)
def _lif_run_fixed_point(a: np.ndarray, decay_keep: int, threshold: int, spikes: np.ndarray) -> None:
    """a [B, T, N] integer synaptic input -> spikes [B, T, N] (uint8, written), v = 0 at t = 0."""
    n_b, n_t, n = a.shape
    v = np.zeros(n, np.int64)
    for b in range(n_b):
        v[:] = 0
        for t in range(n_t):
            a_t, s_t = a[b, t], spikes[b, t]
            for i in range(n):
                s_t[i], v[i] = _lif_neuron_step_fixed_point(a_t[i], v[i], decay_keep, threshold)


def lif_run_fixed_point(a_in: torch.Tensor, dv: int, vth_mant: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`lif_step_fixed_point` over time from rest: ``a_in`` [B, T, ...] integer synaptic
    input (int32 or int64; int64 arithmetic inside) -> spikes [B, T, ...] uint8, written into
    ``out`` (contiguous, a_in's shape) when given. Releases the GIL: samples can be split
    across threads."""
    if a_in.is_floating_point() or a_in.dtype == torch.bool:
        raise TypeError(f"synaptic input must be integers, got {a_in.dtype}")
    a = np.ascontiguousarray(a_in.reshape(a_in.shape[0], a_in.shape[1], -1).numpy())
    if out is None:
        out = torch.empty(a_in.shape, dtype=torch.uint8)
    if out.dtype != torch.uint8 or out.shape != a_in.shape or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous uint8 tensor shaped {tuple(a_in.shape)}")
    _lif_run_fixed_point(a, LOIHI_DECAY_UNITY - int(dv), int(vth_mant) << LOIHI_ACT_SHIFT, out.numpy().reshape(a.shape))
    return out
