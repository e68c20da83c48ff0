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
:class:`sast_deploy.emulator.FixedPointNet` node by node (integer-exact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from .errors import SastDeployError
from .fileio import atomic_write_bytes
from .model import SpikingNet, non_finite_parameters
from .netx_weights import netx_dense_weights
from .quantize import QuantizedNet
from .functional.lif import LOIHI_ACT_SHIFT, LOIHI_DECAY_UNITY, LOIHI_STATE_BITS


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
    with_batch = (1,) + shape
    import torch

    x = torch.zeros(with_batch)
    for i, layer in enumerate(model.layers):
        beta, v_th = layer.lif.beta, layer.lif.v_th
        if beta >= 1.0:
            raise InterchangeError(f"layer {i}: beta = 1 (no leak) has no NIR LIF equivalent (tau would be infinite)")
        gain = 1.0 / (1.0 - beta)
        if layer.kind == "dense":
            if len(shape) > 1:
                nodes[f"flatten{i}"] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
                edges.append((prev, f"flatten{i}"))
                prev = f"flatten{i}"
            w = layer.synapse.weight.detach().double().numpy() * gain
            nodes[f"synapse{i}"] = nir.Linear(weight=w.astype(np.float32))
        else:
            if layer.kind == "conv":
                conv = layer.synapse
                w, stride, padding, groups = conv.weight.detach().double().numpy(), conv.stride, conv.padding, conv.groups
            else:
                # sum-pool as a conv whose kernel is diagonal in the channels (NIR's type
                # inference does not follow groups, so no depthwise conv here)
                k, c = layer.synapse.kernel, shape[0]
                w = np.zeros((c, c, k, k))
                w[np.arange(c), np.arange(c)] = float(layer.synapse.weight)
                stride, padding, groups = (k, k), (0, 0), 1
            nodes[f"synapse{i}"] = nir.Conv2d(
                input_shape=tuple(shape[1:]), weight=(w * gain).astype(np.float32), stride=tuple(stride),
                padding=tuple(padding), dilation=(1, 1), groups=groups, bias=np.zeros(w.shape[0], dtype=np.float32),
            )
        edges.append((prev, f"synapse{i}"))
        with torch.no_grad():
            x = layer.currents(x[None])[0] if layer.kind != "dense" else torch.zeros(1, layer.synapse.weight.shape[0])
        shape = tuple(x.shape[1:])
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


def to_onnx(qnet: QuantizedNet, opset: int = 17):
    """The quantized network as an ONNX one-step graph (int64 in and out)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    counter = [0]

    def const(value, name_hint="c") -> str:
        counter[0] += 1
        name = f"{name_hint}_{counter[0]}"
        arr = np.asarray(value)
        arr = arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(kind, inputs, **attrs) -> str:
        counter[0] += 1
        out = f"{kind.lower()}_{counter[0]}"
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def floor_div_pow2(x: str, bits: int) -> str:
        d = const(1 << bits)
        return op("Div", [op("Sub", [x, op("Mod", [x, d])]), d])  # exact: x - (x mod d) is a multiple of d

    in_shape = ["batch", *qnet.layers[0].in_shape]
    graph_inputs = [helper.make_tensor_value_info("spikes_in", TensorProto.INT64, in_shape)]
    graph_outputs = []
    half = 1 << (LOIHI_STATE_BITS - 1)
    s = "spikes_in"
    for i, q in enumerate(qnet.layers):
        if q.kind == "dense":
            if len(in_shape) > 2:
                s = op("Flatten", [s], axis=1)
            ws, wexp = netx_dense_weights(q.weight)
            a = op("MatMul", [s, const(ws.T)])
            if wexp < 0:
                a = floor_div_pow2(a, -wexp)
            elif wexp > 0:
                a = op("Mul", [a, const(1 << wexp)])
        else:
            xf = op("Cast", [s], to=TensorProto.DOUBLE)
            conv = op("Conv", [xf, const(q.weight.astype(np.float64))], strides=list(q.stride),
                      pads=[q.padding[0], q.padding[1], q.padding[0], q.padding[1]], group=q.groups)
            a = op("Cast", [conv], to=TensorProto.INT64)  # exact: sums of small integers
            a = op("Sub", [op("Mod", [op("Add", [a, const(half)]), const(2 * half)]), const(half)])  # 24-bit wrap
        # the LIF of functional/lif.py, lif_step_fixed_point
        u = op("Mul", [a, const(1 << LOIHI_ACT_SHIFT)])
        u = op("Where", [op("Greater", [u, const(half)]), op("Sub", [u, const(2 * half)]),
                         op("Where", [op("LessOrEqual", [u, const(-half)]), op("Add", [u, const(2 * half)]), u])])
        v_in = f"v_{i}"
        out_shape = ["batch", *q.out_shape]
        graph_inputs.append(helper.make_tensor_value_info(v_in, TensorProto.INT64, out_shape))
        x = op("Mul", [v_in, const(LOIHI_DECAY_UNITY - q.v_decay)])
        decayed = op("Mul", [op("Sign", [x]), op("Div", [op("Abs", [x]), const(LOIHI_DECAY_UNITY)])])
        v = op("Clip", [op("Add", [decayed, u]), const(-(half - 1)), const(half - 1)])
        spikes = op("Cast", [op("Greater", [v, const(q.vth_mant << LOIHI_ACT_SHIFT)])], to=TensorProto.INT64)
        nodes.append(helper.make_node("Mul", [v, op("Sub", [const(1), spikes])], [f"v_{i}_next"]))
        graph_outputs.append(helper.make_tensor_value_info(f"v_{i}_next", TensorProto.INT64, out_shape))
        s = spikes
        in_shape = out_shape
    nodes.append(helper.make_node("Identity", [s], ["spikes_out"]))
    graph_outputs.insert(0, helper.make_tensor_value_info("spikes_out", TensorProto.INT64, ["batch", qnet.n_classes]))
    graph = helper.make_graph(nodes, "sast_deploy_step", graph_inputs, graph_outputs, initializer=inits)
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
    if qnet.layers[0].kind == "dense":
        x = x.reshape(b, t, -1)
    states = {f"v_{i}": np.zeros((b, *q.out_shape), dtype=np.int64) for i, q in enumerate(qnet.layers)}
    counts = np.zeros((b, qnet.n_classes), dtype=np.int64)
    names = ["spikes_out"] + [f"v_{i}_next" for i in range(len(qnet.layers))]
    for step in range(t):
        outs = sess.run(names, {"spikes_in": x[:, step], **states})
        counts += outs[0].reshape(b, -1)
        states = {f"v_{i}": outs[i + 1] for i in range(len(qnet.layers))}
    return counts
