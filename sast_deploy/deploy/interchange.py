"""Export targets beyond Lava: NIR (the field's exchange format) and ONNX (general tooling).

NIR (``--target nir``): the trained *float* network. Our LIF ``v' = beta v + I`` is NIR's
``LIF`` (tau dv/dt = (v_leak - v) + r I) integrated by Euler with step dt:
``tau = dt / (1 - beta)``, ``r = 1``, ``v_leak = 0``, ``v_threshold = theta``,
``v_reset = 0``; the synaptic weights are divided by ``1 - beta`` because the NIR LIF scales
its input by dt / tau. One time bin is ``dt`` (1 ms by default). Spikes cross the layers in
the same time step (no per-layer delay). The sum-pool layer is a ``Conv2d`` whose kernel is
diagonal in the channels. beta = 1 (no leak) has no NIR LIF and is refused.

ONNX (``--target onnx``): the *quantized* hard-spike network as a one-time-step graph, the
usual way to export a recurrent model: inputs ``spikes_in`` and the membrane states
``v_<i>``, outputs ``spikes_out`` and ``v_<i>_next``, all int64, the arithmetic of
:class:`sast_deploy.deploy.emulator.FixedPointNet` node by node (integer-exact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from ..errors import SastDeployError
from ..fileio import atomic_write_bytes
from ..training.model import SpikingNet, non_finite_parameters
from .layers import layer_kind
from .quantize import QuantizedLayer, QuantizedNet
from ..functional.lif import LOIHI_ACT_SHIFT, LOIHI_DECAY_UNITY, LOIHI_STATE_BITS


class InterchangeError(SastDeployError, ValueError):
    """The network cannot be written in the requested format; names the layer and field."""


# --- NIR ----------------------------------------------------------------------------------


def to_nir(model: SpikingNet, dt: float = 1e-3):
    """The float network as a ``nir.NIRGraph`` (see the module docstring for the mapping)."""
    import nir

    bad = non_finite_parameters(model)
    if bad:
        raise InterchangeError(f"non-finite weights in {', '.join(bad)}: a diverged network cannot be exported")
    nodes: Dict[str, object] = {"input": nir.Input(input_type=np.array(model.input_shape))}
    edges: List[Tuple[str, str]] = []
    prev = "input"
    shape: Tuple[int, ...] = tuple(model.input_shape)
    for i, layer in enumerate(model.layers):
        beta, v_th = layer.lif.beta, layer.lif.v_th
        if beta >= 1.0:
            raise InterchangeError(f"layer {i}: beta = 1 (no leak) has no NIR LIF equivalent (tau would be infinite)")
        kind = layer_kind(layer.kind, f"layer {i}")
        if not kind.is_spatial and len(shape) > 1:
            nodes[f"flatten{i}"] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
            edges.append((prev, f"flatten{i}"))
            prev = f"flatten{i}"
        nodes[f"synapse{i}"] = kind.nir_synapse(layer.synapse, shape, gain=1.0 / (1.0 - beta))
        edges.append((prev, f"synapse{i}"))
        shape = kind.geometry(layer.synapse, shape).out_shape
        n = np.ones(shape, dtype=np.float32)
        nodes[f"lif{i}"] = nir.LIF(tau=n * dt / (1.0 - beta), r=n.copy(), v_leak=0 * n, v_threshold=n * v_th, v_reset=0 * n)
        edges.append((f"synapse{i}", f"lif{i}"))
        prev = f"lif{i}"
    nodes["output"] = nir.Output(output_type=np.array(shape))
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges)


def write_nir(model: SpikingNet, path: str | Path, dt: float = 1e-3) -> Path:
    import nir

    path = Path(path)
    graph = to_nir(model, dt)
    atomic_write_bytes(path, lambda tmp: nir.write(tmp, graph))
    return path


def run_nir_with_norse(path: str | Path, frames, dt: float = 1e-3):
    """Read a NIR file, import it with norse (``norse.torch.from_nir``) and return the output
    spike counts [B, classes] for frames [B, T, P, H, W]."""
    import nir
    import norse.torch as nt
    import torch

    module = nt.from_nir(nir.read(str(path)), dt=dt)
    x = torch.as_tensor(frames).float()
    counts = []
    # one sample at a time, without a batch dimension: NIR's Flatten(start_dim=0) counts
    # from the first non-batch dimension, norse turns it into torch's Flatten(0, -1), which
    # would also flatten a batch dimension
    with torch.no_grad():
        for sample in x:
            state, total = None, 0
            for t in range(sample.shape[0]):
                out, state = module(sample[t], state)
                total = total + out
            counts.append(total.reshape(-1))
    return torch.stack(counts)


# --- ONNX ---------------------------------------------------------------------------------


class OnnxGraph:
    """The nodes and initializers of an ONNX graph under construction; every value gets a
    unique name from one counter."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self.count = 0

    def const(self, value, name_hint: str = "c") -> str:
        """An initializer holding ``value`` (float64 or int64)."""
        from onnx import numpy_helper

        self.count += 1
        name = f"{name_hint}_{self.count}"
        arr = np.asarray(value)
        self.initializers.append(numpy_helper.from_array(arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64), name))
        return name

    def op(self, kind: str, inputs: List[str], **attrs) -> str:
        """A node of operator ``kind``; returns the name of its output."""
        from onnx import helper

        self.count += 1
        out = f"{kind.lower()}_{self.count}"
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def floor_div_pow2(self, x: str, bits: int) -> str:
        """floor(x / 2^bits) in integers."""
        d = self.const(1 << bits)
        return self.op("Div", [self.op("Sub", [x, self.op("Mod", [x, d])]), d])  # exact: x - (x mod d) is a multiple of d


def _lif_step(g: OnnxGraph, a: str, v_in: str, v_next: str, q: QuantizedLayer) -> str:
    """The LIF of functional/lif.py, :func:`lif_step_fixed_point`, on synaptic input ``a`` and
    state ``v_in``; writes the new state to ``v_next`` and returns the spikes' name."""
    from onnx import TensorProto, helper

    half = 1 << (LOIHI_STATE_BITS - 1)
    u = g.op("Mul", [a, g.const(1 << LOIHI_ACT_SHIFT)])
    u = g.op("Where", [g.op("Greater", [u, g.const(half)]), g.op("Sub", [u, g.const(2 * half)]),
                       g.op("Where", [g.op("LessOrEqual", [u, g.const(-half)]), g.op("Add", [u, g.const(2 * half)]), u])])
    x = g.op("Mul", [v_in, g.const(LOIHI_DECAY_UNITY - q.v_decay)])
    decayed = g.op("Mul", [g.op("Sign", [x]), g.op("Div", [g.op("Abs", [x]), g.const(LOIHI_DECAY_UNITY)])])
    v = g.op("Clip", [g.op("Add", [decayed, u]), g.const(-(half - 1)), g.const(half - 1)])
    spikes = g.op("Cast", [g.op("Greater", [v, g.const(q.vth_mant << LOIHI_ACT_SHIFT)])], to=TensorProto.INT64)
    g.nodes.append(helper.make_node("Mul", [v, g.op("Sub", [g.const(1), spikes])], [v_next]))
    return spikes


def to_onnx(qnet: QuantizedNet, opset: int = 17):
    """The quantized network as an ONNX one-step graph (int64 in and out)."""
    import onnx
    from onnx import TensorProto, helper

    g = OnnxGraph()
    in_shape = ["batch", *qnet.layers[0].in_shape]
    graph_inputs = [helper.make_tensor_value_info("spikes_in", TensorProto.INT64, in_shape)]
    graph_outputs = []
    s = "spikes_in"
    for i, q in enumerate(qnet.layers):
        a = layer_kind(q.kind, f"layer {i}").onnx_synapse(g, s, q, spatial_input=len(in_shape) > 2)
        out_shape = ["batch", *q.out_shape]
        graph_inputs.append(helper.make_tensor_value_info(f"v_{i}", TensorProto.INT64, out_shape))
        s = _lif_step(g, a, f"v_{i}", f"v_{i}_next", q)
        graph_outputs.append(helper.make_tensor_value_info(f"v_{i}_next", TensorProto.INT64, out_shape))
        in_shape = out_shape
    g.nodes.append(helper.make_node("Identity", [s], ["spikes_out"]))
    graph_outputs.insert(0, helper.make_tensor_value_info("spikes_out", TensorProto.INT64, ["batch", qnet.n_classes]))
    graph = helper.make_graph(g.nodes, "sast_deploy_step", graph_inputs, graph_outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="sast-deploy")
    onnx.checker.check_model(model, full_check=True)
    return model


def write_onnx(qnet: QuantizedNet, path: str | Path) -> Path:
    import onnx

    path = Path(path)
    model = to_onnx(qnet)
    atomic_write_bytes(path, lambda tmp: onnx.save(model, tmp))
    return path


def run_onnx_reference(path: str | Path, qnet: QuantizedNet, frames) -> np.ndarray:
    """Drive the ONNX step graph over T steps with onnx's reference evaluator; output spike
    counts [B, classes] for frames [B, T, P, H, W]."""
    from onnx.reference import ReferenceEvaluator

    sess = ReferenceEvaluator(str(path))
    x = np.asarray(frames).astype(np.int64)
    b, t = x.shape[:2]
    if not layer_kind(qnet.layers[0].kind).is_spatial:
        x = x.reshape(b, t, -1)
    states = {f"v_{i}": np.zeros((b, *q.out_shape), dtype=np.int64) for i, q in enumerate(qnet.layers)}
    counts = np.zeros((b, qnet.n_classes), dtype=np.int64)
    names = ["spikes_out"] + [f"v_{i}_next" for i in range(len(qnet.layers))]
    for step in range(t):
        outs = sess.run(names, {"spikes_in": x[:, step], **states})
        counts += outs[0].reshape(b, -1)
        states = {f"v_{i}": outs[i + 1] for i in range(len(qnet.layers))}
    return counts
