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
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import h5py
import numpy as np

from .errors import SastDeployError
from .fileio import atomic_write_bytes
from .quantize import QuantizedNet

if TYPE_CHECKING:
    from .quantize import Loihi2Spec

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
    if not isinstance(group[key], h5py.Dataset):
        raise NetxFormatError(f"{path}: field {group.name}/{key} must be a dataset, not a group")
    return group[key][()]


def _group(parent: h5py.Group, key: str, path: Path) -> h5py.Group:
    if key not in parent:
        raise NetxFormatError(f"{path}: missing group {parent.name.rstrip('/')}/{key}")
    if not isinstance(parent[key], h5py.Group):
        raise NetxFormatError(f"{path}: {parent.name.rstrip('/')}/{key} must be a group, not a dataset")
    return parent[key]


def _read_string(group: h5py.Group, key: str, path: Path) -> str:
    """A string field as write_netx stores it (one fixed-length byte string)."""
    value = np.asarray(_field(group, key, path))
    if value.dtype.kind not in "SO" or value.size != 1 or not isinstance(value.reshape(-1)[0], (bytes, str)):
        raise NetxFormatError(f"{path}: field {group.name}/{key} must be a string, got {value.dtype} {value.tolist()!r}"[:300])
    text = value.reshape(-1)[0]
    return text.decode(errors="replace") if isinstance(text, bytes) else text


def _int_scalar(group: h5py.Group, key: str, path: Path) -> int:
    value = _int_array(group, key, path)
    if value.size != 1:
        raise NetxFormatError(f"{path}: field {group.name}/{key} must be one integer, got shape {value.shape}")
    return int(value.reshape(-1)[0])


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


def _pair(group: h5py.Group, key: str, path: Path) -> Tuple[int, int]:
    value = _int_array(group, key, path)
    if value.size not in (1, 2):
        raise NetxFormatError(f"{path}: field {group.name}/{key} must hold 1 or 2 integers, got shape {value.shape}")
    return tuple(int(s) for s in np.broadcast_to(value.reshape(-1), (2,)))


def _input_shape(f: h5py.File, shape: Tuple[int, ...], path: Path) -> Tuple[int, ...]:
    """The (C, H, W) input shape from the file's metadata, else /layer/0/shape."""
    try:
        meta = json.loads(f.attrs.get("metadata", "{}"))
        value = tuple(meta.get("input_shape", shape)) if isinstance(meta, dict) else None
    except (TypeError, ValueError):
        value = None
    if not value or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value):
        raise NetxFormatError(f"{path}: attribute metadata must be JSON with input_shape a list of positive sizes")
    return value


def read_netx(path: str | Path, spec: Optional["Loihi2Spec"] = None) -> QuantizedNet:
    """Read a netx HDF5 network (as written by :func:`write_netx`) back into a QuantizedNet,
    validating every field the Lava graph and the emulator need, and that every integer fits
    the target ``spec`` (default: Loihi 2, 8-bit signed weight mantissas, 17-bit thresholds)."""
    from .quantize import Loihi2Spec, QuantizedLayer

    spec = spec or Loihi2Spec()
    path = Path(path)
    if not path.is_file():
        raise NetxFormatError(f"{path}: network file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise NetxFormatError(f"{path}: not an HDF5 file ({exc})") from exc
    with f:
        groups = _group(f, "layer", path)
        keys = sorted(groups.keys(), key=lambda k: int(k) if k.isdigit() else -1)
        if not keys or keys[0] != "0":
            raise NetxFormatError(f"{path}: /layer must hold groups 0, 1, ... (found {keys})")
        first = _group(groups, "0", path)
        if _read_string(first, "type", path) != "input":
            raise NetxFormatError(f"{path}: /layer/0/type must be 'input'")
        shape = tuple(int(s) for s in _int_array(first, "shape", path))
        if not shape or min(shape) < 1:
            raise NetxFormatError(f"{path}: /layer/0/shape must hold positive sizes, got {shape}")
        input_shape = _input_shape(f, shape, path)
        layers = []
        for k in keys[1:]:
            g = _group(groups, k, path)
            kind = _read_string(g, "type", path)
            if kind == "flatten":
                shape = (int(np.prod(shape)),)
                continue
            if kind not in ("dense", "conv"):
                raise NetxFormatError(f"{path}: {g.name}/type {kind!r} is not supported (dense, conv, flatten)")
            weight = _int_array(g, "weight", path)
            out_shape = tuple(int(s) for s in _int_array(g, "shape", path))
            if not np.any(weight):
                raise NetxFormatError(f"{path}: {g.name}/weight is all zero (netx cannot load such a layer)")
            lo, hi = -spec.weight_max - 1, spec.weight_max
            if weight.min() < lo or weight.max() > hi:
                raise NetxFormatError(f"{path}: {g.name}/weight holds {int(weight.min())}..{int(weight.max())}; the target "
                                      f"{spec.name} holds {spec.weight_bits}-bit signed mantissas, {lo}..{hi}")
            if "neuron" not in g:
                raise NetxFormatError(f"{path}: missing group {g.name}/neuron (netx would give it an unreachable threshold)")
            n = _group(g, "neuron", path)
            ntype = _read_string(n, "type", path)
            if ntype not in ("CUBA", "LOIHI"):
                raise NetxFormatError(f"{path}: {n.name}/type {ntype!r} is not a CUBA neuron")
            i_decay, v_decay, vth = (_int_scalar(n, key, path) for key in ("iDecay", "vDecay", "vThMant"))
            for key, value, hi in (("iDecay", i_decay, 4096), ("vDecay", v_decay, 4096), ("vThMant", vth, spec.vth_max)):
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
                stride, padding = (_pair(g, key, path) for key in ("stride", "padding"))
                groups_n = _int_scalar(g, "groups", path)
                if min(stride) < 1 or min(padding) < 0 or groups_n < 1 or len(shape) != 3 or shape[0] % groups_n:
                    raise NetxFormatError(f"{path}: {g.name}: stride {stride}, padding {padding} or groups {groups_n} "
                                          f"do not fit an input of shape {shape}")
                layers.append(QuantizedLayer(str(g.attrs.get("sast_kind", "conv")), weight, vth, v_decay, i_decay,
                                             float(g.attrs.get("scale", 1.0)), tuple(shape), out_shape,
                                             stride=stride, padding=padding, groups=groups_n))
            shape = out_shape
        if not layers:
            raise NetxFormatError(f"{path}: no dense or conv layer")
    n_classes = int(np.prod(layers[-1].out_shape))
    if int(np.prod(input_shape)) != int(np.prod(layers[0].in_shape)):
        raise NetxFormatError(f"{path}: metadata input_shape {input_shape} does not match /layer/0/shape {layers[0].in_shape}")
    return QuantizedNet(layers, input_shape, n_classes, Loihi2Spec())
