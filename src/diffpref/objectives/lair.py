"""Diffusion LAIR — listwise advantage-weighted regression on the implicit reward,
arXiv 2605.26491 (Wang, Han, Ermon, Yue, 2026). ``[I]`` Only the abstract was readable: the
form below is the spec's reconstruction (§3.3) and must be re-checked against the paper.

Per prompt, K candidates with rewards ``R_i`` (sharing one ``(t, ε)``):

    A_i  = softmax_i(R_i / τ) − 1/K            # centred advantages, Σ A_i = 0, |A_i| < 1
    r̂_i  = mse_ref(y_i) − mse_θ(y_i)           # denoising-loss improvement (per-sample mean)
    L    = mean_prompts  Σ_i [ −A_i · β r̂_i + (λ/2)·(β r̂_i)² ]

Each summand is minimised at ``β r̂_i* = A_i / λ``: bounded because ``|A_i| < 1``, so λ sets
the size of the preference update. The advantages are computed once from the labels
(:func:`advantages`, stored with the listwise labels) and arrive as ``Errors.advantage``.

``[I]`` choices: ``reduction`` — ``sum`` over the K candidates (as written) or ``mean`` (the
1/K weighting, making the loss scale independent of K); rewards standardised within the group
before the softmax by default so τ is in units of the group's spread, whatever the reward
model's scale; β defaults to 2500 = 0.5·5000, so ``β r̂`` is per image what Diffusion-DPO's
``inside`` is per pair at its official β; λ defaults to 1. ``Errors.beta_scale`` multiplies β
per prompt.

Multi-process batch: a training unit is a whole list (one prompt's K candidates), so every
process holds whole prompts and the loss is a mean over prompts: nothing to gather, and the
loop's gradient average over equal shares is the global mean.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from diffpref.objectives.base import (
    Errors,
    Metrics,
    ParamsBase,
    check_groups,
    detached,
    effective_beta,
)
from diffpref.settings import Float

NEEDS_REFERENCE = True


class Params(ParamsBase):
    labels: Literal["listwise"] = "listwise"
    beta: Float = Field(gt=0, description="scale of the implicit reward β·r̂")
    lam: Float = Field(1.0, gt=0, description="λ: quadratic penalty; optimum β·r̂ = A/λ")
    reduction: Literal["sum", "mean"] = Field("sum", description="over the K candidates")


def advantages(rewards: Tensor, tau: float, standardize: bool = True, eps: float = 1e-6) -> Tensor:
    """``[B, K]`` centred advantages ``softmax(R/τ) − 1/K`` per prompt (row).

    With ``standardize`` the rewards are first z-scored within the row (population std; a
    row of equal rewards gets ``A = 0``).
    """
    r = check_groups(rewards, None, "rewards").double()
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if standardize:
        r = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, unbiased=False, keepdim=True) + eps)
    a = torch.softmax(r / tau, dim=1) - 1.0 / r.shape[1]
    return a.to(rewards.dtype)


def implicit_reward(e: Errors) -> Tensor:
    """``[B, K]`` ``r̂ = mse_ref − mse_θ`` (reference detached)."""
    m = check_groups(e.model, None, "model")
    r = check_groups(e.ref, m.shape[1], "ref").detach()
    return r - m


def loss(e: Errors, p: Params) -> tuple[Tensor, Metrics]:
    r_hat = implicit_reward(e)
    a = check_groups(e.advantage, r_hat.shape[1], "advantage").detach().to(r_hat.dtype)
    br = effective_beta(p.beta, e, r_hat).unsqueeze(1) * r_hat
    per = -a * br + 0.5 * p.lam * br.pow(2)
    per_prompt = per.sum(dim=1) if p.reduction == "sum" else per.mean(dim=1)
    # pairwise ordering accuracy (chance 0.5, like DPO's): of the candidate pairs with
    # A_i > A_j, the share where the implicit reward orders them the same way
    higher = a.unsqueeze(2) > a.unsqueeze(1)
    agree = higher & (br.unsqueeze(2) > br.unsqueeze(1))
    pair_acc = agree.sum((1, 2)).float() / higher.sum((1, 2)).clamp(min=1).float()
    metrics = detached(
        implicit_acc=pair_acc,
        implicit_reward=br,
        implicit_reward_abs=br.abs(),
        advantage_term=(a * br).sum(dim=1),
        model_err=e.model,
        ref_err=check_groups(e.ref, None, "ref"),
    )
    return per_prompt.mean(), metrics
