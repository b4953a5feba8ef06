"""Preference objectives as small pure functions over denoising errors.

``OBJECTIVES`` maps the ``loss:`` name used in ``params.yaml`` to its module. Every module
exposes ``Params`` (pydantic, ``extra="forbid"``, with a ``labels`` field naming the label file
it trains on), ``NEEDS_REFERENCE`` and ``loss``. Pairwise/listwise/pointwise losses take
``loss(Errors, Params)``; the soft-token objectives (``softrepa``, ``agsm``) take the tensors
they need (see their docstrings). :mod:`~diffpref.objectives.rethinking` is not a loss but
hooks (timestep sampler, reward scale, reference schedule) for the pairwise losses.
"""

from __future__ import annotations

from types import ModuleType

from diffpref.objectives import agsm, dpo, kto, lair, mapo, rethinking, sft, smpo, softrepa
from diffpref.objectives.base import Errors, denoising_error

OBJECTIVES: dict[str, ModuleType] = {
    "dpo": dpo,
    "mapo": mapo,
    "smpo": smpo,
    "lair": lair,
    "kto": kto,
    "sft": sft,
    "softrepa": softrepa,
    "agsm": agsm,
}


def get(name: str) -> ModuleType:
    """The objective module registered as ``name``; ``KeyError`` naming the known ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        known = ", ".join(sorted(OBJECTIVES))
        raise KeyError(f"unknown loss {name!r}; known losses: {known}") from None


__all__ = ["OBJECTIVES", "Errors", "denoising_error", "get", "rethinking"]
