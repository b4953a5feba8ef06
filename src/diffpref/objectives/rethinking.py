"""Rethinking-DPO hooks — Kang, Lim, Baek, Shim, arXiv 2505.18736 (AAAI 2026).

Not a loss: three pieces that wrap any pairwise loss (:mod:`dpo`, :mod:`smpo`).

1. **Timestep oversampling.** The paper draws ``t ~ Cat(γ^s)`` skewed toward early
   (high-noise, large DDPM ``t``) generation steps. ``[I]`` Over 1000 raw indices γ=0.9 would put
   ~99 % of the mass on the 44 noisiest steps, so the grid is a parameter: ``n_bins`` equal
   bins of ``[0, T)``, ``P(bin k) ∝ γ^k`` with ``k = 0`` the *noisiest* bin, then uniform within
   the bin. 10 bins, γ=0.9 → P(noisiest) ≈ 0.154.
2. **Reward-scale schedule** ``λ(t) = 1 + norm(1/sqrt(SNR(t)))``, ``SNR = ᾱ/(1−ᾱ)``. ``[I]``
   ``norm`` = min–max over all training timesteps, so ``λ ∈ [1, 2]``, increasing in ``t``.
   It multiplies β per sample (``Errors.beta_scale``).
3. **Reference update.** Every ``τ`` optimiser steps the reference is hard-copied from the
   policy (not EMA) until its divergence from the initial model exceeds ``δ``; then it is
   frozen for good. The divergence is estimated on a few winner latents with shared
   ``(t, ε)`` as ``D ≈ T · mean(mse_ref − mse_init)`` (paper Eqs. 7–8 with the Gaussian reverse
   parameterisation, ``ω_t`` dropped). ``[I]`` The paper's δ (0.005 SD1.5, 0.002 SDXL) assumes a
   reduction and weighting that live in its unavailable appendix; with our per-element mean
   **δ must be recalibrated** (log ``D`` during a plain DPO run and pick δ from that curve).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from diffpref.settings import Float, Int, Settings

Action = Literal["copy", "freeze"]


class Params(Settings):
    """Rethinking-DPO settings; embedded as ``rethinking:`` in a pairwise objective's params."""

    reference_every: Int = Field(
        32, ge=1, le=1_000_000, description="τ: copy the policy into the reference"
    )
    delta: Float = Field(gt=0, description="freeze threshold on D(ref, init), in our units")
    divergence_images: Int = Field(
        4, ge=1, le=1024, description="winner latents used to estimate D"
    )
    timestep_bins: Int = Field(
        10, ge=1, le=1000, description="grid of the Cat(γ^k) timestep sampler"
    )
    timestep_gamma: Float = Field(0.9, gt=0, le=1, description="γ; 1 = uniform timesteps")
    reward_scale: bool = Field(True, description="multiply β by λ(t) = 1 + norm(1/sqrt(SNR))")


def timestep_bin_probs(n_bins: int, gamma: float) -> Tensor:
    """``[n_bins]`` probabilities ``γ^k / Σ_j γ^j``, ``k = 0`` the noisiest bin."""
    if n_bins < 1 or not 0 < gamma <= 1:
        raise ValueError(f"need n_bins >= 1 and 0 < gamma <= 1, got {n_bins}, {gamma}")
    w = torch.tensor(gamma, dtype=torch.float64) ** torch.arange(n_bins, dtype=torch.float64)
    return w / w.sum()


def bin_edges(num_train_timesteps: int, n_bins: int) -> Tensor:
    """``[n_bins + 1]`` DDPM indices: bin ``k`` is ``[edges[k+1], edges[k])`` (descending).

    Bins are as equal as integer division allows, so no timestep is unreachable.
    """
    if not 1 <= n_bins <= num_train_timesteps:
        raise ValueError(f"need 1 <= n_bins <= {num_train_timesteps}, got {n_bins}")
    up = torch.linspace(0, num_train_timesteps, n_bins + 1, dtype=torch.float64).round().long()
    return num_train_timesteps - up


def timestep_bin(t: Tensor, num_train_timesteps: int, n_bins: int) -> Tensor:
    """Bin index (0 = noisiest) of each DDPM timestep in ``t``; for per-bin logging."""
    edges = bin_edges(num_train_timesteps, n_bins).to(t.device)
    # edges descend; bin k holds edges[k+1] <= t < edges[k]
    return (t.unsqueeze(-1) < edges[1:]).sum(dim=-1)


def sample_timesteps(
    n: int,
    num_train_timesteps: int = 1000,
    n_bins: int = 10,
    gamma: float = 0.9,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``[n]`` long DDPM indices: bin ``k ~ Cat(γ^k)`` (0 = highest ``t``), uniform within it."""
    probs = timestep_bin_probs(n_bins, gamma)
    edges = bin_edges(num_train_timesteps, n_bins)
    k = torch.multinomial(probs, n, replacement=True, generator=generator)
    low, high = edges[k + 1], edges[k]
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    t = low + (u * (high - low)).long()
    return torch.minimum(t, high - 1)


def reward_scale(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """``λ(t) = 1 + minmax(1/sqrt(SNR))[t]`` with the min–max over all training timesteps."""
    a = alphas_cumprod.double()
    inv_sqrt_snr = ((1 - a) / a).sqrt()
    norm = (inv_sqrt_snr - inv_sqrt_snr.min()) / (inv_sqrt_snr.max() - inv_sqrt_snr.min())
    lam = 1 + norm.to(t.device)[t.long()]
    return lam.to(alphas_cumprod.dtype)


def divergence(ref_err_w: Tensor, init_err_w: Tensor, num_train_timesteps: int = 1000) -> Tensor:
    """``[I]`` ``D(ref ‖ init) ≈ T · mean(mse_ref − mse_init)`` on winner latents.

    Both error tensors must come from the same ``(x0, t, ε)``; the scale differs from the
    paper's, so its δ must be recalibrated (module docstring).
    """
    return num_train_timesteps * (ref_err_w.detach() - init_err_w.detach()).mean()


class ReferenceSchedule:
    """When the training loop must copy the policy into the reference, or stop doing so.

    Call :meth:`step` after every optimiser step. At each multiple of ``tau`` it measures the
    divergence of the *current* reference from the initial model (``divergence_fn()``,
    recorded in :attr:`history`); above ``delta`` the reference is frozen for good (``'freeze'``,
    no further copies or checks), otherwise it returns ``'copy'``. Checking before copying
    freezes exactly the reference the paper's copy-then-check would freeze (the first copy
    whose ``D`` exceeds δ, used for the same steps) but only ever measures a network that
    exists, so the loop needs no "undo".
    """

    def __init__(self, tau: int, delta: float) -> None:
        if tau < 1 or delta <= 0:
            raise ValueError(f"need tau >= 1 and delta > 0, got {tau}, {delta}")
        self.tau = tau
        self.delta = delta
        self.frozen = False
        self.frozen_at: int | None = None
        self.history: list[tuple[int, float]] = []

    @property
    def last_divergence(self) -> float | None:
        return self.history[-1][1] if self.history else None

    def step(self, global_step: int, divergence_fn: Callable[[], float | Tensor]) -> Action | None:
        if self.frozen or global_step <= 0 or global_step % self.tau:
            return None
        d = float(divergence_fn())
        self.history.append((global_step, d))
        if d > self.delta:
            self.frozen = True
            self.frozen_at = global_step
            return "freeze"
        return "copy"
