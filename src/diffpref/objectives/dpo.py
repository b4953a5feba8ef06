"""Diffusion-DPO — Wallace et al., arXiv 2311.12908 (CVPR 2024).

With per-sample errors ``m = mse_θ``, ``r = mse_ref`` (**mean** over latent elements), winner
``w`` = column 0, loser ``l`` = column 1, all four sharing one ``(t, ε)``::

    logits = (r_w − r_l) − (m_w − m_l)        # > 0 when θ improved more on w than on l
    inside = 0.5 · β · logits                 # = −0.5·β·[(m_w − m_l) − (r_w − r_l)]
    sigmoid:  L = −log σ(inside)                       (official train.py, paper Supp. Eq. 46)
    hinge:    L = relu(1 − inside)
    ipo:      L = (inside − 1/(2·τ_ipo))²

averaged over pairs. The 0.5 is the official code's (paper Supp. S4); the diffusers LoRA script
drops it and doubles nothing else, so its ``beta_dpo=2500`` equals our β=5000. Keeping the
official form lets β values be copied from the paper and launchers unchanged.

``[I]`` hinge and ipo use the *same* scaled quantity ``inside`` (i.e. diffusers'
``beta_dpo·logits`` with ``beta_dpo = β/2``), so one β means the same implicit-reward scale for
all three variants. The diffusers ``ipo`` branch references an undefined ``args.beta`` and
crashes; we implement IPO (Azar et al., arXiv 2310.12036) treating ``inside`` as the log-ratio
difference ``h`` that IPO regresses to ``1/(2τ)``. ``τ_ipo`` defaults to 0.5 (target margin 1,
σ(1)≈0.73) so that the gradient at initialisation is comparable to the sigmoid's; the IPO
paper sweeps τ, nothing for diffusion is published.

β is per sample: ``β·Errors.beta_scale`` when given, which is how Rethinking-DPO's
reward-scale schedule λ(t) plugs in (see :mod:`diffpref.objectives.rethinking`).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
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
from diffpref.objectives.rethinking import Params as RethinkingParams
from diffpref.settings import Float

NEEDS_REFERENCE = True

Variant = Literal["sigmoid", "hinge", "ipo"]


class Params(ParamsBase):
    labels: Literal["pairwise"] = "pairwise"
    beta: Float = Field(
        gt=0, description="no default, units differ: official launchers 5000, paper SD1.5 2000"
    )
    variant: Variant = Field("sigmoid", description="sigmoid (DPO) | hinge | ipo")
    ipo_tau: Float = Field(0.5, gt=0, description="IPO regularisation, target 1/(2·tau)")
    rethinking: RethinkingParams | None = Field(
        None, description="Rethinking-DPO reference update + timestep hooks"
    )


def pair_errors(e: Errors) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(m_w, m_l, r_w, r_l)``, each ``[B]``, with the reference detached."""
    m = check_groups(e.model, 2, "model")
    r = check_groups(e.ref, 2, "ref").detach()
    if r.shape != m.shape:
        raise ValueError(f"Errors.ref {tuple(r.shape)} != Errors.model {tuple(m.shape)}")
    return m[:, 0], m[:, 1], r[:, 0], r[:, 1]


def pair_logits(e: Errors) -> Tensor:
    """``[B]`` unscaled ``(r_w − r_l) − (m_w − m_l)`` (diffusers' ``ref_diff − model_diff``)."""
    m_w, m_l, r_w, r_l = pair_errors(e)
    return (r_w - r_l) - (m_w - m_l)


def preference_loss(inside: Tensor, variant: Variant = "sigmoid", ipo_tau: float = 0.5) -> Tensor:
    """Per-pair loss of the scaled margin ``inside`` (``[B]`` in, ``[B]`` out)."""
    if variant == "sigmoid":
        return -F.logsigmoid(inside)
    if variant == "hinge":
        return F.relu(1.0 - inside)
    if variant == "ipo":
        return (inside - 1.0 / (2.0 * ipo_tau)).pow(2)
    raise ValueError(f"unknown DPO variant {variant!r}")


def pair_metrics(e: Errors, inside: Tensor) -> Metrics:
    """What every pairwise loss logs: implicit accuracy, margin, and the four mean errors."""
    m_w, m_l, r_w, r_l = pair_errors(e)
    return detached(
        implicit_acc=(inside > 0).float(),
        reward_margin=inside,
        model_err_w=m_w,
        model_err_l=m_l,
        ref_err_w=r_w,
        ref_err_l=r_l,
    )


def loss(e: Errors, p: Params) -> tuple[Tensor, Metrics]:
    logits = pair_logits(e)
    inside = 0.5 * effective_beta(p.beta, e, logits) * logits
    value = preference_loss(inside, p.variant, p.ipo_tau).mean()
    return value, pair_metrics(e, inside)
