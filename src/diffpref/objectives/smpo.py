"""SmPO-Diffusion — Smoothed Preference Optimization via ReNoise inversion, arXiv 2506.02698
(ICML 2025); official code ``JaydenLyh/SmPO``.

Smoothed label. Reward scores (PickScore) are min–max normalised with bounds computed from
the data, ``n(s) = (s − s_min)/(s_max − s_min)``, and ``p = σ(n(s_w) − n(s_l))`` is the
probability that column 0 is preferred (≥ 0.5 when the pair is oriented by score). The paper's
``2α − γ`` equals ``γ(2p − 1)``, so the loss is Diffusion-DPO with one extra factor::

    inside = −0.5 · β · γ · (2p − 1) · [(m_w − m_l) − (r_w − r_l)],   L = mean(−log σ(inside))

with errors a per-sample **mean** over latent elements. Equal scores give zero loss gradient.
The official code hard-codes global min/max PickScore constants and uses ``probs[0]`` (it
assumes one pair per GPU); here the bounds are arguments and ``p`` is per pair, ``[B]``.
``p`` is data, not a parameter: it is detached.

ReNoise inversion (spec §2.3). Instead of ``x_t = add_noise(x0, ε, t)`` with random ``ε``,
the training input is the DDIM-inversion state of ``x0`` under the *current* model
(no grad, CFG 1) on a coarse grid of timesteps below ``t`` (code: 5 steps SD1.5, 10 SDXL), with
one ReNoise averaging iteration per step, and the target is the noise implied at ``t``:
``ε̃ = (x̃_t − sqrt(ᾱ_t)·x0)/sqrt(1−ᾱ_t)``. The reference is evaluated on the same
``(x̃_t, t, ε̃)``. See :func:`renoise_invert`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from diffpref.objectives.base import Errors, Metrics, ParamsBase, detached, effective_beta
from diffpref.objectives.dpo import pair_logits, pair_metrics, preference_loss
from diffpref.objectives.rethinking import Params as RethinkingParams
from diffpref.settings import Float, Int

NEEDS_REFERENCE = True

EpsFn = Callable[[Tensor, Tensor], Tensor]


class Params(ParamsBase):
    labels: Literal["smoothed"] = "smoothed"
    beta: Float = Field(gt=0, description="no default: code 2000 SD1.5, 5000 SDXL")
    gamma: Float = Field(10.0, gt=0, description="sensitivity of the smoothed label")
    inversion_steps: Int = Field(
        5,
        ge=0,
        le=1000,
        description="DDIM inversion grid size (code: 5 SD1.5, 10 SDXL); 0 = add_noise",
    )
    rethinking: RethinkingParams | None = Field(
        None, description="Rethinking-DPO reference update + timestep hooks"
    )


def preference_probability(
    score_w: Tensor, score_l: Tensor, s_min: float | Tensor, s_max: float | Tensor
) -> Tensor:
    """``σ(n(s_w) − n(s_l))`` with ``n`` the min–max normalisation over ``[s_min, s_max]``.

    The bounds must come from the caller's data (e.g. min/max over the training scores):
    hard-coding the official PickScore constants would silently mis-scale any other reward.
    """
    span = torch.as_tensor(s_max, dtype=score_w.dtype) - torch.as_tensor(s_min, dtype=score_w.dtype)
    if not bool(span > 0):
        raise ValueError(f"need s_max > s_min, got {s_min}, {s_max}")
    n_w = (score_w - s_min) / span
    n_l = (score_l - s_min) / span
    return torch.sigmoid(n_w - n_l)


def loss(e: Errors, p: Params) -> tuple[Tensor, Metrics]:
    logits = pair_logits(e)
    if e.prob is None or e.prob.shape != logits.shape:
        got = None if e.prob is None else tuple(e.prob.shape)
        raise ValueError(f"Errors.prob must be [{logits.shape[0]}], got {got}")
    prob = e.prob.detach().to(logits.dtype)
    inside = 0.5 * effective_beta(p.beta, e, logits) * p.gamma * (2 * prob - 1) * logits
    value = preference_loss(inside, "sigmoid").mean()
    metrics = pair_metrics(e, inside)
    metrics.update(detached(prob=prob))
    return value, metrics


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def ddim_inverse_step(x: Tensor, eps: Tensor, alpha_cur: Tensor, alpha_next: Tensor) -> Tensor:
    """One deterministic DDIM step toward more noise (η = 0).

    ``x0_pred = (x − sqrt(1−ᾱ_cur)·eps)/sqrt(ᾱ_cur)``, ``x_next = sqrt(ᾱ_next)·x0_pred +
    sqrt(1−ᾱ_next)·eps`` — the update of diffusers ``DDIMInverseScheduler.step``
    (epsilon prediction). ``alpha_*`` are ``[B]`` cumulative alphas.
    """
    a_cur, a_next = _per_sample(alpha_cur, x), _per_sample(alpha_next, x)
    x0_pred = (x - (1 - a_cur).sqrt() * eps) / a_cur.sqrt()
    return a_next.sqrt() * x0_pred + (1 - a_next).sqrt() * eps


@torch.no_grad()
def renoise_invert(
    eps_fn: EpsFn,
    x0: Tensor,
    t: Tensor,
    alphas_cumprod: Tensor,
    grid: Tensor,
    alpha_start: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """ReNoise DDIM inversion of ``x0`` up to the last grid level below each sample's ``t``.

    Args:
        eps_fn: ``eps_fn(x, tau) -> eps`` for the whole batch, ``tau`` a ``[B]`` long tensor
            (one grid value repeated); the caller wraps the current UNet and its conditioning.
        x0: ``[B, C, H, W]`` clean latents.
        t: ``[B]`` sampled DDPM timesteps; samples may differ.
        alphas_cumprod: ``[T]`` training ``ᾱ``.
        grid: ascending 1-D inversion timesteps, e.g. ``DDIMInverseScheduler.timesteps``.
        alpha_start: ``ᾱ`` of ``x0`` before the first step. 1.0 treats ``x0`` as clean; diffusers'
            ``initial_alpha_cumprod`` is ``alphas_cumprod[0]`` when ``set_alpha_to_one=False``
            (the SD scheduler config), which differs by < 1e-3.

    At grid value ``τ_k`` (only for samples with ``τ_k < t``), as in the official loop::

        e1 = eps_fn(z, τ_k);  z1 = step(z, e1)
        e2 = eps_fn(z1, τ_k)                       # ReNoise: re-predict at the provisional point
        z  = step(z, (e1 + e2)/2)                  # one averaging iteration

    where ``step`` is :func:`ddim_inverse_step` from level ``τ_{k−1}`` (``alpha_start`` for
    ``k = 0``) to ``τ_k``, and the UNet is queried at the *target* level ``τ_k``. diffusers'
    ``DDIMInverseScheduler`` goes from ``τ_k − T//n`` to ``τ_k``, which is ``τ_{k−1}`` on its
    own uniform grid. The model is run on the full batch at each grid value (rows already past
    their ``t`` are discarded) so the caller's conditioning never has to be re-indexed.

    Returns ``(x̃_t, ε̃)`` with ``ε̃ = (x̃_t − sqrt(ᾱ_t)·x0)/sqrt(1−ᾱ_t)`` at the sampled ``t``,
    so ``x̃_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε̃`` holds exactly (the pair is self-consistent
    under the forward formula at ``t`` even though ``x̃_t`` sits on a grid level ≤ ``t``). If
    ``t`` is at or below the first grid point, ``x̃_t = x0``.
    """
    if grid.ndim != 1 or (grid.numel() > 1 and not bool((grid[1:] > grid[:-1]).all())):
        raise ValueError("grid must be a strictly ascending 1-D tensor of timesteps")
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t must be [{x0.shape[0]}], got {tuple(t.shape)}")
    acp = alphas_cumprod.to(device=x0.device, dtype=torch.float64)
    t = t.to(x0.device).long()
    grid = grid.to(x0.device).long()
    z = x0.clone()
    a_cur = torch.full_like(t, alpha_start, dtype=torch.float64)
    for tau in grid:
        active = tau < t
        if not bool(active.any()):
            break
        a_next = acp[tau].expand_as(a_cur)
        taus = tau.expand_as(t)
        e1 = eps_fn(z, taus)
        z1 = ddim_inverse_step(z, e1, a_cur, a_next)
        e2 = eps_fn(z1, taus)
        z_new = ddim_inverse_step(z, (e1 + e2) / 2, a_cur, a_next)
        z = torch.where(_per_sample(active, z).bool(), z_new, z)
        a_cur = torch.where(active, a_next, a_cur)
    a_t = _per_sample(acp[t], x0)
    eps_tilde = (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    return z, eps_tilde
