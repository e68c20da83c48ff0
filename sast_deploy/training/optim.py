"""Stage 3, optimizer: SAST (Sharpness-Aware Surrogate Training), SAM applied to the
surrogate-forward loss, with an explicit two-step API in the manner of davda54/sam.

One SAST step, as in the paper::

    loss(w; B).backward()            # g = grad of the loss on minibatch B at w
    opt.first_step(zero_grad=True)   # w <- w + eps,  eps = rho * g / (||g|| + delta)
    loss(w + eps; B').backward()     # gradient at the perturbed point, on an independent B'
    opt.second_step(zero_grad=True)  # w <- w (restored), then the base optimizer (Adam) step

``sam`` is the same with B' = B. ||g|| is the global L2 norm over all parameters.

``adaptive=True`` is ASAM's scale-invariant radius (Kwon et al. 2021, as davda54/sam's
``adaptive``): eps = rho * w^2 g / ||w g|| elementwise, so each weight moves in proportion to its
own magnitude and a layer with small weights is not swamped by a radius set for large ones.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Type

import torch


class SAST(torch.optim.Optimizer):
    """Sharpness-aware wrapper around a base optimizer.

    Args:
        params: parameters to optimise.
        base_optimizer: optimizer class applied in :meth:`second_step` (default Adam).
        rho: radius of the perturbation (L2 norm of eps, in weight units).
        delta: stabiliser of the normalisation ||g|| + delta.
        adaptive: ASAM's elementwise scaling by |w| (rho is then relative to the weights' scale).
        **base_kwargs: passed to the base optimizer (lr, betas, weight_decay, ...).
    """

    def __init__(
        self,
        params: Iterable,
        base_optimizer: Type[torch.optim.Optimizer] = torch.optim.Adam,
        rho: float = 0.05,
        delta: float = 1e-12,
        adaptive: bool = False,
        **base_kwargs,
    ):
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        super().__init__(params, dict(rho=rho, delta=delta, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """Global L2 norm of the current gradients (of |w| g when adaptive)."""
        norms = [((p.abs() if g["adaptive"] else 1.0) * p.grad).norm(p=2)
                 for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not norms:
            raise RuntimeError("SAST.first_step: no gradients; call backward() on the loss of B first")
        return torch.norm(torch.stack(norms), p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Ascend: w <- w + rho * g / (||g|| + delta) (adaptive: rho * w^2 g / (||w g|| + delta)),
        remembering w for :meth:`second_step`."""
        norm = self.grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (norm + group["delta"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["w"] = p.detach().clone()
                weight = p.detach() ** 2 if group["adaptive"] else 1.0
                self.state[p]["e_w"] = weight * p.grad * scale.to(p)  # kept for reuse_step
                p.add_(self.state[p]["e_w"])
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def reuse_step(self) -> bool:
        """Ascend along the last perturbation eps again (LookSAM-style): no gradient at w is
        needed, so this SAST step costs one forward-backward pass. Returns False (and does
        nothing) before the first :meth:`first_step`."""
        params = [p for g in self.param_groups for p in g["params"] if "e_w" in self.state[p]]
        if not params:
            return False
        for p in params:
            self.state[p]["w"] = p.detach().clone()
            p.add_(self.state[p]["e_w"])
        return True

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w and apply the base optimizer with the gradient taken at w + eps."""
        for group in self.param_groups:
            for p in group["params"]:
                if "w" in self.state[p]:
                    p.copy_(self.state[p].pop("w"))
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None):
        raise RuntimeError(
            "SAST needs two gradients per step: call first_step() after the backward pass on B and "
            "second_step() after the backward pass on B' (see sast_deploy.training.train.sast_step)"
        )

    # The moments (Adam's m and v) live in the base optimizer; w and eps are transient (a
    # resumed run recomputes eps at its next full step).
    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
