"""Layer kinds (deploy/layers.py): the table holds every kind the model builds, each kind
round-trips quantize -> write -> read -> emulate, and the stages find a kind through the table
only (a kind registered here is quantized, written, read and emulated; an unregistered name is
one clear line)."""

import dataclasses

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sast_deploy.deploy.emulator import FixedPointNet, emulate_counts, fan_out
from sast_deploy.deploy.export import NetxFormatError, read_netx, write_netx
from sast_deploy.deploy.layers import LAYER_KINDS, Conv, Dense, SumPool, layer_kind, netx_readers
from sast_deploy.deploy.netx_weights import netx_dense_weights
from sast_deploy.deploy.quantize import QuantizationError, QuantizedLayer, quantize
from sast_deploy.functional.lif import LOIHI_STATE_BITS
from sast_deploy.training.model import ModelConfig, SpikingNet, build_model
from helpers import conv_model, random_spikes


def float_models():
    """Float nets that between them hold every kind the model builds: an MLP, a conv net without
    pooling, and conv -> sum-pool -> dense."""
    torch.manual_seed(0)
    mlp = build_model(ModelConfig(arch="mlp", hidden=(12,), v_th=0.2), (2, 5, 4), 3)
    conv = build_model(ModelConfig(arch="conv", hidden=(), conv_channels=3, conv_kernel=3, conv_stride=2, v_th=0.2),
                       (2, 9, 8), 3)
    return [mlp, conv, conv_model(0.9)]


def kinds(model: SpikingNet):
    return {layer.kind for layer in model.layers}


def test_the_table_lists_every_kind_the_model_builds():
    built = set().union(*(kinds(m) for m in float_models()))
    assert built == set(LAYER_KINDS) == {"dense", "conv", "pool"}
    assert all(kind.name == name for name, kind in LAYER_KINDS.items())
    assert set(netx_readers()) == {"dense", "conv"}  # netx 0.6.0's layer types; the pool is a conv
    assert [type(k) for k in LAYER_KINDS.values()] == [Dense, Conv, SumPool]


def _reference_input(q: QuantizedLayer, s: torch.Tensor) -> torch.Tensor:
    """A layer's synaptic input written plainly, in int64 (dense: netx's weights and shift;
    conv and pool: the conv wrapped to 24 bits)."""
    if q.weight.ndim == 2:
        ws, wexp = netx_dense_weights(q.weight)
        a = s.reshape(len(s), -1).to(torch.int64) @ torch.from_numpy(ws).T
        return a << wexp if wexp > 0 else a >> -wexp
    a = F.conv2d(s.double(), torch.from_numpy(q.weight).double(), stride=q.stride, padding=q.padding,
                 groups=q.groups).round().to(torch.int64)
    half = 1 << (LOIHI_STATE_BITS - 1)
    return torch.remainder(a + half, 2 * half) - half


def _connections(q: QuantizedLayer) -> int:
    """Input-output synapses of a layer, counted from its geometry: dense n_in * n_out; a conv's
    output channel reads C_in / groups channels over each window's pixels inside the frame."""
    if len(q.in_shape) == 1:
        return q.in_shape[0] * q.out_shape[0]
    c_out, c_group, kh, kw = q.weight.shape
    inside = F.unfold(torch.ones(1, 1, *q.in_shape[1:]), (kh, kw), padding=q.padding, stride=q.stride).sum()
    return int(c_out * c_group * inside)


@pytest.mark.parametrize("name", sorted(LAYER_KINDS))
def test_each_kind_round_trips_quantize_write_read_emulate(name, tmp_path):
    model = next(m for m in float_models() if name in kinds(m))
    qnet = quantize(model)
    back = read_netx(write_netx(qnet, tmp_path / "net.h5"))
    ours = [(q, r) for q, r in zip(qnet.layers, back.layers) if q.kind == name]
    assert ours and [q.kind for q in back.layers] == [q.kind for q in qnet.layers]
    kind = layer_kind(name)
    for q, r in ours:
        assert np.array_equal(q.weight, r.weight)
        assert dataclasses.replace(q, weight=None) == dataclasses.replace(r, weight=None)
        s = torch.from_numpy(random_spikes(1, 6, 1, q.in_shape, 0.4)[:, 0])  # [6, *in_shape]
        assert torch.equal(kind.synapse(r, name)(s), _reference_input(q, s))
        assert float(fan_out(r).sum()) == _connections(q)
    frames = torch.from_numpy(random_spikes(2, 12, 10, tuple(model.input_shape), 0.4))
    counts, spikes = FixedPointNet(qnet).run(frames, record=True)
    counts_back, spikes_back = FixedPointNet(back).run(frames, record=True)
    assert torch.equal(counts_back, counts) and all(torch.equal(a, b) for a, b in zip(spikes, spikes_back))
    assert all(int(s.sum()) > 0 for q, s in zip(qnet.layers, spikes) if q.kind == name)  # the layer is exercised


# --- the dispatch goes through the table ---------------------------------------------------


def _retype(path, index: int, netx_type: str, sast_kind: str) -> None:
    """Rewrite layer ``index``'s netx type and sast_kind in place."""
    with h5py.File(path, "r+") as f:
        g = f[f"layer/{index}"]
        del g["type"]
        g.create_dataset("type", (1,), "S10", [netx_type.encode()])
        g.attrs["sast_kind"] = sast_kind


@pytest.fixture
def dense_net(tmp_path):
    torch.manual_seed(1)
    model = build_model(ModelConfig(arch="mlp", hidden=(10,), v_th=0.2), (2, 4, 4), 3)
    qnet = quantize(model)
    return qnet, write_netx(qnet, tmp_path / "net.h5")


def test_an_unknown_netx_type_is_one_line_until_a_kind_registers_it(dense_net, monkeypatch):
    qnet, path = dense_net
    _retype(path, 2, "sparse", "sparse")
    with pytest.raises(NetxFormatError) as err:
        read_netx(path)
    assert str(err.value) == f"{path}: /layer/2/type 'sparse' is not supported (dense, conv, flatten)"
    monkeypatch.setitem(LAYER_KINDS, "sparse", dataclasses.replace(Dense(), name="sparse", netx_type="sparse"))
    back = read_netx(path)
    assert [q.kind for q in back.layers] == ["dense", "sparse"]
    frames = torch.from_numpy(random_spikes(3, 8, 10, (2, 4, 4), 0.4))
    counts = emulate_counts(qnet, frames)
    assert torch.equal(emulate_counts(back, frames), counts) and int(counts.sum()) > 0
    again = write_netx(back, path.with_name("again.h5"))  # written as its kind says
    with h5py.File(again, "r") as f:
        assert f["layer/2/type"][0] == b"sparse" and f["layer/2"].attrs["sast_kind"] == "sparse"


def test_an_unknown_sast_kind_is_one_line_until_a_kind_registers_it(tmp_path, monkeypatch):
    qnet = quantize(conv_model(0.9))
    path = write_netx(qnet, tmp_path / "net.h5")
    _retype(path, 2, "conv", "maxpool")
    with pytest.raises(NetxFormatError) as err:
        read_netx(path)
    assert str(err.value) == f"{path}: /layer/2 attribute sast_kind must be conv or pool, got 'maxpool'"
    monkeypatch.setitem(LAYER_KINDS, "maxpool", dataclasses.replace(SumPool(), name="maxpool"))
    assert [q.kind for q in read_netx(path).layers] == ["conv", "maxpool", "dense"]
    _retype(path, 2, "conv", "avgpool")
    with pytest.raises(NetxFormatError, match="sast_kind must be conv or pool or maxpool, got 'avgpool'"):
        read_netx(path)


def test_quantize_finds_the_kind_in_the_table(monkeypatch):
    torch.manual_seed(2)
    model = build_model(ModelConfig(arch="mlp", hidden=(6,)), (1, 3, 3), 2)
    model.layers[1].kind = "fake"
    with pytest.raises(QuantizationError) as err:
        quantize(model)
    assert str(err.value) == "layer 1 (fake): no Loihi 2 mapping for layer kind 'fake'"
    monkeypatch.setitem(LAYER_KINDS, "fake", dataclasses.replace(Dense(), name="fake"))
    assert [q.kind for q in quantize(model).layers] == ["dense", "fake"]


def test_an_unregistered_kind_in_a_quantized_net_is_refused_by_every_stage(dense_net, tmp_path):
    qnet, _ = dense_net
    qnet.layers[1].kind = "fake"
    frames = torch.zeros(1, 2, 2, 4, 4, dtype=torch.uint8)
    for stage in (lambda: write_netx(qnet, tmp_path / "x.h5"), lambda: emulate_counts(qnet, frames)):
        with pytest.raises(QuantizationError, match="no Loihi 2 mapping for layer kind 'fake'"):
            stage()
    assert not (tmp_path / "x.h5").exists()  # nothing half-written
