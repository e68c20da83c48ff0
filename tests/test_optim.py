"""SAST: the perturbation, the update at the perturbed point, and independent B, B'."""

import copy

import pytest
import torch

from sast_deploy.training.model import ModelConfig, build_model
from sast_deploy.training.optim import SAST
from sast_deploy.training.evaluate import loss_on, minibatches
from sast_deploy.training.train import epoch_order, sast_step


def _net():
    torch.manual_seed(0)
    return build_model(ModelConfig(hidden=(8,), alpha=1.0, init_gain=3.0), (2, 4, 4), 3)


def _batch(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 5, 2, 4, 4, generator=g) < 0.4).float(), torch.randint(0, 3, (n,), generator=g)


def test_first_step_perturbs_by_rho_along_the_normalised_gradient():
    net = _net()
    opt = SAST(net.parameters(), rho=0.3, lr=1e-2)
    w0 = [p.detach().clone() for p in net.parameters()]
    loss_on(net, _batch(1), "surrogate", 1.0).backward()
    g = [p.grad.clone() for p in net.parameters()]
    norm = torch.sqrt(sum((x**2).sum() for x in g))
    opt.first_step()
    eps = [p.detach() - w for p, w in zip(net.parameters(), w0)]
    for e, gi in zip(eps, g):
        torch.testing.assert_close(e, 0.3 * gi / (norm + 1e-12))
    assert float(torch.sqrt(sum((e**2).sum() for e in eps))) == pytest.approx(0.3, rel=1e-5)


def test_adaptive_perturbation_is_scaled_by_each_weights_magnitude():
    net = _net()
    opt = SAST(net.parameters(), rho=0.5, adaptive=True, lr=1e-2)
    w0 = [p.detach().clone() for p in net.parameters()]
    loss_on(net, _batch(1), "surrogate", 1.0).backward()
    g = [p.grad.clone() for p in net.parameters()]
    norm = torch.sqrt(sum(((w * x) ** 2).sum() for w, x in zip(w0, g)))  # ||w g||, not ||g||
    opt.first_step()
    eps = [p.detach() - w for p, w in zip(net.parameters(), w0)]
    for e, w, gi in zip(eps, w0, g):
        torch.testing.assert_close(e, 0.5 * w**2 * gi / (norm + 1e-12))
    # the radius is rho in the |w|-rescaled coordinates: ||eps / |w| || = rho
    assert float(torch.sqrt(sum(((e / w) ** 2).sum() for e, w in zip(eps, w0)))) == pytest.approx(0.5, rel=1e-4)
    # which is not the plain (non-adaptive) perturbation
    assert not torch.allclose(eps[0], 0.5 * g[0] / torch.sqrt(sum((x**2).sum() for x in g)))


def test_update_uses_the_gradient_at_the_perturbed_point_on_b_prime():
    b, b_prime = _batch(1), _batch(2)
    net = _net()
    opt = SAST(net.parameters(), rho=0.3, lr=1e-2)
    sast_step(net, opt, b, b_prime, "surrogate", 1.0)

    # by hand: g on B at w, eps, gradient on B' at w + eps, Adam step from w with it
    ref = _net()
    loss_on(ref, b, "surrogate", 1.0).backward()
    g = [p.grad.clone() for p in ref.parameters()]
    norm = torch.sqrt(sum((x**2).sum() for x in g))
    perturbed = copy.deepcopy(ref)
    with torch.no_grad():
        for p, gi in zip(perturbed.parameters(), g):
            p.add_(0.3 * gi / (norm + 1e-12))
    perturbed.zero_grad()
    loss_on(perturbed, b_prime, "surrogate", 1.0).backward()
    adam = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for p, q in zip(ref.parameters(), perturbed.parameters()):
        p.grad = q.grad.clone()
    adam.step()
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)

    # ... and it is not the update SAM (B' = B) or plain Adam would make
    sam = _net()
    sast_step(sam, SAST(sam.parameters(), rho=0.3, lr=1e-2), b, b, "surrogate", 1.0)
    assert any(not torch.allclose(p, q) for p, q in zip(net.parameters(), sam.parameters()))


def test_b_and_b_prime_are_independent_reproducible_shuffles():
    b = epoch_order(1000, seed=0, epoch=3, stream=0)
    bp = epoch_order(1000, seed=0, epoch=3, stream=1)
    assert torch.equal(b, epoch_order(1000, seed=0, epoch=3, stream=0))
    assert not torch.equal(b, bp)
    assert sorted(b.tolist()) == sorted(bp.tolist()) == list(range(1000))  # both cover the epoch
    first_b, first_bp = minibatches(b, 64)[0], minibatches(bp, 64)[0]
    assert len(set(first_b.tolist()) & set(first_bp.tolist())) < 20  # ~4 expected by chance
    assert not torch.equal(b, epoch_order(1000, seed=0, epoch=4, stream=0))


def test_single_step_call_is_refused_and_state_round_trips():
    net = _net()
    opt = SAST(net.parameters(), rho=0.1, lr=1e-3)
    with pytest.raises(RuntimeError, match="first_step"):
        opt.step()
    with pytest.raises(RuntimeError, match="no gradients"):
        opt.first_step()
    sast_step(net, opt, _batch(1), _batch(2), "surrogate", 1.0)
    state = opt.state_dict()
    assert state["state"]  # Adam moments are saved
    opt2 = SAST(_net().parameters(), rho=0.1, lr=1e-3)
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["rho"] == 0.1
    with pytest.raises(ValueError, match="rho"):
        SAST(net.parameters(), rho=-1.0)


def test_reuse_step_perturbs_along_the_last_eps_and_costs_one_pass():
    from sast_deploy.training.train import reuse_step

    b1, b2, b3 = _batch(1), _batch(2), _batch(3)
    net = _net()
    opt = SAST(net.parameters(), rho=0.3, lr=1e-2)
    assert not opt.reuse_step()  # nothing to reuse before the first full step
    sast_step(net, opt, b1, b2, "surrogate", 1.0)
    eps = [opt.state[p]["e_w"].clone() for p in net.parameters()]
    w = [p.detach().clone() for p in net.parameters()]
    ref = copy.deepcopy(net)
    ref_adam = torch.optim.Adam(ref.parameters(), lr=1e-2)
    ref_adam.load_state_dict(copy.deepcopy(opt.base_optimizer.state_dict()))  # load_state_dict shares tensors

    calls = {"n": 0}
    real_forward = net.forward

    def counting_forward(*a, **k):
        calls["n"] += 1
        return real_forward(*a, **k)

    net.forward = counting_forward
    reuse_step(net, opt, b1, b3, "surrogate", 1.0)
    assert calls["n"] == 1  # one forward-backward pass

    # by hand: gradient on B' at w + eps_old, Adam step from w
    perturbed = copy.deepcopy(ref)
    with torch.no_grad():
        for p, e in zip(perturbed.parameters(), eps):
            p.add_(e)
    loss_on(perturbed, b3, "surrogate", 1.0).backward()
    for p, q in zip(ref.parameters(), perturbed.parameters()):
        p.grad = q.grad.clone()
    ref_adam.step()
    for p, q, w0 in zip(net.parameters(), ref.parameters(), w):
        torch.testing.assert_close(p, q)
        assert not torch.equal(p, w0)
