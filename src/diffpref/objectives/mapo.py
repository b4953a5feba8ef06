"""MaPO — Margin-aware Preference Optimization, reference-free, arXiv 2406.06424
(AAAI 2026 = arXiv v2); released code ``mapo-t2i/mapo`` (``utils.py::compute_loss``, = v1).

Only the trained model's per-sample errors (**mean** over latent elements) on the winner
``m_w`` and loser ``m_l`` (shared ``t``, ``ε``); no reference model, hence its lower cost. With
the bounded link ``g(x) = x/(e^x − 1)`` (``g(0) = 1``, decreasing, in ``(0, 1]`` for ``x ≥ 0``):

* ``param="code"`` (released code, checkpoint ``mapo-t2i/mapo-beta``)::

      L = mean(m_w) − β_mapo · mean(log σ(T · [g(s·m_w) − g(s·m_l)]))
      β_mapo = 0.1, s = snr_value = 0.5, T = num_train_timesteps = 1000

* ``param="paper"`` (v2, Eqs. 9–11)::

      L = mean(m_w) + (1/β) · mean(−log σ(φ_β(m_w) − φ_β(m_l))),   φ_β(ℓ) = g(β·ℓ)
      β = 8 (general preference)

``[I]`` The v2 PDF text of Eq. 11 is garbled; we read ``φ_β(ℓ) = βℓ/(e^{βℓ} − 1)`` (bounded in
(0,1) as the paper says, and the code's form). The two parameterisations are not numerically
equivalent (the code has an extra ×T inside the sigmoid), hence the switch.
``Errors.beta_scale`` (a reference-based reward scale) is ignored: MaPO has no implicit reward.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from diffpref.objectives.base import Errors, Metrics, ParamsBase, check_groups, detached
from diffpref.settings import Float, Int

NEEDS_REFERENCE = False

_SMALL = 1e-4


class Params(ParamsBase):
    labels: Literal["pairwise"] = "pairwise"
    param: Literal["code", "paper"] = Field("code", description="released code (v1) | paper v2")
    beta_mapo: Float = Field(0.1, ge=0, description="code: weight of the margin term")
    snr_value: Float = Field(0.5, gt=0, description="code: s inside g(s·mse)")
    num_train_timesteps: Int = Field(
        1000, ge=1, le=100_000, description="code: T scaling the log-odds"
    )
    beta: Float = Field(8.0, gt=0, description="paper: φ_β temperature, margin weight 1/β")


def link(x: Tensor) -> Tensor:
    """``g(x) = x/(e^x − 1)`` with ``g(0) = 1``, finite value and gradient for every ``x``.

    Uses ``g(x) = g(|x|) + relu(−x)`` and ``g(a) = a·e^{−a}/(1 − e^{−a})`` for ``a > 0``, so
    nothing overflows; near 0 the Taylor series ``1 − x/2 + x²/12`` avoids 0/0 (and, because
    the division only ever sees safe inputs, NaN gradients through ``where``).
    """
    small = x.abs() < _SMALL
    a = torch.where(small, torch.ones_like(x), x.abs())
    general = a * torch.exp(-a) / -torch.expm1(-a) + F.relu(-x)
    taylor = 1 - x / 2 + x * x / 12
    return torch.where(small, taylor, general)


def phi(err: Tensor, beta: float) -> Tensor:
    """Paper v2 score ``φ_β(ℓ) = βℓ/(e^{βℓ} − 1)``, in (0, 1) for ``ℓ > 0``."""
    return link(beta * err)


def loss(e: Errors, p: Params) -> tuple[Tensor, Metrics]:
    m = check_groups(e.model, 2, "model")
    m_w, m_l = m[:, 0], m[:, 1]
    if p.param == "code":
        arg = p.num_train_timesteps * (link(p.snr_value * m_w) - link(p.snr_value * m_l))
        margin = -F.logsigmoid(arg)
        value = m_w.mean() + p.beta_mapo * margin.mean()
    else:
        arg = phi(m_w, p.beta) - phi(m_l, p.beta)
        margin = -F.logsigmoid(arg)
        value = m_w.mean() + margin.mean() / p.beta
    metrics = detached(
        implicit_acc=(arg > 0).float(),
        reward_margin=arg,
        margin_loss=margin,
        model_err_w=m_w,
        model_err_l=m_l,
    )
    return value, metrics
