"""The event-driven Dense model, K-copy graphs and the fast emulator are bit-identical to
Lava's stock models, to K = 1 and to a plain int64 reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sast_deploy.data.frames import FramesError
from sast_deploy.deploy.export import read_netx, write_netx
from sast_deploy.functional.lif import LOIHI_STATE_BITS, lif_step_fixed_point
from sast_deploy.deploy.emulator import FixedPointNet, emulate, emulate_counts
from sast_deploy.deploy.netx_weights import netx_dense_weights
from sast_deploy.deploy.quantize import QuantizedNet, quantize
from sast_deploy.deploy.simulate import SimulationError, simulate_lava, simulate_quantized
from helpers import conv_model, dense_layer, random_conv_net, random_mlp, random_spikes


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


@pytest.mark.slow
@pytest.mark.parametrize("density", [0.5, 0.03])
def test_event_driven_dense_equals_stock_model_and_emulator(tmp_path, density):
    qnet = random_mlp(11, (40, 16, 6), (100, 40), (300, 300), inhibitory_last=True)
    path = write_netx(qnet, tmp_path / "net.h5")
    frames = random_spikes(12, 5, 12, (1, 1, 40), density)
    stock = simulate_lava(path, frames, progress=False, event_driven=False)
    event = simulate_lava(path, frames, progress=False, event_driven=True)
    np.testing.assert_array_equal(event.counts, stock.counts)
    np.testing.assert_array_equal(event.counts, emulate_counts(read_netx(path), torch.from_numpy(frames)).numpy())
    assert stock.counts.sum() > 0


@pytest.mark.slow
def test_k_copies_on_a_trained_run_equal_stock_lava_and_emulator(trained_run, small_data, tmp_path):
    from sast_deploy.deploy.export import export_run

    net = export_run(trained_run, tmp_path / "net.h5")["net"]
    frames = small_data[1][1].frames[:9].numpy()
    stock = simulate_lava(net, frames, progress=False, event_driven=False)
    for copies in (1, 4):  # 9 samples: the last group of 4 is padded
        res = simulate_lava(net, frames, progress=False, copies=copies)
        np.testing.assert_array_equal(res.counts, stock.counts)
        assert res.samples == 9 if copies == 1 else res.samples == 12
    np.testing.assert_array_equal(stock.counts, emulate_counts(read_netx(net), torch.from_numpy(frames)).numpy())
    assert stock.counts.sum() > 0


def test_copies_network_holds_one_weight_block_per_layer(tmp_path):
    from sast_deploy.deploy.lava.models import run_config
    from sast_deploy.deploy.lava.process import CopiesDense, CopiesNetwork

    qnet = random_mlp(4, (24, 12, 5), (300, 400), (410, 0))
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
    path = write_netx(random_mlp(0, (24, 12, 5), (300, 400), (410, 0)), tmp_path / "net.h5")
    with pytest.raises(SimulationError, match="event-driven"):
        simulate_lava(path, random_spikes(0, 2, 4, (1, 1, 24)), progress=False, copies=2, event_driven=False)


# --- the fast emulator against the plain int64 reference ----------------------------------


@pytest.mark.parametrize("density", [0.0, 0.02, 0.6])
def test_emulator_equals_int64_reference_on_random_mlps(density):
    qnet = random_mlp(21, (300, 50, 8), (300, 40), (300, 0))
    frames = random_spikes(22, 16, 10, (1, 1, 300), density)
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
    qnet = random_mlp(23, (30, 10, 4), (400, 60), (0, 2000))
    frames = np.random.default_rng(24).integers(0, 4, size=(6, 8, 1, 1, 30)).astype(np.uint8)  # counts, not spikes
    np.testing.assert_array_equal(emulate_counts(qnet, torch.from_numpy(frames)).numpy(), _reference_counts(qnet, frames))
    cnet = quantize(conv_model(0.5))
    frames = random_spikes(25, 7, 8, (2, 9, 8), 0.4)
    expected = _reference_counts(cnet, frames)
    np.testing.assert_array_equal(emulate_counts(cnet, torch.from_numpy(frames), batch_size=3).numpy(), expected)
    assert expected.sum() > 0


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("density", [0.03, 0.5, 1.0])
def test_conv_emulator_equals_int64_reference(case, density):
    """The emulator's conv paths: torch's float32 conv2d with and without the 24-bit wrap
    (huge weights), the sum-pool as a window sum (one weight per channel) or per-window
    weights, groups, strides, padding."""
    qnet = random_conv_net(40 + case, **[dict(), NET_CASES[1], NET_CASES[2], dict(channels=3)][case])
    rng = np.random.default_rng(case)
    if case == 1:  # past 2^23: the sums wrap and float32 is not exact
        qnet.layers[0].weight = rng.integers(-(1 << 22), 1 << 22, size=qnet.layers[0].weight.shape)
    if case == 3:  # a sum-pool with a different weight per window position
        qnet.layers[1].weight = rng.integers(-128, 128, size=qnet.layers[1].weight.shape)
    frames = random_spikes(41 + case, 5, 9, qnet.input_shape, density)
    expected = _reference_counts(qnet, frames)
    np.testing.assert_array_equal(emulate_counts(qnet, torch.from_numpy(frames), batch_size=2).numpy(), expected)
    graded = frames * np.random.default_rng(7).integers(1, 4, size=frames.shape).astype(np.uint8)
    np.testing.assert_array_equal(emulate_counts(qnet, torch.from_numpy(graded)).numpy(), _reference_counts(qnet, graded))
    if density > 0.1:
        assert expected.sum() > 0


def test_emulator_float_type_keeps_large_sums_exact():
    # 70001 inputs at weight 127 (netx stores 254): the sums exceed float32's exact integers
    w = np.full((2, 70_001), 127)
    w[1, ::2] = 125
    qnet = QuantizedNet([dense_layer(w, 131071, 4096)], (1, 1, 70_001), 2)
    frames = np.ones((1, 2, 1, 1, 70_001), dtype=np.uint8)
    e = emulate(qnet, torch.from_numpy(frames))
    np.testing.assert_array_equal(e.counts.numpy(), _reference_counts(qnet, frames))
    assert e.counts.sum() > 0
    assert e.input_spikes == [2 * 70_001.0]


SYNAPSE_CASES = [  # (C_in, H, W, C_out, kernel, stride, padding, groups, weight magnitude)
    (2, 34, 34, 8, (5, 5), (2, 2), (0, 0), 1, 128),  # the benchmark's conv
    (8, 15, 15, 8, (2, 2), (2, 2), (0, 0), 8, 128),  # its sum-pool (one vector lane per group), border cropped
    (2, 9, 8, 3, (3, 2), (1, 2), (1, 0), 1, 128),  # asymmetric kernel, stride, padding
    (4, 7, 6, 6, (3, 3), (1, 1), (3, 2), 2, 128),  # groups of 3 output channels, padding past the kernel
    (3, 5, 5, 5, (1, 1), (1, 1), (0, 0), 1, 1 << 23),  # sums past 2^23 (wrap), int32 accumulator
    (2, 6, 7, 4, (3, 3), (2, 1), (1, 1), 1, 1 << 28),  # sums past 2^31: int64 accumulator, wrap
]


@pytest.mark.parametrize("case", SYNAPSE_CASES)
@pytest.mark.parametrize("density", [0.0, 0.05, 1.0])
@pytest.mark.parametrize("payload", ["binary", "uint8", "int8", "int64"])
def test_event_driven_conv_synapse_is_the_integer_conv(case, density, payload):
    """The emulator's conv synapse (a scatter of weight vectors) against an exact conv2d in
    float64 (|sums| < 2^53 here) plus PyConvModelFixed's 24-bit wrap: extreme weights, every
    input silent or spiking, graded payloads (up to 255 in uint8, negative ones in int8 and int64)."""
    from sast_deploy.deploy.emulator import _ConvSynapse
    from sast_deploy.deploy.quantize import QuantizedLayer

    c_in, h, w, c_out, kernel, stride, padding, groups, top = case
    rng = np.random.default_rng(h * w + c_out)
    weight = rng.integers(-top, top, size=(c_out, c_in // groups, *kernel))
    weight.flat[:2] = [-top, top - 1]
    out_shape = (c_out, (h + 2 * padding[0] - kernel[0]) // stride[0] + 1, (w + 2 * padding[1] - kernel[1]) // stride[1] + 1)
    q = QuantizedLayer("conv", weight, 100, 0, 4096, 1.0, (c_in, h, w), out_shape, stride, padding, groups)
    x = (rng.random((11, c_in, h, w)) < density).astype(np.uint8)
    if payload == "uint8":
        x *= rng.integers(1, 256, size=x.shape).astype(np.uint8)
        x.flat[0] = 255
    elif payload == "int8":  # -128: its magnitude is past int8
        x = (x * rng.integers(-128, 128, size=x.shape)).astype(np.int8)
        x.flat[0] = -128
    elif payload == "int64":
        x = x * rng.integers(-1000, 1000, size=x.shape)
    exact = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(weight).double(), stride=stride, padding=padding,
                     groups=groups).to(torch.int64)
    half = 1 << (LOIHI_STATE_BITS - 1)
    expected = torch.remainder(exact + half, 2 * half) - half
    x_in = torch.from_numpy(x).bool() if payload == "binary" else torch.from_numpy(x)  # bool: binary by type
    got = _ConvSynapse(q, "conv")(x_in)
    assert torch.equal(got.to(torch.int64), expected)
    max_sum = int(exact.abs().max()) if density else 0
    # the documented bound: max over outputs of sum |w|, times max |payload|
    bound = int(np.abs(weight).reshape(c_out, -1).sum(1).max()) * (1 if payload == "binary" else int(np.abs(x.astype(np.int64)).max()))
    assert got.dtype == (torch.int64 if bound >= 1 << 31 else torch.int32)
    if top >= 1 << 28 and (density or payload == "binary"):
        assert got.dtype == torch.int64  # the int64 accumulator is exercised
    if density and top > 1 << 20:
        assert max_sum >= half and not torch.equal(exact, expected)  # the wrap is exercised
    if density == 1.0:
        assert max_sum > 0


def test_conv_synapse_refuses_sums_past_int64():
    from sast_deploy.deploy.emulator import _ConvSynapse
    from sast_deploy.deploy.quantize import QuantizationError, QuantizedLayer

    weight = np.array([[[[1 << 61, 1 << 61], [(1 << 61) + 3, 0]]]])  # binary sums up to 3 * 2^61 + 3 < 2^63
    q = QuantizedLayer("conv", weight, 100, 0, 4096, 1.0, (1, 3, 3), (1, 2, 2))
    x = torch.ones((1, 1, 3, 3), dtype=torch.uint8)
    a = _ConvSynapse(q, "conv")(x)
    assert a.dtype == torch.int64 and a.tolist() == [[[[3, 3], [3, 3]]]]  # 3 * 2^61 + 3 wrapped to 24 bits
    with pytest.raises(QuantizationError, match="layer 0 .conv.: sums up to .* exceed int64"):
        _ConvSynapse(q, "layer 0 (conv)")(x * 2)


@pytest.mark.parametrize("threads", [2, 3])
def test_emulator_splits_rows_across_threads_exactly(threads):
    """torch.get_num_threads() > 1: the conv rows and the LIF's samples go to threads in
    slices (7 samples in 3 uneven slices); the counts and the recorded spikes are those of
    one thread."""
    qnet = random_conv_net(50, channels=6, kernel=(2, 3), stride=(2, 1), padding=(0, 1), groups=2, vths=(100, 60, 100))
    frames = torch.from_numpy(random_spikes(51, 7, 9, qnet.input_shape, 0.3))
    emulator = FixedPointNet(qnet)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        counts, spikes = emulator.run(frames, record=True)
        torch.set_num_threads(threads)
        threaded, threaded_spikes = emulator.run(frames, record=True)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(threaded, counts) and all(torch.equal(a, b) for a, b in zip(threaded_spikes, spikes))
    np.testing.assert_array_equal(counts.numpy(), _reference_counts(qnet, frames.numpy()))
    assert counts.sum() > 0


def test_emulator_refuses_frames_that_are_not_integers():
    qnet = random_conv_net(0)
    frames = torch.from_numpy(random_spikes(1, 2, 3, qnet.input_shape)).float()
    assert torch.equal(emulate_counts(qnet, frames * 2), emulate_counts(qnet, (frames * 2).to(torch.uint8)))
    with pytest.raises(FramesError, match="whole numbers"):  # the API's boundary (as_frames)
        emulate_counts(qnet, frames * 0.5)
    with pytest.raises(ValueError, match="integer"):  # FixedPointNet.run called directly
        FixedPointNet(qnet).run(frames * 0.5)


# --- the event-driven Conv model against Lava's stock one -----------------------------------

CONV_CASES = [  # (C_in, C_out, kernel (x, y), stride, padding, dilation, groups, W, H, density, weight range)
    (2, 8, (5, 5), (2, 2), (0, 0), (1, 1), 1, 34, 34, 0.05, 128),
    (2, 3, (3, 2), (1, 2), (1, 0), (1, 1), 1, 9, 8, 0.4, 128),  # asymmetric kernel, stride, padding
    (4, 6, (3, 3), (1, 1), (2, 1), (2, 1), 2, 10, 9, 1.0, 128),  # dilation, groups, every input spiking
    (8, 8, (2, 2), (2, 2), (0, 0), (1, 1), 8, 15, 15, 0.3, 128),  # the sum-pool: depthwise
    (3, 6, (4, 3), (3, 2), (2, 2), (1, 2), 3, 11, 13, 0.0, 128),  # no input spike
    (6, 2, (3, 3), (1, 1), (1, 1), (1, 1), 1, 7, 7, 1.0, 1 << 20),  # sums past 2^23: the 24-bit wrap
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("graded", [False, True])
def test_conv_scatter_equals_lavas_stock_conv(case, graded):
    """The arithmetic of PyEventConvModel against PyConvModelFixed's (scipy convolve2d per
    group and channel pair, int32 cast, 24-bit wrap), without the runtime."""
    from lava.proc.conv import utils

    from sast_deploy.deploy.conv_scatter import lava_conv_table

    c_in, c_out, kernel, stride, padding, dilation, groups, w, h, density, top = case
    rng = np.random.default_rng(sum(kernel) + c_in + groups)
    weight = rng.integers(-top, top, size=(c_out, *kernel, c_in // groups)).astype(np.int32)
    weight.flat[:2] = [-top, top - 1]
    x = (rng.random((w, h, c_in)) < density).astype(np.int32)
    if graded:
        x *= rng.integers(1, 100, size=x.shape).astype(np.int32)
    out_shape = utils.output_shape((w, h, c_in), c_out, kernel, stride, padding, dilation)
    stock = utils.signed_clamp(utils.conv(x if graded else x.astype(bool), weight, kernel, stride, padding, dilation,
                                          groups), bits=24)
    table = lava_conv_table(weight, (w, h, c_in), out_shape, stride, padding, dilation, groups)
    event = utils.signed_clamp(table(x.reshape(1, -1), graded=graded).reshape(out_shape).astype(np.int32), bits=24)
    np.testing.assert_array_equal(event, stock)
    if density > 0:
        assert np.abs(stock).max() > 0


def test_conv_scatter_chunks_events_exactly(monkeypatch):
    """Many rows at once (K copies) in chunks of a few synaptic events, rows split across
    chunks: the same sums as the stock conv of each row."""
    from lava.proc.conv import utils

    from sast_deploy.deploy import conv_scatter

    rng = np.random.default_rng(3)
    weight = rng.integers(-128, 128, size=(5, 3, 3, 2)).astype(np.int32)
    x = (rng.random((12, 10, 11, 2)) < 0.2).astype(np.int32)  # 12 rows of (W, H, C)
    args = ((3, 3), (2, 1), (1, 1), (1, 1))
    out_shape = utils.output_shape((10, 11, 2), 5, *args)
    expected = np.stack([utils.conv(row.astype(bool), weight, *args, 1) for row in x])
    table = conv_scatter.lava_conv_table(weight, (10, 11, 2), out_shape, *args[1:], 1)
    monkeypatch.setattr(conv_scatter, "MAX_EVENTS_PER_CHUNK", 7)
    np.testing.assert_array_equal(table(x.reshape(12, -1)).reshape(expected.shape), expected)
    assert np.abs(expected).max() > 0


NET_CASES = [  # random_conv_net's keywords
    dict(),
    dict(kernel=(2, 3), stride=(2, 1), padding=(0, 1), channels=6, groups=2, vths=(100, 60, 100)),
    dict(in_shape=(2, 12, 12), kernel=(5, 5), stride=(4, 4), padding=(2, 2), pool=False, vths=(300, 0, 150)),
    dict(in_shape=(2, 34, 34), channels=8, kernel=(5, 5), stride=(2, 2), padding=(0, 0), vths=(225, 60, 20)),  # the benchmark's
]


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(NET_CASES)))
@pytest.mark.parametrize("density", [0.6, 0.04])
def test_event_driven_conv_equals_stock_model_and_emulator(tmp_path, case, density):
    qnet = random_conv_net(30 + case, **NET_CASES[case])
    path = write_netx(qnet, tmp_path / "net.h5")
    frames = random_spikes(31 + case, 6, 10, qnet.input_shape, density)
    stock = simulate_lava(path, frames, progress=False, event_driven=False)
    event = simulate_lava(path, frames, progress=False, copies=1)
    np.testing.assert_array_equal(event.counts, stock.counts)
    np.testing.assert_array_equal(stock.counts, emulate_counts(read_netx(path), torch.from_numpy(frames)).numpy())
    assert stock.counts.sum() > 0


def test_event_conv_model_is_selected_by_the_run_config(tmp_path):
    from lava.proc.conv.process import Conv

    from sast_deploy.deploy.lava.models import PyEventConvModel, run_config
    from sast_deploy.deploy.lava.process import CopiesNetwork

    assert run_config(True).exception_proc_model_map[Conv] is PyEventConvModel
    assert Conv not in (run_config(False).exception_proc_model_map or {})
    net = CopiesNetwork(str(write_netx(random_conv_net(0), tmp_path / "net.h5")), copies=30, reset_interval=5)
    conv = [layer.synapse for layer in net.layers[:2]]
    assert [int(c.groups.init) for c in conv] == [30, 30 * 4]  # past the stock model's int8
    assert [c.proc_params["copies"] for c in conv] == [30, 30]


@pytest.mark.slow
def test_k_copies_past_lavas_int8_conv_groups_equal_single_copies():
    """Lava's stock Conv model holds ``groups`` as int8: K copies of a sum-pool over 5 channels
    (5K groups) went silent past K = 25, and K stopped at 15 on 8 channels. The event-driven
    model holds them as int32 and scatters per copy: K = 16 and K = 26 (130 groups), padded
    groups included, give the single-copy counts."""
    from sast_deploy.training.model import ModelConfig, build_model
    from sast_deploy.deploy.simulate import DEFAULT_CONV_COPIES, resolve_copies

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="conv", hidden=(), conv_channels=5, conv_kernel=3, conv_stride=1, pool=2), (2, 9, 8), 4)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    qnet = quantize(model)
    assert resolve_copies(qnet, None, 100) == DEFAULT_CONV_COPIES and resolve_copies(qnet, None, 7) == 7
    frames = random_spikes(1, 30, 6, (2, 9, 8))
    single = simulate_quantized(qnet, frames, progress=False, copies=1)
    assert single.counts.sum() > 0
    np.testing.assert_array_equal(single.counts, emulate_counts(qnet, torch.from_numpy(frames)).numpy())
    for copies in (16, 26):
        res = simulate_quantized(qnet, frames, progress=False, copies=copies)
        assert res.copies == copies
        np.testing.assert_array_equal(res.counts, single.counts)


@pytest.mark.slow
def test_k_copies_on_a_trained_conv_run_equal_stock_lava_and_emulator(trained_conv_run, small_data, tmp_path):
    from sast_deploy.deploy.export import export_run

    net = export_run(trained_conv_run, tmp_path / "net.h5")["net"]
    frames = small_data[1][1].frames[:20].numpy()
    stock = simulate_lava(net, frames, progress=False, event_driven=False)
    assert stock.counts.sum() > 0
    np.testing.assert_array_equal(stock.counts, emulate_counts(read_netx(net), torch.from_numpy(frames)).numpy())
    for copies in (1, 20):
        np.testing.assert_array_equal(simulate_lava(net, frames, progress=False, copies=copies).counts,
                                      stock.counts)


def test_dense_only_networks_have_no_copies_cap():
    """Issue 20, case 19: the int8 conv-groups cap concerns conv layers only; dense copies share
    one weight block, so an MLP takes more than 127 copies (and Lava equals the emulator)."""
    from sast_deploy.deploy.simulate import DEFAULT_COPIES, resolve_copies

    qnet = random_mlp(0, (24, 12, 5), (300, 400), (410, 0))
    assert resolve_copies(qnet, 200, 300) == 200 and resolve_copies(qnet, None, 300) == DEFAULT_COPIES
    frames = random_spikes(0, 140, 10, (1, 1, 24))
    res = simulate_quantized(qnet, frames, progress=False, copies=135)
    assert res.copies == 135
    np.testing.assert_array_equal(res.counts, emulate_counts(qnet, torch.from_numpy(frames)).numpy())


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
