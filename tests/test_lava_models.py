"""The event-driven Dense model, K-copy graphs and the fast emulator are bit-identical to
Lava's stock models, to K = 1 and to a plain int64 reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sast_deploy.deploy.export import read_netx, write_netx
from sast_deploy.functional.lif import LOIHI_STATE_BITS, lif_step_fixed_point
from sast_deploy.deploy.emulator import FixedPointNet, emulate, emulate_counts
from sast_deploy.deploy.netx_weights import netx_dense_weights
from sast_deploy.deploy.quantize import QuantizedNet, quantize
from sast_deploy.deploy.simulate import SimulationError, simulate_lava
from test_deploy import _conv_model, _dense, _random_mlp, _spikes


def _reference_counts(qnet: QuantizedNet, frames: np.ndarray) -> np.ndarray:
    """The emulator's arithmetic written plainly: int64 products per time step."""
    x = torch.from_numpy(frames).to(torch.int64)  # [N, T, ...]
    for q in qnet.layers:
        if q.kind == "dense":
            ws, wexp = netx_dense_weights(q.weight)
            a = x.reshape(*x.shape[:2], -1) @ torch.from_numpy(ws).T
            a = a << wexp if wexp > 0 else a >> -wexp
        else:
            a = F.conv2d(x.flatten(0, 1).double(), torch.from_numpy(q.weight).double(), stride=q.stride,
                         padding=q.padding, groups=q.groups).round().to(torch.int64)
            half = 1 << (LOIHI_STATE_BITS - 1)
            a = (torch.remainder(a + half, 2 * half) - half).reshape(*x.shape[:2], *a.shape[1:])
        v, out = torch.zeros_like(a[:, 0]), []
        for t in range(a.shape[1]):
            s, v = lif_step_fixed_point(a[:, t], v, q.v_decay, q.vth_mant)
            out.append(s)
        x = torch.stack(out, dim=1)
    return x.sum(1).reshape(len(frames), -1).numpy()


# --- CopiesProduct: the arithmetic of the event-driven models, without Lava ---------------


@pytest.mark.parametrize("copies", [1, 3])
@pytest.mark.parametrize("density", [0.0, 0.005, 0.3, 1.0])
def test_copies_product_is_the_integer_product(copies, density):
    from sast_deploy.deploy.lava.models import DENSE_PATH_MIN_DENSITY, CopiesProduct

    rng = np.random.default_rng(int(density * 1000) + copies)
    w = rng.integers(-256, 256, size=(7, 600))
    w[0] = 255  # a row at the extreme: its sum over all inputs is 153000
    w[1] = -256
    spikes = (rng.random(copies * 600) < density).astype(np.int8)
    product = CopiesProduct(w, copies)
    expected = (spikes.reshape(copies, 600).astype(np.int64) @ w.T).reshape(-1)
    np.testing.assert_array_equal(product(spikes), expected)
    dense = spikes.mean() >= DENSE_PATH_MIN_DENSITY
    assert dense == (density >= 0.3)  # both paths are exercised by these densities
    graded = rng.integers(0, 200, size=copies * 600)
    np.testing.assert_array_equal(product(graded, graded=True),
                                  (graded.reshape(copies, 600) @ w.T).reshape(-1))


def test_copies_product_keeps_sums_beyond_float32_exact():
    from sast_deploy.deploy.lava.models import CopiesProduct

    n_in = 70_001  # 70001 * 255 > 2^24: float32 would round these sums
    w = np.full((2, n_in), 255)
    w[1, ::2] = 253
    product = CopiesProduct(w, 1)
    assert product.float_columns.dtype == np.float64
    spikes = np.ones(n_in, dtype=np.int8)
    np.testing.assert_array_equal(product(spikes), w.sum(axis=1))


# --- Lava: stock against event-driven against K copies --------------------------------------


@pytest.mark.parametrize("density", [0.5, 0.03])
def test_event_driven_dense_equals_stock_model_and_emulator(tmp_path, density):
    qnet = _random_mlp(11, (40, 16, 6), (100, 40), (300, 300), inhibitory_last=True)
    path = write_netx(qnet, tmp_path / "net.h5")
    frames = _spikes(12, 5, 12, (1, 1, 40), density)
    stock = simulate_lava(read_netx(path), frames, progress=False, event_driven=False)
    event = simulate_lava(read_netx(path), frames, progress=False, event_driven=True)
    np.testing.assert_array_equal(event.counts, stock.counts)
    np.testing.assert_array_equal(event.counts, emulate_counts(read_netx(path), torch.from_numpy(frames)).numpy())
    assert stock.counts.sum() > 0


def test_k_copies_on_a_trained_run_equal_stock_lava_and_emulator(trained_run, small_data, tmp_path):
    from sast_deploy.deploy.export import export_run

    net = export_run(trained_run, tmp_path / "net.h5")["net"]
    frames = small_data[1][1].frames[:9].numpy()
    stock = simulate_lava(read_netx(net), frames, progress=False, event_driven=False)
    for copies in (1, 4):  # 9 samples: the last group of 4 is padded
        res = simulate_lava(read_netx(net), frames, progress=False, copies=copies)
        np.testing.assert_array_equal(res.counts, stock.counts)
        assert res.samples == 9 if copies == 1 else res.samples == 12
    np.testing.assert_array_equal(stock.counts, emulate_counts(read_netx(net), torch.from_numpy(frames)).numpy())
    assert stock.counts.sum() > 0


def test_copies_network_holds_one_weight_block_per_layer(tmp_path):
    from sast_deploy.deploy.lava.models import CopiesDense, CopiesNetwork, run_config

    qnet = _random_mlp(4, (24, 12, 5), (300, 400), (410, 0))
    net = CopiesNetwork(str(write_netx(qnet, tmp_path / "net.h5")), copies=8, reset_interval=12)
    assert tuple(net.inp.shape) == (8 * 24,) and tuple(net.out.shape) == (8 * 5,)
    synapses = [layer.synapse for layer in net.layers]
    assert all(isinstance(s, CopiesDense) for s in synapses)
    assert [s.weights.shape for s in synapses] == [(12, 24), (5, 12)]  # memory of one copy, not 8^2 blocks
    models = run_config(True, "fixed_pt", net).exception_proc_model_map
    assert all(s in models for s in synapses)
    with pytest.raises(ValueError, match="event-driven"):
        run_config(False, "fixed_pt", net)


def test_copies_need_the_event_driven_models(tmp_path):
    path = write_netx(_random_mlp(0, (24, 12, 5), (300, 400), (410, 0)), tmp_path / "net.h5")
    with pytest.raises(SimulationError, match="event-driven"):
        simulate_lava(read_netx(path), _spikes(0, 2, 4, (1, 1, 24)), progress=False, copies=2, event_driven=False)


# --- the fast emulator against the plain int64 reference ----------------------------------


@pytest.mark.parametrize("density", [0.0, 0.02, 0.6])
def test_emulator_equals_int64_reference_on_random_mlps(density):
    qnet = _random_mlp(21, (300, 50, 8), (300, 40), (300, 0))
    frames = _spikes(22, 16, 10, (1, 1, 300), density)
    expected = _reference_counts(qnet, frames)
    np.testing.assert_array_equal(emulate_counts(qnet, torch.from_numpy(frames), batch_size=5).numpy(), expected)
    if density > 0.01:
        assert expected.sum() > 0
    # the spike scan takes uint8 as one-byte booleans; float and bool frames, and a prepared
    # FixedPointNet reused across calls, give the same counts
    emulator = FixedPointNet(qnet)
    for x in (torch.from_numpy(frames).float(), torch.from_numpy(frames).bool(), torch.from_numpy(frames)):
        np.testing.assert_array_equal(emulate_counts(emulator, x, batch_size=7).numpy(), expected)


def test_emulator_equals_int64_reference_on_graded_input_and_conv():
    qnet = _random_mlp(23, (30, 10, 4), (400, 60), (0, 2000))
    frames = np.random.default_rng(24).integers(0, 4, size=(6, 8, 1, 1, 30)).astype(np.uint8)  # counts, not spikes
    np.testing.assert_array_equal(emulate_counts(qnet, torch.from_numpy(frames)).numpy(), _reference_counts(qnet, frames))
    cnet = quantize(_conv_model(0.5))
    frames = _spikes(25, 7, 8, (2, 9, 8), 0.4)
    expected = _reference_counts(cnet, frames)
    np.testing.assert_array_equal(emulate_counts(cnet, torch.from_numpy(frames), batch_size=3).numpy(), expected)
    assert expected.sum() > 0


def test_emulator_float_type_keeps_large_sums_exact():
    # 70001 inputs at weight 127 (netx stores 254): the sums exceed float32's exact integers
    w = np.full((2, 70_001), 127)
    w[1, ::2] = 125
    qnet = QuantizedNet([_dense(w, 131071, 4096)], (1, 1, 70_001), 2)
    frames = np.ones((1, 2, 1, 1, 70_001), dtype=np.uint8)
    e = emulate(qnet, torch.from_numpy(frames))
    np.testing.assert_array_equal(e.counts.numpy(), _reference_counts(qnet, frames))
    assert e.counts.sum() > 0
    assert e.input_spikes == [2 * 70_001.0]


def test_copies_stop_at_lavas_int8_conv_groups():
    """Lava's Conv model holds ``groups`` as int8: K copies of a sum-pool over C channels (C
    groups) fit while K * C <= 127. Past that the layer used to go silent; now the default K
    stops at the limit and an explicit larger K is refused."""
    from sast_deploy.training.model import ModelConfig, build_model
    from sast_deploy.deploy.simulate import DEFAULT_COPIES, copies_limit, resolve_copies

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="conv", hidden=(), conv_channels=5, conv_kernel=3, conv_stride=1, pool=2), (2, 9, 8), 4)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    qnet = quantize(model)
    assert copies_limit(qnet) == 127 // 5 == 25 < DEFAULT_COPIES
    assert resolve_copies(qnet, None, 30) == 25 and resolve_copies(qnet, None, 7) == 7
    frames = _spikes(1, 30, 6, (2, 9, 8))
    with pytest.raises(SimulationError, match="at most 25 copies"):
        simulate_lava(qnet, frames, progress=False, copies=26)
    res = simulate_lava(qnet, frames, progress=False)  # the default: 25 copies, 125 groups in the pool layer
    assert res.copies == 25
    emu = emulate_counts(qnet, torch.from_numpy(frames)).numpy()
    assert emu.sum() > 0 and np.array_equal(res.counts, emu)


# --- SpikeCounts: the sink that counts each window's output spikes ---------------------------

@pytest.mark.parametrize("graded", [False, True])
def test_spike_counts_sums_each_window_across_run_calls(graded):
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.source import RingBuffer as Source

    from sast_deploy.deploy.lava.counts import PySpikeCountsModel, SpikeCounts
    from sast_deploy.deploy.lava_runtime import lava_runtime, read_var

    rng = np.random.default_rng(3)
    window, windows = 4, 3
    data = rng.integers(-100, 1000, (5, window * windows)) if graded else rng.integers(0, 2, (5, window * windows))
    source, sink = Source(data=data), SpikeCounts(shape=(5,), window=window, windows=windows)
    source.s_out.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={sink: PySpikeCountsModel})
    with lava_runtime(sink, cfg):
        for steps in (6, 6):  # the first run ends inside the second window
            sink.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
        counts = read_var(sink.counts)
    np.testing.assert_array_equal(counts, data.reshape(5, windows, window).sum(axis=2))
