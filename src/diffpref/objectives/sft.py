"""Supervised fine-tuning on preferred images — the ``--sft`` baseline of Diffusion-DPO
(arXiv 2311.12908, official ``train.py``).

``L = mean(mse_θ)`` over the winners handed in, with the per-sample error a **mean** over
latent elements: the plain diffusion loss, no reference model, no loser. It separates what a
preference objective gains from the preference itself from what it gains by simply training
on better images. ``Errors.model`` may be ``[B, 1]`` (winners only) or any ``[B, G]``; every
entry is averaged, so the loop decides which images are "winners".
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from diffpref.objectives.base import Errors, Metrics, ParamsBase, check_groups, detached

NEEDS_REFERENCE = False


class Params(ParamsBase):
    labels: Literal["winners"] = "winners"


def loss(e: Errors, p: Params) -> tuple[Tensor, Metrics]:
    m = check_groups(e.model, None, "model")
    value = m.mean()
    return value, detached(model_err=m)
