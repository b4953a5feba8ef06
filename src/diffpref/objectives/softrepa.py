"""SoftREPA — Lee, Cha, Kim, Ye, "Aligning Text to Image in Diffusion Models is Easier Than You
Think", arXiv 2503.08250 (NeurIPS 2025); code ``softrepa/SoftREPA`` (``train.py``).

The backbone is frozen; only a few soft text tokens are trained, contrastively over the
image–caption pairs of a batch, with the denoising error as the (negative) logit. One ``t``
and **one noise tensor shared by every pair**; ``err[i, j]`` = per-sample **mean** over latent
elements of ``(pred(x_t^i, c^j) − target)²``::

    logits[i, j] = scale · exp(−err[i, j] / temp)          # scale 4.0, temp 0.07 (fixed)
    L = CE(logits, targets = diagonal) + dweight · mean_i err[i, i]

The code declares ``scale``/``temp`` as ``nn.Parameter`` but never gives them to the optimiser,
so they are constants here. The paper writes a timestep-dependent τ(t); the code uses 0.07.

Signature: ``loss(err_matrix [B_img, B_txt], p, first=0) -> (loss, metrics)``; caption
``first + i`` belongs to image row ``i`` (the other captions are negatives only).

Multi-process batch: each process holds a block of image rows (images ``first, first+1, ...``
of the global batch) against **every** caption of the global batch, so the negatives span the
global batch. Both terms are per image row, and the loss is their mean over rows; the loop's
gradient average over equal blocks makes it the single-process loss of the whole batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
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
TOKEN_SETS = 1  # one soft-token set for every (image, caption) pair


class Params(ParamsBase):
    labels: Literal["captions"] = "captions"
    n_tokens: Int = Field(4, ge=1, le=256, description="soft tokens per conditioned block")
    scale: Float = Field(4.0, gt=0, description="logit scale")
    temp: Float = Field(0.07, gt=0, description="temperature on the denoising error")
    dweight: Float = Field(10.0, ge=0, description="weight of the matched-pair denoising loss")


def error_matrix(pred: Tensor, target: Tensor) -> Tensor:
    """``[B_img, B_txt]`` errors from ``pred [B_img, B_txt, C, H, W]`` and a broadcastable
    target (the shared noise ``[C, H, W]``)."""
    return denoising_error(pred, target, n_batch_dims=2)


def loss(err_matrix: Tensor, p: Params, first: int = 0) -> tuple[Tensor, Metrics]:
    if err_matrix.ndim != 2 or first + err_matrix.shape[0] > err_matrix.shape[1]:
        shape = tuple(err_matrix.shape)
        raise ValueError(f"err_matrix must be [B_img, B_txt >= first + B_img], got {shape}")
    b, b_txt = err_matrix.shape
    logits = p.scale * torch.exp(-err_matrix / p.temp)
    targets = torch.arange(b, device=err_matrix.device) + first
    matched = matched_mask(b, b_txt, first, err_matrix.device)
    pos = err_matrix[matched]
    value = F.cross_entropy(logits, targets) + p.dweight * pos.mean()
    metrics = detached(
        contrastive_acc=(logits.argmax(dim=1) == targets).float(),
        pos_err=pos,
        neg_err=err_matrix[~matched] if b_txt > 1 else pos.new_zeros(()),
    )
    return value, metrics


def caption_loss(
    pred: Tensor, ema_pred: Tensor | None, target: Tensor, p: Params, first: int = 0
) -> tuple[Tensor, Metrics]:
    """The training loop's soft-token entry point (SoftREPA keeps no EMA tokens)."""
    return loss(error_matrix(pred, target), p, first)
