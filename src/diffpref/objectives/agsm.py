"""AGSM — Alignment-Guided Score Matching, Lee, Hong, Kwon, Ye, arXiv 2605.30038 (ICML 2026),
Algorithm 1 (diffusion form, Eqs. 15/17). No official code yet.

Soft tokens as in SoftREPA but two sets: ψ+ on matched pairs (diagonal ``i = j``), ψ− on
mismatched ones, with EMA copies ψ̂± giving the guidance. One ``t`` and one ``ε`` for all
pairs. For image ``i`` and captions ``j``::

    w[i, j]   = softmax_j( −err(ema[i, j], ε) / T_pl )      # Plackett–Luce over ALL captions
    Δ[i, j]   = ema[i, j] − Σ_k w[i, k] · ema[i, k]
    tgt[i, j] = ε + γ+ · Ã · Δ[i, j]   if i = j   else   ε − γ− · Ã · Δ[i, j]
    L         = mean_{i,j} mean_{C,H,W} (pred[i, j] − sg(tgt[i, j]))²

Ã(t) = 1 (the paper picks λ_t so). The target is built from EMA predictions and is a fixed
regression target (stop-gradient): positives are pulled toward the reward-increasing direction,
negatives pushed by a *bounded* correction, which is what stops SoftREPA's negative errors from
growing without limit.

``[I]`` choices: the paper's reward is ``−‖ema − ε‖²`` (a **sum** over elements); with our
per-element **mean** ``err`` the equivalent temperature is ``T_pl = 1/(C·H·W)``, which is what
``pl_temperature=None`` uses; a float sets it explicitly in mean-error units. The outer
reduction is a mean over pairs and elements instead of the paper's sum (only rescales the lr).
EMA decay is not stated in the paper; 0.99 follows a third-party reimplementation.

Signature: ``loss(pred, ema_pred, noise, p, first=0) -> (loss, metrics)`` with ``pred`` and
``ema_pred`` ``[B_img, B_txt, C, H, W]`` (ψ+ on the matched pairs, caption ``first + i`` for
image row ``i``, ψ− elsewhere; ``pred`` with grad, ``ema_pred`` without) and ``noise``
``[C, H, W]`` or anything broadcastable to ``pred``.

Multi-process batch: each process holds a block of image rows (images ``first, first+1, ...``
of the global batch) against **every** caption of the global batch, so the Plackett–Luce
softmax runs over all the batch's captions. Weights, Δ and targets are per image row and the
loss is a mean over equal-size rows of pairs, so the loop's gradient average over equal
blocks makes it the single-process loss of the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from diffpref.objectives.base import (
    Metrics,
    ParamsBase,
    denoising_error,
    detached,
    matched_mask,
)
from diffpref.settings import Float, Int

NEEDS_REFERENCE = False
TOKEN_SETS = 2  # ψ+ on matched pairs, ψ− on mismatched ones, each with an EMA copy


class Params(ParamsBase):
    labels: Literal["captions"] = "captions"
    n_tokens: Int = Field(4, ge=1, le=256, description="soft tokens per set (ψ+ and ψ− each)")
    gamma_pos: Float = Field(1.0, ge=0, description="γ+ (paper: 1; SD3 1)")
    gamma_neg: Float = Field(1.0, ge=0, description="γ− (paper: 1; SD3 0.1)")
    ema_decay: Float = Field(0.99, ge=0, lt=1, description="[I] decay of the EMA tokens ψ̂±")
    pl_temperature: Float | None = Field(
        None, gt=0, description="PL softmax temperature on mean errors; None = paper (sum)"
    )


def loss(
    pred: Tensor,
    ema_pred: Tensor,
    noise: Tensor,
    p: Params,
    a_tilde: float = 1.0,
    first: int = 0,
) -> tuple[Tensor, Metrics]:
    if pred.ndim < 3 or pred.shape != ema_pred.shape or pred.shape[1] < first + pred.shape[0]:
        raise ValueError(
            f"pred/ema_pred must be equal [B_img, B_txt >= first + B_img, ...], got "
            f"{tuple(pred.shape)} / {tuple(ema_pred.shape)}"
        )
    b_img, b_txt = pred.shape[:2]
    ema = ema_pred.detach()
    eps = noise.detach().expand_as(ema)
    with torch.no_grad():
        err = denoising_error(ema, eps, n_batch_dims=2)  # [B_img, B_txt]
        temp = p.pl_temperature if p.pl_temperature is not None else 1.0 / ema[0, 0].numel()
        w = torch.softmax(-err / temp, dim=1)
        guided = (w.reshape(b_img, b_txt, *[1] * (ema.ndim - 2)) * ema).sum(dim=1, keepdim=True)
        delta = ema - guided
        pos = matched_mask(b_img, b_txt, first, pred.device)
        sign = torch.where(pos, p.gamma_pos, -p.gamma_neg).to(ema.dtype)
        target = eps + (a_tilde * sign).reshape(b_img, b_txt, *[1] * (ema.ndim - 2)) * delta
    per_pair = denoising_error(pred, target, n_batch_dims=2)
    value = per_pair.mean()
    metrics = detached(
        pl_weight_matched=w[pos],
        pl_acc=(w.argmax(dim=1) == torch.arange(b_img, device=w.device) + first).float(),
        delta_abs=delta.abs(),
        pos_err=per_pair[pos],
        neg_err=per_pair[~pos] if bool((~pos).any()) else per_pair.new_zeros(()),
    )
    return value, metrics


@torch.no_grad()
def ema_update(ema_params: Iterable[Tensor], params: Iterable[Tensor], decay: float = 0.99) -> None:
    """In place ``ema ← decay·ema + (1 − decay)·param`` for each pair of tensors."""
    ema_list, param_list = list(ema_params), list(params)
    if len(ema_list) != len(param_list):
        raise ValueError(f"{len(ema_list)} EMA tensors for {len(param_list)} parameters")
    for e, q in zip(ema_list, param_list, strict=True):
        e.mul_(decay).add_(q.detach().to(e.dtype), alpha=1 - decay)


def caption_loss(
    pred: Tensor, ema_pred: Tensor | None, target: Tensor, p: Params, first: int = 0
) -> tuple[Tensor, Metrics]:
    """The training loop's soft-token entry point; ``target`` is the (broadcast) noise."""
    if ema_pred is None:
        raise ValueError("AGSM needs the EMA tokens' predictions")
    return loss(pred, ema_pred, target, p, first=first)
