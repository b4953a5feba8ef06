"""Diffusion-KTO — Li et al., arXiv 2404.04465 (NeurIPS 2024); code
``jacklishufan/diffusion-kto`` (``train_kto_sd_v1.5.py``).

Per-image binary labels (desirable / undesirable), no pairs. With per-sample errors (**mean**
over latent elements) of the model and the frozen reference on the same ``(t, ε)``::

    g = mse_ref − mse_θ                         # implicit reward of each image
    z = clamp(mean_batch(g), min=0)             # reference point, detached
    h = σ(sign · β · (g − z)),  sign = +1 desirable, −1 undesirable
    L = mean(w_y · (1 − h)),   w_y = λ_D or λ_U

``z`` is a baseline, not a target: the official code detaches it (``bce_offset=none``) so the
gradient only moves each image's own ``g``. ``Errors.beta_scale`` multiplies β.

Multi-process batch: ``z`` is the mean of ``g`` over the **global** batch, every process's
images (one all-reduce, :func:`~diffpref.distributed.global_mean`), as the official code
all-reduces it over GPUs; the outer mean is over this process's images, and the loop's
gradient average over equal shares makes it the global mean. So N processes compute the loss
of one process over the whole batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from diffpref.distributed import global_mean
from diffpref.objectives.base import (
    Errors,
    Metrics,
    ParamsBase,
    check_groups,
    detached,
    effective_beta,
    per_sample,
)
from diffpref.settings import Float

NEEDS_REFERENCE = True


class Params(ParamsBase):
    labels: Literal["pointwise"] = "pointwise"
    beta: Float = Field(gt=0, description="no default: official beta_dpo 1000")
    lambda_d: Float = Field(1.0, ge=0, description="weight of desirable images")
    lambda_u: Float = Field(1.0, ge=0, description="weight of undesirable images")


def loss(e: Errors, p: Params) -> tuple[Tensor, Metrics]:
    m = check_groups(e.model, 1, "model")[:, 0]
    r = check_groups(e.ref, 1, "ref")[:, 0].detach()
    good = per_sample(e.desirable, m.shape[0], "desirable").bool()
    g = r - m
    z = global_mean(g).clamp(min=0)
    sign = torch.where(good, 1.0, -1.0).to(g.dtype)
    h = torch.sigmoid(sign * effective_beta(p.beta, e, g) * (g - z))
    w = torch.where(good, p.lambda_d, p.lambda_u).to(g.dtype)
    value = (w * (1 - h)).mean()
    metrics = detached(
        implicit_acc=(sign * (g - z) > 0).float(),
        reference_point=z,
        implicit_reward=g,
        model_err=m,
        ref_err=r,
    )
    return value, metrics
