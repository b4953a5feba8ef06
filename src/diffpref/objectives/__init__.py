"""Preference objectives as small pure functions over denoising errors.

``LOSSES`` names the ``loss:`` values ``params.yaml`` may use; each is the module
``diffpref.objectives.<loss>``, imported when asked for, so that a training job's code
dependencies hold its own objective's module and not every other one
(:mod:`diffpref.config.dag`). Every module exposes ``Params`` (with a ``labels`` field naming
the label file it trains on), ``NEEDS_REFERENCE`` and ``loss``. Pairwise/listwise/pointwise
losses take ``loss(Errors, Params)``; the soft-token objectives (``softrepa``, ``agsm``) take the
tensors they need (see their docstrings). :mod:`~diffpref.objectives.rethinking` is not a loss
but hooks (timestep sampler, reward scale, reference schedule) for the pairwise losses.
"""

from __future__ import annotations

import importlib
from types import ModuleType

LOSSES = ("dpo", "mapo", "smpo", "lair", "kto", "sft", "softrepa", "agsm")


def module_name(loss: str) -> str:
    """The module of the registered loss ``loss``; ``KeyError`` naming the known ones."""
    if loss not in LOSSES:
        raise KeyError(f"unknown loss {loss!r}; known losses: {', '.join(sorted(LOSSES))}")
    return f"diffpref.objectives.{loss}"


def get(loss: str) -> ModuleType:
    """The objective module registered as ``loss``."""
    return importlib.import_module(module_name(loss))
