"""SmPO's ReNoise DDIM inversion as a pure function of an ``eps_fn``."""

from __future__ import annotations

import math

import pytest
import torch

from diffpref.objectives.smpo import ddim_inverse_step, renoise_invert

GRID = torch.tensor([1, 201, 401, 601, 801])  # DDIMInverseScheduler.set_timesteps(5), SD1.5


def sd_alphas_cumprod(n: int = 1000) -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def test_exact_noise_recovers_the_forward_process_at_each_samples_last_grid_level() -> None:
    acp = sd_alphas_cumprod()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([950, 450, 401, 1])  # 401 is on the grid: only levels strictly below count
    seen: list[list[int]] = []

    def eps_fn(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        seen.append(tau.tolist())
        return eps  # the exact noise of x_τ = sqrt(ᾱ_τ) x0 + sqrt(1 - ᾱ_τ) ε

    x_t, eps_t = renoise_invert(eps_fn, x0, t, acp, GRID)
    for i, level in enumerate([801, 401, 201]):
        a = acp[level].item()
        assert torch.allclose(x_t[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * eps[i])
    assert torch.equal(x_t[3], x0[3])  # t at or below the first grid point: no inversion
    # the (input, target) pair is self-consistent under the forward formula at the sampled t
    a_t = acp[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(x_t, a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps_t, atol=1e-12)
    a1 = acp[1].item()
    assert torch.allclose(eps_t[3], (1 - math.sqrt(a1)) * x0[3] / math.sqrt(1 - a1))
    # two model calls (predict + re-noise) per grid level, full batch, queried at the level
    assert seen == [[tau] * 4 for tau in (1, 1, 201, 201, 401, 401, 601, 601, 801, 801)]


def test_renoise_averages_the_two_predictions_and_steps_from_the_previous_level() -> None:
    acp = sd_alphas_cumprod()
    x0 = torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64)

    def eps_fn(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return 0.5 * x

    x_t, _ = renoise_invert(eps_fn, x0, torch.tensor([500]), acp, torch.tensor([100, 300]))
    a1, a2 = acp[100].item(), acp[300].item()
    # level 0 (ᾱ = 1) -> 100
    z = 2.0
    e1 = 0.5 * z
    z1 = math.sqrt(a1) * z + math.sqrt(1 - a1) * e1  # x0_pred = z at ᾱ = 1
    e2 = 0.5 * z1
    z = math.sqrt(a1) * z + math.sqrt(1 - a1) * (e1 + e2) / 2
    # level 100 -> 300
    e1 = 0.5 * z
    x0p = (z - math.sqrt(1 - a1) * e1) / math.sqrt(a1)
    z1 = math.sqrt(a2) * x0p + math.sqrt(1 - a2) * e1
    e2 = 0.5 * z1
    e = (e1 + e2) / 2
    z = math.sqrt(a2) * (z - math.sqrt(1 - a1) * e) / math.sqrt(a1) + math.sqrt(1 - a2) * e
    assert x_t.item() == pytest.approx(z, rel=1e-12)


def test_ddim_inverse_step_formula() -> None:
    x, eps = torch.tensor([[0.7]]), torch.tensor([[0.2]])
    out = ddim_inverse_step(x, eps, torch.tensor([0.9]), torch.tensor([0.5]))
    x0p = (0.7 - math.sqrt(0.1) * 0.2) / math.sqrt(0.9)
    assert out.item() == pytest.approx(math.sqrt(0.5) * x0p + math.sqrt(0.5) * 0.2)


def test_inversion_tracks_no_gradient_and_validates_the_grid() -> None:
    acp = sd_alphas_cumprod()
    x0 = torch.ones(2, 1, 2, 2, requires_grad=True)
    w = torch.tensor(0.3, requires_grad=True)
    x_t, eps_t = renoise_invert(lambda x, tau: w * x, x0, torch.tensor([500, 10]), acp, GRID)
    assert not x_t.requires_grad and not eps_t.requires_grad
    with pytest.raises(ValueError, match="ascending"):
        renoise_invert(lambda x, tau: x, x0, torch.tensor([500, 10]), acp, GRID.flip(0))
