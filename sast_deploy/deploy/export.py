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

import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np

from ..errors import SastDeployError
from ..fileio import atomic_write_bytes, atomic_write_text
from ..functional.lif import LOIHI_DECAY_UNITY
from .quantize import Loihi2Spec, QuantizationError, QuantizedLayer, QuantizedNet, conv_out_shape, load_spec, quantize

FORMAT_TAG = "sast-deploy netx v1"

EXPORT_TARGETS = {
    "lava": "Loihi 2 fixed point as lava-dl netx HDF5 (RUN_DIR/net.h5), loads as a Lava process graph",
    "nir": "the float network as a NIR graph (RUN_DIR/net.nir), for norse, snnTorch, Rockpool, Sinabs, ...",
    "onnx": "the quantized hard-spike network as an integer ONNX one-step graph (RUN_DIR/net.onnx)",
}


# --- entry points -------------------------------------------------------------------------


def precision_suffix(spec: Loihi2Spec) -> str:
    """File-name suffix of a weight precision: '' for the default 8 bits, '-w4' for 4 bits."""
    return "" if spec.weight_bits == 8 else f"-w{spec.weight_bits}"


def export_run(run_dir: str | Path, out: Optional[str | Path] = None, spec: Optional[Loihi2Spec] = None,
               target: str = "lava") -> Dict[str, object]:
    """Export a trained run to ``target`` (a key of :data:`EXPORT_TARGETS`), by default to
    RUN_DIR/net.h5 (lava; plus quantization.json), net.nir or net.onnx. Returns what was written
    (``net``, ``target``; for lava also the per-layer quantization report, ``layers``)."""
    from ..training.runs import load_run

    if target not in EXPORT_TARGETS:
        raise QuantizationError(f"unknown target {target!r}; known: {', '.join(EXPORT_TARGETS)}")
    model, recipe, _ = load_run(run_dir)
    out = Path(out) if out else Path(run_dir) / ("net.h5" if target == "lava" else f"net.{target}")
    if target == "nir":
        from .interchange import write_nir

        return {"net": str(write_nir(model, out)), "target": "nir"}
    qnet = quantize(model, spec or load_spec())
    if target == "onnx":
        from .interchange import write_onnx

        return {"net": str(write_onnx(qnet, out)), "target": "onnx"}
    return write_run_netx(qnet, run_dir, out, {"recipe": recipe.name, "n_time_bins": recipe.data.n_time_bins})


def write_run_netx(qnet: QuantizedNet, run_dir: str | Path, out: str | Path, metadata: Dict[str, object]) -> Dict[str, object]:
    """Write an already quantized run's netx HDF5 ``out`` and RUN_DIR/quantization.json (its report)."""
    write_netx(qnet, out, metadata)
    report = {"net": str(out), "target": qnet.spec.name, "layers": qnet.report()}
    atomic_write_text(Path(run_dir) / "quantization.json", json.dumps(report, indent=2) + "\n")
    return report


def export_markdown(report: Dict[str, object]) -> str:
    """What ``sast-deploy export`` prints for :func:`export_run`'s ``report``: the file written
    and, for the lava target, the per-layer quantization table (scale: integer units per float
    unit; mean abs quant error in float weight units)."""
    lines = [f"wrote {report['net']} ({report['target']})"]
    if "layers" in report:
        lines += ["| layer | kind | weights | scale | vThMant | vDecay | clipped | mean abs quant error | warnings |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['kind']} | {r['shape']} | {r['scale']:.1f} | {r['vth_mant']} | {r['v_decay']} | "
                  f"{r['clipped_weights']} | {r['mean_abs_quant_error']:.2e} | {'; '.join(r['warnings']) or '-'} |"
                  for r in report["layers"]]
    return "\n".join(lines) + "\n"


# --- writing ------------------------------------------------------------------------------


def _string(group: h5py.Group, key: str, value: str) -> None:
    group.create_dataset(key, (1,), "S10", [value.encode()])


def write_netx(qnet: QuantizedNet, path: str | Path, metadata: Dict[str, object] | None = None) -> Path:
    """Write ``qnet`` to ``path`` atomically; returns the path. The target spec and each layer's
    quantization statistics travel along (metadata, attributes), so :func:`read_netx` returns
    the network that was written."""
    path = Path(path)
    meta = {"input_shape": list(qnet.input_shape), "spec": dataclasses.asdict(qnet.spec), **(metadata or {})}

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_TAG
            f.attrs["metadata"] = json.dumps(meta)
            layers = f.create_group("layer")
            g = layers.create_group("0")
            _string(g, "type", "input")
            g.create_dataset("shape", data=np.asarray(qnet.input_shape if qnet.layers[0].kind != "dense" else qnet.layers[0].in_shape))
            index, prev_kind = 1, "input"
            for q in qnet.layers:
                if q.kind == "dense" and prev_kind in ("conv", "pool"):
                    _string(layers.create_group(str(index)), "type", "flatten")
                    index += 1
                _write_layer(layers.create_group(str(index)), q)
                index, prev_kind = index + 1, q.kind

    atomic_write_bytes(path, write)
    return path


def _write_layer(g: h5py.Group, q: QuantizedLayer) -> None:
    _string(g, "type", "dense" if q.kind == "dense" else "conv")
    g.create_dataset("shape", data=np.asarray(q.out_shape))
    g.create_dataset("weight", data=q.weight.astype(np.int64))
    g.attrs.update(sast_kind=q.kind, scale=q.scale, n_clipped=q.n_clipped, mean_abs_error=q.mean_abs_error)
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


# --- reading ------------------------------------------------------------------------------


class NetxFormatError(SastDeployError, ValueError):
    """An HDF5 network is missing a field or holds a malformed one; names file and field."""


#: Limits on what a netx file may declare, checked before anything is read: a file from
#: elsewhere is data, and a tiny file can declare a chunked 10^6 x 10^6 dataset.
MAX_WEIGHTS = 2**27  # elements of one weight dataset (1 GiB as int64; Loihi 2 cores hold far fewer)
MAX_FIELD_ELEMENTS = 16  # every other dataset: a shape, a stride, a scalar
MAX_DEPTH = 4  # /layer/<i>/neuron/<field>
MAX_OBJECTS = 100_000  # groups and datasets in the file
MAX_METADATA_BYTES = 1 << 20
#: dtype kinds a field may have: integers, floats, booleans, fixed-length byte strings
FIELD_KINDS = "iufbS"


def _check_links(f: h5py.File, path: Path) -> None:
    """Walk the file without following anything: a soft or external link anywhere (which h5py
    would resolve, into another file or in a loop) is refused, as are deep or huge trees."""
    pending, seen = [(f, 1)], 0
    while pending:
        group, depth = pending.pop()
        for key in group:
            link = group.get(key, getlink=True)
            where = f"{group.name.rstrip('/')}/{key}"
            if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                kind = "a soft" if isinstance(link, h5py.SoftLink) else "an external"
                raise NetxFormatError(f"{path}: {where} is {kind} link; a network file must hold its data itself")
            seen += 1
            if seen > MAX_OBJECTS:
                raise NetxFormatError(f"{path}: more than {MAX_OBJECTS} objects")
            obj = group.get(key)
            if isinstance(obj, h5py.Group):
                if depth >= MAX_DEPTH:
                    raise NetxFormatError(f"{path}: {where} is nested deeper than a netx network ({MAX_DEPTH} levels)")
                pending.append((obj, depth + 1))


def _dataset(group: h5py.Group, key: str, path: Path, max_elements: int = MAX_FIELD_ELEMENTS) -> h5py.Dataset:
    """The dataset ``group/key``, its declared size and dtype checked (nothing read yet)."""
    if key not in group:
        raise NetxFormatError(f"{path}: missing field {group.name}/{key}")
    ds = group[key]
    if not isinstance(ds, h5py.Dataset):
        raise NetxFormatError(f"{path}: field {group.name}/{key} must be a dataset, not a group")
    if ds.shape is None or ds.size > max_elements:
        raise NetxFormatError(f"{path}: field {group.name}/{key} declares shape {ds.shape}; at most {max_elements} values")
    if ds.dtype.kind not in FIELD_KINDS and h5py.check_string_dtype(ds.dtype) is None:
        raise NetxFormatError(f"{path}: field {group.name}/{key} has dtype {ds.dtype}; numbers or a string expected")
    return ds


def _field(group: h5py.Group, key: str, path: Path, max_elements: int = MAX_FIELD_ELEMENTS):
    return _dataset(group, key, path, max_elements)[()]


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


def _int_array(group: h5py.Group, key: str, path: Path, max_elements: int = MAX_FIELD_ELEMENTS) -> np.ndarray:
    value = np.asarray(_field(group, key, path, max_elements))
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


def _metadata(f: h5py.File, shape: Tuple[int, ...], path: Path) -> Tuple[Tuple[int, ...], Optional[Loihi2Spec]]:
    """The (C, H, W) input shape from the file's metadata (else /layer/0/shape), and the target
    spec the file was written for (None when the file does not record one)."""
    try:
        meta = json.loads(_attribute(f, "metadata", "{}", path))
        value = tuple(meta.get("input_shape", shape)) if isinstance(meta, dict) else None
    except (TypeError, ValueError):
        value = None
    if not value or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value):
        raise NetxFormatError(f"{path}: attribute metadata must be JSON with input_shape a list of positive sizes")
    if not isinstance(meta.get("spec"), dict):
        return value, None
    try:
        return value, Loihi2Spec(**meta["spec"])
    except (TypeError, QuantizationError) as exc:
        raise NetxFormatError(f"{path}: metadata spec is not a target spec ({exc})") from exc


def read_netx(path: str | Path, spec: Optional[Loihi2Spec] = None) -> QuantizedNet:
    """Read a netx HDF5 network (as written by :func:`write_netx`) back into a QuantizedNet,
    validating every field the Lava graph and the emulator need, and that every integer fits
    the target ``spec`` (default: the spec the file records, else Loihi 2's: 8-bit signed
    weight mantissas, 17-bit thresholds). Serves the ``simulate`` command."""
    path = Path(path)
    if not path.is_file():
        raise NetxFormatError(f"{path}: network file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise NetxFormatError(f"{path}: not an HDF5 file ({exc})") from exc
    with f:
        _check_links(f, path)
        groups = _group(f, "layer", path)
        shape = _input_layer_shape(groups, path)
        input_shape, recorded = _metadata(f, shape, path)
        spec = spec or recorded or Loihi2Spec()
        layers = _read_layers(groups, shape, spec, path)
    if int(np.prod(input_shape)) != int(np.prod(layers[0].in_shape)):
        raise NetxFormatError(f"{path}: metadata input_shape {input_shape} does not match /layer/0/shape {layers[0].in_shape}")
    return QuantizedNet(layers, input_shape, int(np.prod(layers[-1].out_shape)), spec)


def _layer_keys(groups: h5py.Group, path: Path) -> List[str]:
    """'0', '1', ... 'n-1': netx reads layers in this order, so a gap or another name is refused."""
    keys = list(groups.keys())
    expected = [str(i) for i in range(len(keys))]
    if not keys or sorted(keys, key=lambda k: (len(k), k)) != expected:
        raise NetxFormatError(f"{path}: /layer must hold groups 0, 1, ... without gaps (found {sorted(keys)[:20]})")
    return expected


def _input_layer_shape(groups: h5py.Group, path: Path) -> Tuple[int, ...]:
    first = _group(groups, _layer_keys(groups, path)[0], path)
    if _read_string(first, "type", path) != "input":
        raise NetxFormatError(f"{path}: /layer/0/type must be 'input'")
    shape = tuple(int(s) for s in _int_array(first, "shape", path))
    if not shape or min(shape) < 1:
        raise NetxFormatError(f"{path}: /layer/0/shape must hold positive sizes, got {shape}")
    return shape


def _read_layers(groups: h5py.Group, shape: Tuple[int, ...], spec: Loihi2Spec, path: Path) -> List[QuantizedLayer]:
    """The dense and conv layers after the input layer; ``shape`` is each one's input shape."""
    layers = []
    for k in _layer_keys(groups, path)[1:]:
        g = _group(groups, k, path)
        kind = _read_string(g, "type", path)
        if kind == "flatten":
            shape = (int(np.prod(shape)),)
            continue
        if kind not in ("dense", "conv"):
            raise NetxFormatError(f"{path}: {g.name}/type {kind!r} is not supported (dense, conv, flatten)")
        layers.append(_read_layer(g, kind, shape, spec, path))
        shape = layers[-1].out_shape
    if not layers:
        raise NetxFormatError(f"{path}: no dense or conv layer")
    return layers


def _read_layer(g: h5py.Group, kind: str, shape: Tuple[int, ...], spec: Loihi2Spec, path: Path) -> QuantizedLayer:
    out_shape = tuple(int(s) for s in _int_array(g, "shape", path))
    if not out_shape or min(out_shape) < 1:
        raise NetxFormatError(f"{path}: {g.name}/shape must hold positive sizes, got {out_shape}")
    return (_read_dense if kind == "dense" else _read_conv)(g, shape, out_shape, spec, path)


def _read_conv(g: h5py.Group, shape: Tuple[int, ...], out_shape: Tuple[int, ...], spec: Loihi2Spec, path: Path) -> QuantizedLayer:
    """A conv (or pool) layer; its weight's declared shape is checked against the input and
    ``out_shape`` before the weight is read."""
    stride, padding = (_pair(g, key, path) for key in ("stride", "padding"))
    groups = _int_scalar(g, "groups", path)
    if min(stride) < 1 or min(padding) < 0 or groups < 1 or len(shape) != 3 or shape[0] % groups:
        raise NetxFormatError(f"{path}: {g.name}: stride {stride}, padding {padding} or groups {groups} "
                              f"do not fit an input of shape {shape}")
    declared = _dataset(g, "weight", path, MAX_WEIGHTS).shape
    if len(declared) != 4 or declared[1] * groups != shape[0] or min(declared[2:]) < 1:
        raise NetxFormatError(f"{path}: {g.name}/weight has shape {declared}, expected [out, {shape[0] // groups}, kH, kW]")
    expected = conv_out_shape(shape, declared[0], declared[2:], stride, padding)
    if out_shape != expected or min(expected) < 1:
        raise NetxFormatError(f"{path}: {g.name}/shape is {out_shape}; its weight, stride and padding give {expected}")
    sast_kind = _attribute(g, "sast_kind", "conv", path)
    if sast_kind not in ("conv", "pool"):
        raise NetxFormatError(f"{path}: {g.name} attribute sast_kind must be conv or pool, got {sast_kind!r}")
    return QuantizedLayer(sast_kind, _read_weight(g, spec, path), *_read_neuron(g, spec, path), in_shape=tuple(shape),
                          out_shape=out_shape, stride=stride, padding=padding, groups=groups, **_layer_stats(g, path))


def _read_dense(g: h5py.Group, shape: Tuple[int, ...], out_shape: Tuple[int, ...], spec: Loihi2Spec, path: Path) -> QuantizedLayer:
    n_in = int(np.prod(shape))
    declared = _dataset(g, "weight", path, MAX_WEIGHTS).shape
    if len(out_shape) != 1 or declared != (out_shape[0], n_in):
        raise NetxFormatError(f"{path}: {g.name}/weight has shape {declared}, expected {(out_shape[0], n_in)} "
                              f"for /shape {out_shape}")
    return QuantizedLayer("dense", _read_weight(g, spec, path), *_read_neuron(g, spec, path), in_shape=(n_in,),
                          out_shape=out_shape, **_layer_stats(g, path))


def _attribute(obj, key: str, default, path: Path):
    """An attribute's value, its size checked before it is read (a JSON text or a number)."""
    if key not in obj.attrs:
        return default
    attr = obj.attrs.get_id(key)
    if attr.get_storage_size() > MAX_METADATA_BYTES:
        raise NetxFormatError(f"{path}: attribute {obj.name} {key} is {attr.get_storage_size()} bytes")
    try:
        value = obj.attrs[key]
    except (OSError, TypeError, ValueError) as exc:
        raise NetxFormatError(f"{path}: attribute {obj.name} {key} cannot be read ({exc})") from None
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value


def _layer_stats(g: h5py.Group, path: Path) -> Dict[str, float]:
    """The quantization statistics write_netx stores as attributes (finite numbers)."""
    stats = {}
    for key, attr, default, kind in (("scale", "scale", 1.0, float), ("n_clipped", "n_clipped", 0, int),
                                     ("mean_abs_error", "mean_abs_error", 0.0, float)):
        value = np.asarray(_attribute(g, attr, default, path))
        if value.size != 1 or value.dtype.kind not in "iuf" or not np.isfinite(value).all():
            raise NetxFormatError(f"{path}: attribute {g.name} {attr} must be one finite number")
        stats[key] = kind(value.reshape(-1)[0])
    return stats


def _read_weight(g: h5py.Group, spec: Loihi2Spec, path: Path) -> np.ndarray:
    weight = _int_array(g, "weight", path, MAX_WEIGHTS)
    if not np.any(weight):
        raise NetxFormatError(f"{path}: {g.name}/weight is all zero (netx cannot load such a layer)")
    lo, hi = -spec.weight_max - 1, spec.weight_max
    if weight.min() < lo or weight.max() > hi:
        raise NetxFormatError(f"{path}: {g.name}/weight holds {int(weight.min())}..{int(weight.max())}; the target "
                              f"{spec.name} holds {spec.weight_bits}-bit signed mantissas, {lo}..{hi}")
    return weight


def _read_neuron(g: h5py.Group, spec: Loihi2Spec, path: Path) -> Tuple[int, int, int]:
    """(vThMant, vDecay, iDecay) of a layer's CUBA neuron group."""
    if "neuron" not in g:
        raise NetxFormatError(f"{path}: missing group {g.name}/neuron (netx would give it an unreachable threshold)")
    n = _group(g, "neuron", path)
    ntype = _read_string(n, "type", path)
    if ntype not in ("CUBA", "LOIHI"):
        raise NetxFormatError(f"{path}: {n.name}/type {ntype!r} is not a CUBA neuron")
    i_decay, v_decay, vth = (_int_scalar(n, key, path) for key in ("iDecay", "vDecay", "vThMant"))
    for key, value, hi in (("vDecay", v_decay, LOIHI_DECAY_UNITY), ("vThMant", vth, spec.vth_max)):
        if not 0 <= value <= hi:
            raise NetxFormatError(f"{path}: {n.name}/{key} = {value} is outside 0..{hi}")
    if i_decay != LOIHI_DECAY_UNITY:  # the trained neuron, and so the emulator, has no synaptic current
        raise NetxFormatError(f"{path}: {n.name}/iDecay = {i_decay}; only {LOIHI_DECAY_UNITY} (no synaptic current) is supported")
    return vth, v_decay, i_decay
