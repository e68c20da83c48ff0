"""The weights a Dense synapse holds once lava-dl netx and Lava have loaded an exported layer,
through their own code: netx's ``optimize_weight_bits`` (``lava/lib/dl/netx/utils.py``:
rescale the integer weights to use 8 bits, giving ``num_weight_bits`` and ``weight_exp``),
then ``PyDenseModelBitAcc``'s first step (``lava/utils/weightutils.py``: clip to 8 bits and
truncate to ``num_weight_bits`` by the sign mode it derives from the weights). A Dense layer
outputs (W_stored @ s) shifted by ``weight_exp`` (a floor on the sum). The emulator, the ONNX
export and the event-driven Lava models all use these two functions, so they hold exactly
the weights Lava's stock model holds.
"""

from __future__ import annotations

import contextlib
import io
from typing import Optional, Tuple

import numpy as np
from lava.utils.weightutils import SignMode, clip_weights, determine_sign_mode, truncate_weights

from ..functional.lif import LOIHI_WEIGHT_BITS


def stored_weights(weights: np.ndarray, num_weight_bits: int = LOIHI_WEIGHT_BITS,
                   sign_mode: Optional[SignMode] = None) -> np.ndarray:
    """The weights ``PyDenseModelBitAcc`` multiplies: its first-step pipeline (clip to 8 bits by
    sign mode, derived from the weights when not given, then truncate to ``num_weight_bits``)."""
    sign_mode = sign_mode or determine_sign_mode(weights)
    clipped = clip_weights(weights, sign_mode, num_bits=LOIHI_WEIGHT_BITS)
    return truncate_weights(clipped, sign_mode, num_weight_bits)


def netx_dense_weights(w: np.ndarray) -> Tuple[np.ndarray, int]:
    """(W_stored int64 [out, in], weight_exp) of a Dense layer exported with integer weights ``w``.
    For mixed-sign matrices this is lossless; it is not for some all-inhibitory ones, which is
    why every consumer applies exactly this pipeline. ``w`` must not be all zero (netx cannot
    load such a layer; the exporter refuses it)."""
    w = np.asarray(w).astype(np.int64)
    if not np.any(w):
        raise ValueError("all weights are zero: netx cannot load this layer")
    # lava-dl prints CUDA and Prophesee notices on import, netx a notice when it clips
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from lava.lib.dl.netx.utils import optimize_weight_bits

        weight, num_weight_bits, weight_exp, _ = optimize_weight_bits(w)
    return stored_weights(weight, num_weight_bits).astype(np.int64), int(weight_exp)
