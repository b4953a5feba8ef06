"""Types and helpers shared by every objective.

The training loop turns predictions into per-sample denoising errors once
(:func:`denoising_error`, a **mean** over the latent elements, as every official code base
does) and hands them to a loss as an :class:`Errors`. Because the reduction is a mean and not
the papers' squared norm (a sum), every β below is in "mean-over-elements" units: the official
Diffusion-DPO code's β=5000 is meaningful only with this convention.

With ``train.num_processes: N`` every process hands a loss its equal share of the global batch
and the loop averages the gradients, so a loss that is a mean of per-unit terms (DPO, MaPO,
SmPO, SFT) needs nothing more. A loss that reduces *across* the batch says in its docstring
what a multi-process batch means for it (KTO, LAIR, SoftREPA, AGSM).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffpref.settings import Settings


@dataclass
class Errors:
    """Per-sample denoising errors the training loop hands to a pairwise/listwise/pointwise loss."""

    model: Tensor  # [B, G] mean over (C,H,W) of (pred - target)^2 for the trained model;
    # G=2 pairs (col 0 winner, col 1 loser), G=K lists, G=1 pointwise
    ref: Tensor | None = None  # [B, G] same for the reference model (no_grad); None if ref-free
    t: Tensor | None = None  # [B] DDPM timestep index shared within a group
    beta_scale: Tensor | None = None  # [B] multiplier on beta (Rethinking-DPO's λ(t)); None = 1
    prob: Tensor | None = None  # [B] SmPO smoothed probability that column 0 is preferred
    advantage: Tensor | None = None  # [B, G] LAIR centred advantage weights
    desirable: Tensor | None = None  # [B] bool, KTO labels


class ParamsBase(Settings):
    """Hyper-parameters of one objective; unknown keys are an error, not silently ignored."""


Metrics = dict[str, Tensor]


def matched_mask(
    b_img: int, b_txt: int, first: int = 0, device: torch.device | None = None
) -> Tensor:
    """``[B_img, B_txt]`` bool, True where caption ``first + i`` meets image row ``i``: the
    rows are images ``first, first+1, ...`` of a batch whose captions are the columns."""
    rows = torch.arange(b_img, device=device).unsqueeze(1)
    return torch.arange(b_txt, device=device) == rows + first


def denoising_error(pred: Tensor, target: Tensor, n_batch_dims: int = 1) -> Tensor:
    """Per-sample mean of ``(pred - target)^2`` over all but the leading ``n_batch_dims`` dims.

    ``n_batch_dims=2`` turns ``[B, G, C, H, W]`` predictions into the ``[B, G]`` errors of
    :class:`Errors` (or ``[B_img, B_txt]`` matrices for the soft-token objectives). ``target``
    broadcasts against ``pred`` (e.g. one noise tensor shared by a pair).
    """
    sq = (pred - target).pow(2)
    if sq.ndim <= n_batch_dims:
        raise ValueError(f"need more than {n_batch_dims} dims, got shape {tuple(sq.shape)}")
    return sq.flatten(start_dim=n_batch_dims).mean(dim=-1)


def check_groups(x: Tensor | None, g: int | None, name: str) -> Tensor:
    """``x`` as a ``[B, G]`` tensor (``G == g`` when given), or a clear error."""
    if x is None:
        raise ValueError(f"Errors.{name} is required by this objective")
    if x.ndim != 2 or (g is not None and x.shape[1] != g):
        want = f"[B, {g}]" if g is not None else "[B, G]"
        raise ValueError(f"Errors.{name} must be {want}, got shape {tuple(x.shape)}")
    return x


def per_sample(x: Tensor | None, b: int, name: str) -> Tensor:
    """``x`` as a ``[B]`` tensor, or a clear error."""
    if x is None:
        raise ValueError(f"Errors.{name} is required by this objective")
    if x.shape != (b,):
        raise ValueError(f"Errors.{name} must be [{b}], got shape {tuple(x.shape)}")
    return x


def effective_beta(beta: float, e: Errors, like: Tensor) -> Tensor:
    """``[B]`` per-sample β: ``beta * e.beta_scale`` (the Rethinking-DPO λ(t) hook), else β.

    The scale is detached: it is a schedule, not something to optimise.
    """
    b = like.shape[0]
    if e.beta_scale is None:
        return torch.full((b,), float(beta), dtype=like.dtype, device=like.device)
    scale = per_sample(e.beta_scale, b, "beta_scale").detach()
    return float(beta) * scale.to(dtype=like.dtype, device=like.device)


def detached(**metrics: Tensor) -> Metrics:
    """Scalar metrics, detached so logging never keeps a graph alive."""
    return {k: v.detach().float().mean() for k, v in metrics.items()}
