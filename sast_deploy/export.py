"""Stage 6, export: a quantized network as lava-dl netx HDF5, loadable unchanged by
``lava.lib.dl.netx.hdf5.Network`` (which builds the Lava process graph).

Layout written (netx 0.6.0's reader, ``lava/lib/dl/netx/hdf5.py``)::

    layer/0  type=input, shape=(C, H, W) or (N,)      no neuron group: netx's Input block
                                                      has no CPU model
    layer/i  type=dense, shape=(out,), weight [out, in]          integers
             type=conv,  shape=(C, H, W), weight [out, in/g, kH, kW] (PyTorch layout; netx
                         flips and transposes it itself), stride, padding, dilation, groups
             type=flatten                              between a conv and a dense layer
             neuron/{type=CUBA, iDecay, vDecay, vThMant, refDelay, gradedSpike}

The sum-pool layer is written as a depthwise conv (netx has no pool layer). Every layer
has a neuron group: netx gives a dense layer without one a threshold it never reaches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import h5py
import numpy as np

from .errors import SastDeployError
from .fileio import atomic_write_bytes
from .quantize import QuantizedNet

FORMAT_TAG = "sast-deploy netx v1"


def _string(group: h5py.Group, key: str, value: str) -> None:
    group.create_dataset(key, (1,), "S10", [value.encode()])


def write_netx(qnet: QuantizedNet, path: str | Path, metadata: Dict[str, object] | None = None) -> Path:
    """Write ``qnet`` to ``path`` atomically; returns the path."""
    path = Path(path)

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_TAG
            f.attrs["metadata"] = json.dumps({"input_shape": list(qnet.input_shape), **(metadata or {})})
            layers = f.create_group("layer")
            g = layers.create_group("0")
            _string(g, "type", "input")
            g.create_dataset("shape", data=np.asarray(qnet.input_shape if qnet.layers[0].kind != "dense" else qnet.layers[0].in_shape))
            index = 1
            prev_kind = "input"
            for q in qnet.layers:
                if q.kind == "dense" and prev_kind in ("conv", "pool"):
                    _string(layers.create_group(str(index)), "type", "flatten")
                    index += 1
                g = layers.create_group(str(index))
                index += 1
                _string(g, "type", "dense" if q.kind == "dense" else "conv")
                g.create_dataset("shape", data=np.asarray(q.out_shape))
                g.create_dataset("weight", data=q.weight.astype(np.int64))
                g.attrs["sast_kind"] = q.kind
                g.attrs["scale"] = q.scale
                if q.kind == "dense":
                    g.create_dataset("inFeatures", data=q.weight.shape[1])
                    g.create_dataset("outFeatures", data=q.weight.shape[0])
                else:
                    g.create_dataset("stride", data=np.asarray(q.stride))
                    g.create_dataset("padding", data=np.asarray(q.padding))
                    g.create_dataset("dilation", data=np.asarray([1, 1]))
                    g.create_dataset("groups", data=q.groups)
                n = g.create_group("neuron")
                _string(n, "type", "CUBA")
                n.create_dataset("iDecay", data=q.i_decay)
                n.create_dataset("vDecay", data=q.v_decay)
                n.create_dataset("vThMant", data=q.vth_mant)
                n.create_dataset("refDelay", data=1)
                n.create_dataset("gradedSpike", data=False)
                prev_kind = q.kind

    atomic_write_bytes(path, write)
    return path


class NetxFormatError(SastDeployError, ValueError):
    """An HDF5 network is missing a field or holds a malformed one; names file and field."""


def _field(group: h5py.Group, key: str, path: Path):
    if key not in group:
        raise NetxFormatError(f"{path}: missing field {group.name}/{key}")
    return group[key][()]


def _int_array(group: h5py.Group, key: str, path: Path) -> np.ndarray:
    value = np.asarray(_field(group, key, path))
    if value.dtype.kind not in "iu":
        if value.dtype.kind == "f" and np.all(np.isfinite(value)) and np.all(value == np.round(value)):
            return value.astype(np.int64)
        raise NetxFormatError(
            f"{path}: field {group.name}/{key} must hold integers (netx casts with .astype(int), "
            f"which would silently truncate), got dtype {value.dtype}"
        )
    return value.astype(np.int64)


def read_netx(path: str | Path) -> QuantizedNet:
    """Read a netx HDF5 network (as written by :func:`write_netx`) back into a QuantizedNet,
    validating every field the Lava graph and the emulator need."""
    from .quantize import Loihi2Spec, QuantizedLayer

    path = Path(path)
    if not path.is_file():
        raise NetxFormatError(f"{path}: network file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise NetxFormatError(f"{path}: not an HDF5 file ({exc})") from exc
    with f:
        if "layer" not in f:
            raise NetxFormatError(f"{path}: missing group /layer")
        groups = f["layer"]
        keys = sorted(groups.keys(), key=lambda k: int(k) if k.isdigit() else -1)
        if not keys or keys[0] != "0":
            raise NetxFormatError(f"{path}: /layer must hold groups 0, 1, ... (found {keys})")
        first = groups["0"]
        if _field(first, "type", path)[0].decode() != "input":
            raise NetxFormatError(f"{path}: /layer/0/type must be 'input'")
        shape = tuple(int(s) for s in _int_array(first, "shape", path))
        meta = json.loads(f.attrs.get("metadata", "{}"))
        input_shape = tuple(meta.get("input_shape", shape))
        layers = []
        for k in keys[1:]:
            g = groups[k]
            kind = _field(g, "type", path)[0].decode()
            if kind == "flatten":
                shape = (int(np.prod(shape)),)
                continue
            if kind not in ("dense", "conv"):
                raise NetxFormatError(f"{path}: {g.name}/type {kind!r} is not supported (dense, conv, flatten)")
            weight = _int_array(g, "weight", path)
            out_shape = tuple(int(s) for s in _int_array(g, "shape", path))
            if not np.any(weight):
                raise NetxFormatError(f"{path}: {g.name}/weight is all zero (netx cannot load such a layer)")
            if "neuron" not in g:
                raise NetxFormatError(f"{path}: missing group {g.name}/neuron (netx would give it an unreachable threshold)")
            n = g["neuron"]
            ntype = _field(n, "type", path)[0].decode()
            if ntype not in ("CUBA", "LOIHI"):
                raise NetxFormatError(f"{path}: {n.name}/type {ntype!r} is not a CUBA neuron")
            i_decay, v_decay, vth = (int(_int_array(n, key, path)) for key in ("iDecay", "vDecay", "vThMant"))
            for key, value, hi in (("iDecay", i_decay, 4096), ("vDecay", v_decay, 4096), ("vThMant", vth, (1 << 17) - 1)):
                if not 0 <= value <= hi:
                    raise NetxFormatError(f"{path}: {n.name}/{key} = {value} is outside 0..{hi}")
            if kind == "dense":
                n_in = int(np.prod(shape))
                if weight.ndim != 2 or weight.shape != (out_shape[0], n_in):
                    raise NetxFormatError(f"{path}: {g.name}/weight has shape {weight.shape}, expected {(out_shape[0], n_in)}")
                layers.append(QuantizedLayer("dense", weight, vth, v_decay, i_decay, float(g.attrs.get("scale", 1.0)), (n_in,), out_shape))
            else:
                if weight.ndim != 4:
                    raise NetxFormatError(f"{path}: {g.name}/weight must be [out, in/groups, kH, kW], got shape {weight.shape}")
                stride = tuple(int(s) for s in np.broadcast_to(_int_array(g, "stride", path), (2,)))
                padding = tuple(int(s) for s in np.broadcast_to(_int_array(g, "padding", path), (2,)))
                groups_n = int(_int_array(g, "groups", path))
                layers.append(QuantizedLayer(str(g.attrs.get("sast_kind", "conv")), weight, vth, v_decay, i_decay,
                                             float(g.attrs.get("scale", 1.0)), tuple(shape), out_shape,
                                             stride=stride, padding=padding, groups=groups_n))
            shape = out_shape
        if not layers:
            raise NetxFormatError(f"{path}: no dense or conv layer")
    n_classes = int(np.prod(layers[-1].out_shape))
    return QuantizedNet(layers, input_shape, n_classes, Loihi2Spec())
