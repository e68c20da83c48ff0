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
has a neuron group: netx gives a dense layer without one a threshold it never reaches. Each
layer kind (:mod:`sast_deploy.deploy.layers`) writes and reads the fields of its type; the
attribute ``sast_kind`` names it. Single fields are read by :mod:`sast_deploy.deploy.netx_fields`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np

from ..fileio import atomic_write_bytes, atomic_write_text
from ..functional.lif import LOIHI_DECAY_UNITY
from . import netx_fields as fields
from .layers import LayerKind, layer_kind, netx_readers
from .netx_fields import MAX_DEPTH, MAX_OBJECTS, MAX_WEIGHTS, NetxFormatError
from .quantize import Loihi2Spec, QuantizationError, QuantizedLayer, QuantizedNet, load_spec, quantize

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
            _write_layers(f.create_group("layer"), qnet)

    atomic_write_bytes(path, write)
    return path


def _write_layers(groups: h5py.Group, qnet: QuantizedNet) -> None:
    """layer/0, the input, in the form the first layer takes ((C, H, W) or (N,)), then a group
    per layer, with a flatten group where a (C, H, W) map meets a layer that takes a vector."""
    first = layer_kind(qnet.layers[0].kind)
    g = groups.create_group("0")
    fields.write_string(g, "type", "input")
    g.create_dataset("shape", data=np.asarray(qnet.input_shape if first.is_spatial else qnet.layers[0].in_shape))
    index, spatial = 1, first.is_spatial
    for q in qnet.layers:
        kind = layer_kind(q.kind)
        if spatial and not kind.is_spatial:
            fields.write_string(groups.create_group(str(index)), "type", "flatten")
            index += 1
        _write_layer(groups.create_group(str(index)), kind, q)
        index, spatial = index + 1, kind.is_spatial


def _write_layer(g: h5py.Group, kind: LayerKind, q: QuantizedLayer) -> None:
    """One layer group: what every kind has (type, shape, weight, statistics, neuron) and its kind's fields."""
    fields.write_string(g, "type", kind.netx_type)
    g.create_dataset("shape", data=np.asarray(q.out_shape))
    g.create_dataset("weight", data=q.weight.astype(np.int64))
    g.attrs.update(sast_kind=q.kind, scale=q.scale, n_clipped=q.n_clipped, mean_abs_error=q.mean_abs_error)
    kind.write_netx(g, q)
    n = g.create_group("neuron")
    fields.write_string(n, "type", "CUBA")
    n.create_dataset("iDecay", data=q.i_decay)
    n.create_dataset("vDecay", data=q.v_decay)
    n.create_dataset("vThMant", data=q.vth_mant)
    n.create_dataset("refDelay", data=1)
    n.create_dataset("gradedSpike", data=False)


# --- reading ------------------------------------------------------------------------------


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


def _metadata(f: h5py.File, shape: Tuple[int, ...], path: Path) -> Tuple[Tuple[int, ...], Optional[Loihi2Spec]]:
    """The (C, H, W) input shape from the file's metadata (else /layer/0/shape), and the target
    spec the file was written for (None when the file does not record one)."""
    try:
        meta = json.loads(fields.attribute(f, "metadata", "{}", path))
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
        groups = fields.subgroup(f, "layer", path)
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
    first = fields.subgroup(groups, _layer_keys(groups, path)[0], path)
    if fields.read_string(first, "type", path) != "input":
        raise NetxFormatError(f"{path}: /layer/0/type must be 'input'")
    shape = tuple(int(s) for s in fields.int_array(first, "shape", path))
    if not shape or min(shape) < 1:
        raise NetxFormatError(f"{path}: /layer/0/shape must hold positive sizes, got {shape}")
    return shape


def _read_layers(groups: h5py.Group, shape: Tuple[int, ...], spec: Loihi2Spec, path: Path) -> List[QuantizedLayer]:
    """The layers after the input layer, each read by the kind of its netx type; ``shape`` is
    each one's input shape."""
    layers = []
    for k in _layer_keys(groups, path)[1:]:
        g = fields.subgroup(groups, k, path)
        netx_type = fields.read_string(g, "type", path)
        if netx_type == "flatten":
            shape = (int(np.prod(shape)),)
            continue
        readers = netx_readers()
        if netx_type not in readers:
            raise NetxFormatError(f"{path}: {g.name}/type {netx_type!r} is not supported ({', '.join([*readers, 'flatten'])})")
        layers.append(_read_layer(g, readers[netx_type], shape, spec, path))
        shape = layers[-1].out_shape
    if not layers:
        raise NetxFormatError(f"{path}: no {' or '.join(netx_readers())} layer")
    return layers


def _read_layer(g: h5py.Group, reader: LayerKind, shape: Tuple[int, ...], spec: Loihi2Spec, path: Path) -> QuantizedLayer:
    """One layer group: its kind's geometry (checked before the weight is read), then the
    weight, the neuron group and the quantization statistics every kind has."""
    out_shape = tuple(int(s) for s in fields.int_array(g, "shape", path))
    if not out_shape or min(out_shape) < 1:
        raise NetxFormatError(f"{path}: {g.name}/shape must hold positive sizes, got {out_shape}")
    kind, geometry = reader.read_netx(g, shape, out_shape, path)
    return QuantizedLayer(kind, _read_weight(g, spec, path), *_read_neuron(g, spec, path), **vars(geometry),
                          **_layer_stats(g, path))


def _layer_stats(g: h5py.Group, path: Path) -> Dict[str, float]:
    """The quantization statistics write_netx stores as attributes (finite numbers)."""
    stats = {}
    for key, attr, default, kind in (("scale", "scale", 1.0, float), ("n_clipped", "n_clipped", 0, int),
                                     ("mean_abs_error", "mean_abs_error", 0.0, float)):
        value = np.asarray(fields.attribute(g, attr, default, path))
        if value.size != 1 or value.dtype.kind not in "iuf" or not np.isfinite(value).all():
            raise NetxFormatError(f"{path}: attribute {g.name} {attr} must be one finite number")
        stats[key] = kind(value.reshape(-1)[0])
    return stats


def _read_weight(g: h5py.Group, spec: Loihi2Spec, path: Path) -> np.ndarray:
    weight = fields.int_array(g, "weight", path, MAX_WEIGHTS)
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
    n = fields.subgroup(g, "neuron", path)
    ntype = fields.read_string(n, "type", path)
    if ntype not in ("CUBA", "LOIHI"):
        raise NetxFormatError(f"{path}: {n.name}/type {ntype!r} is not a CUBA neuron")
    i_decay, v_decay, vth = (fields.int_scalar(n, key, path) for key in ("iDecay", "vDecay", "vThMant"))
    for key, value, hi in (("vDecay", v_decay, LOIHI_DECAY_UNITY), ("vThMant", vth, spec.vth_max)):
        if not 0 <= value <= hi:
            raise NetxFormatError(f"{path}: {n.name}/{key} = {value} is outside 0..{hi}")
    if i_decay != LOIHI_DECAY_UNITY:  # the trained neuron, and so the emulator, has no synaptic current
        raise NetxFormatError(f"{path}: {n.name}/iDecay = {i_decay}; only {LOIHI_DECAY_UNITY} (no synaptic current) is supported")
    return vth, v_decay, i_decay
