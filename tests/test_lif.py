"""The neuron equations and the three spike modes on the same weights."""

import math

import numpy as np
import torch

import pytest

from sast_deploy.functional.lif import (
    SURROGATES,
    arctan_sigmoid,
    arctan_sigmoid_grad,
    hard_sigmoid,
    heaviside_strict,
    LOIHI_STATE_BITS,
    lif_parameters,
    lif_run_fixed_point,
    lif_step,
    lif_step_fixed_point,
    straight_through,
)
from sast_deploy.training.model import LIF, ModelConfig, build_model, predict
from norse.torch.functional.lif_box import LIFBoxFeedForwardState


def test_arctan_sigmoid_values_and_exact_gradient():
    x = torch.tensor([-1.0, 0.0, 0.5], requires_grad=True)
    y = arctan_sigmoid(x, 2.0)
    expected = [math.atan(math.pi / 2 * 2 * v) / math.pi + 0.5 for v in (-1.0, 0.0, 0.5)]
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), arctan_sigmoid_grad(x.detach(), 2.0).numpy(), rtol=1e-6)
    assert float(arctan_sigmoid_grad(torch.tensor(0.0), 2.0)) == 1.0  # alpha / 2 at threshold


def test_hard_spike_is_strict_and_ste_has_the_surrogate_gradient():
    x = torch.tensor([-0.1, 0.0, 1e-6, 2.0], requires_grad=True)
    assert heaviside_strict(x).tolist() == [0.0, 0.0, 1.0, 1.0]  # v == theta does not spike (Loihi: v > vth)
    z = straight_through(x, 0.5)  # arctan by default
    assert z.tolist() == [0.0, 0.0, 1.0, 1.0]
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), arctan_sigmoid_grad(x.detach(), 0.5).numpy(), rtol=1e-6)


# sigma(x) and sigma'(x) at x = -1, 0, 0.5 for alpha = 2, written out by hand per family
FAMILY_POINTS = {
    "arctan": ([math.atan(-math.pi) / math.pi + 0.5, 0.5, math.atan(math.pi / 2) / math.pi + 0.5],
               [1 / (1 + math.pi**2), 1.0, 1 / (1 + (math.pi / 2) ** 2)]),
    "sigmoid": ([1 / (1 + math.exp(4)), 0.5, 1 / (1 + math.exp(-2))],
                [4 * math.exp(-4) / (1 + math.exp(-4)) ** 2, 1.0, 4 * math.exp(-2) / (1 + math.exp(-2)) ** 2]),
    "hardsigmoid": ([0.0, 0.5, 1.0], [0.0, 1.0, 0.0]),  # alpha = 2: the band is |x| < 0.5
}


@pytest.mark.parametrize("family", sorted(SURROGATES))
def test_surrogate_family_values_slope_at_threshold_and_exact_gradient(family):
    sigma, grad = SURROGATES[family]
    want_value, want_grad = FAMILY_POINTS[family]
    x = torch.tensor([-1.0, 0.0, 0.5], dtype=torch.float64)
    np.testing.assert_allclose(sigma(x, 2.0).numpy(), want_value, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad(x, 2.0).numpy(), want_grad, rtol=1e-12, atol=1e-15)
    for alpha in (0.5, 1.0, 2.0):  # alpha is the same slope at threshold in every family
        assert float(grad(torch.tensor(0.0), alpha)) == alpha / 2
        assert float(sigma(torch.tensor(0.0), alpha)) == 0.5
    # autograd through sigma agrees with the analytic derivative away from kinks
    xs = torch.linspace(-3, 3, 61, dtype=torch.float64)
    xs = xs[(xs.abs() - 0.5).abs() > 1e-6].requires_grad_(True)
    sigma(xs, 2.0).sum().backward()
    np.testing.assert_allclose(xs.grad.numpy(), grad(xs.detach(), 2.0).numpy(), rtol=1e-9, atol=1e-12)


def test_hard_sigmoid_is_exactly_zero_and_one_outside_its_band():
    alpha = 0.5  # band |x| < 1 / alpha = 2
    x = torch.tensor([-100.0, -2.0, -2.0 + 1e-3, 2.0 - 1e-3, 2.0, 100.0])
    y = hard_sigmoid(x, alpha)
    assert y[0] == 0.0 and y[1] == 0.0 and y[4] == 1.0 and y[5] == 1.0  # exact, not merely small
    assert 0.0 < y[2] < 1e-3 and 1 - 1e-3 < y[3] < 1.0
    g = SURROGATES["hardsigmoid"].grad(x, alpha)
    assert g.tolist() == [0.0, 0.0, 0.25, 0.25, 0.0, 0.0]
    # the heavy tail that the compact one removes: arctan at -1/alpha is still far from 0
    assert float(arctan_sigmoid(torch.tensor(-2.0), alpha)) == pytest.approx(math.atan(-math.pi / 2) / math.pi + 0.5)  # 0.18


@pytest.mark.parametrize("family", sorted(SURROGATES))
def test_ste_backward_is_the_familys_derivative(family):
    x = torch.tensor([-3.0, -0.4, 0.0, 0.2, 3.0], requires_grad=True)
    z = straight_through(x, 2.0, family)
    assert z.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), SURROGATES[family].grad(x.detach(), 2.0).numpy(), rtol=1e-6)


def test_model_surrogate_field_reaches_every_lif_and_old_configs_load_as_arctan():
    assert ModelConfig().surrogate == "arctan"
    assert ModelConfig(**{k: v for k, v in vars(ModelConfig()).items() if k != "surrogate"}).surrogate == "arctan"
    with pytest.raises(ValueError, match="model.surrogate"):
        ModelConfig(surrogate="tanh")
    torch.manual_seed(0)
    x = (torch.rand(6, 4, 2, 6, 6) < 0.3).float()
    outs = {}
    for family in SURROGATES:
        torch.manual_seed(1)
        net = build_model(ModelConfig(hidden=(16,), alpha=0.5, surrogate=family), (2, 6, 6), 3)
        assert all(layer.lif.p.surrogate == family for layer in net.layers)
        outs[family] = (net(x, mode="surrogate"), net(x, mode="hard"))
    assert torch.equal(outs["arctan"][1], outs["hardsigmoid"][1])  # same weights: hard spikes do not see sigma
    assert not torch.allclose(outs["arctan"][0], outs["hardsigmoid"][0])


def test_lif_step_by_hand():
    p = lif_parameters(beta=0.75, v_th=1.0, alpha=2.0)
    v = torch.tensor([0.4, 0.4, 0.0])
    i = torch.tensor([0.6, 0.8, 1.0])
    z, s = lif_step(i, LIFBoxFeedForwardState(v=v), p, "hard")
    # v' = 0.75 * v + I = [0.9, 1.1, 1.0]; spikes strictly above 1; reset to zero
    assert z.tolist() == [0.0, 1.0, 0.0]
    np.testing.assert_allclose(s.v.numpy(), [0.9, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(s.v_pre.numpy(), [0.9, 1.1, 1.0], rtol=1e-6)  # what the threshold saw
    zs, ss = lif_step(i, LIFBoxFeedForwardState(v=v), p, "surrogate")
    sig = arctan_sigmoid(torch.tensor([0.9, 1.1, 1.0]) - 1.0, 2.0)
    np.testing.assert_allclose(zs.numpy(), sig.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ss.v.numpy(), (torch.tensor([0.9, 1.1, 1.0]) * (1 - sig)).numpy(), rtol=1e-6)


def test_lif_module_runs_over_time_in_every_mode():
    lif = LIF(beta=0.5, v_th=1.0, alpha=2.0)
    currents = torch.tensor([[0.6], [0.6], [0.6], [0.6]])
    z, _ = lif(currents, mode="hard")
    # v: 0.6, 0.9, 1.05 -> spike, reset 0, 0.6
    assert z[:, 0].tolist() == [0.0, 0.0, 1.0, 0.0]
    p = lif.p
    zs, _ = lif(currents, mode="surrogate")
    assert torch.all((zs > 0) & (zs < 1))
    assert lif.beta == 0.5 and lif.v_th == 1.0
    assert lif.p is p  # the mode is an argument of the step: running a mode changes nothing in the module
    with pytest.raises(ValueError, match="spike mode"):
        lif(currents, mode="soft")


def test_one_network_three_modes_same_weights():
    torch.manual_seed(0)
    net = build_model(ModelConfig(hidden=(16,), init_gain=4.0), (2, 6, 6), 3)
    x = (torch.rand(8, 5, 2, 6, 6) < 0.3).float()
    hard = net(x, mode="hard")
    ste = net(x, mode="ste")
    sur = net(x, mode="surrogate")
    assert hard.shape == (8, 5, 3)
    assert torch.equal(hard, ste)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(hard, sur)
    for pool, kinds in ((0, ["conv", "dense"]), (2, ["conv", "pool", "dense"])):  # default: no pooling layer
        conv = build_model(ModelConfig(arch="conv", hidden=(), conv_channels=4, conv_kernel=3, conv_stride=1, pool=pool), (2, 10, 10), 11)
        assert [layer.kind for layer in conv.layers] == kinds
        assert conv((torch.rand(4, 2, 2, 10, 10) < 0.3).float(), mode="hard").shape == (4, 2, 11)


def test_prediction_breaks_ties_by_lowest_class_index():
    counts = torch.tensor([[0.0, 3.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 2.0]])
    assert predict(counts).tolist() == [1, 0, 2]
    assert predict(counts.numpy()).tolist() == [1, 0, 2]


def test_exact_float_is_the_narrowest_float_whose_integers_cover_the_sums():
    from sast_deploy.functional.lif import exact_float

    assert [exact_float(n) for n in (0, 2**24, 2**24 + 1, 2**53, 2**53 + 1)] == ["float32", "float32", "float64", "float64", None]
    # the limits are tight: the next integer is the first one the type rounds
    for name, limit in (("float32", 2**24), ("float64", 2**53)):
        dtype = np.dtype(name).type
        assert int(dtype(limit)) == limit and int(dtype(limit + 1)) != limit + 1


@pytest.mark.parametrize("dv, vth", [(0, 0), (410, 225), (4095, 131071), (4096, 100), (1, 3)])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_lif_run_fixed_point_is_the_step_function_over_time(dv, vth, dtype):
    """The compiled time loop against lif_step_fixed_point step by step: inputs from silent to
    past the 24-bit range (u wraps once, v saturates at +-(2^23 - 1)), both int widths."""
    rng = np.random.default_rng(dv + vth)
    scale = 2.0 ** rng.integers(0, 20, size=(4, 40, 37))  # magnitudes 1 .. 2^19 (u = a << 6: up to 2^25)
    a = torch.from_numpy((rng.standard_normal((4, 40, 37)) * scale).astype(np.int64))
    a[0, :6, :6] = torch.tensor([1 << 17, -(1 << 17), (1 << 17) + 1, (1 << 18) - 1, -(1 << 18), (1 << 19) + 5])
    v, expected, saturated = torch.zeros_like(a[:, 0]), [], False
    for t in range(a.shape[1]):
        s, v = lif_step_fixed_point(a[:, t], v, dv, vth)
        expected.append(s)
        saturated |= bool((v.abs() == (1 << (LOIHI_STATE_BITS - 1)) - 1).any())
    expected = torch.stack(expected, 1).to(torch.uint8)
    got = lif_run_fixed_point(a.to(dtype).reshape(4, 40, 37, 1), dv, vth)
    assert got.dtype == torch.uint8 and got.shape == (4, 40, 37, 1)
    assert torch.equal(got.reshape(expected.shape), expected)
    assert 0 < int(expected.sum()) < expected.numel()
    assert saturated  # the clamp at -(2^23 - 1) is reached
    with pytest.raises(TypeError, match="integers"):
        lif_run_fixed_point(a.float(), dv, vth)
