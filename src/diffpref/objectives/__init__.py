"""Preference objectives as small pure functions over denoising errors.

``LOSSES`` (:mod:`diffpref.registry`) names the ``loss:`` values ``params.yaml`` may use;
each is the module ``diffpref.objectives.<loss>``, imported when asked for, so that a training
job's code dependencies hold its own objective's module and not every other one
(:mod:`diffpref.config.dag`). Every module exposes ``Params`` (with a ``labels`` field naming
the label file it trains on), ``NEEDS_REFERENCE`` and ``loss``. Pairwise/listwise/pointwise
losses take ``loss(Errors, Params)``; the soft-token objectives (``softrepa``, ``agsm``) take the
tensors they need (see their docstrings). :mod:`~diffpref.objectives.rethinking` is not a loss
but hooks (timestep sampler, reward scale, reference schedule) for the pairwise losses.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from diffpref.registry import LOSSES, loss_module

__all__ = ["LOSSES", "get"]


def get(loss: str) -> ModuleType:
    """The objective module registered as ``loss`` (:data:`diffpref.registry.LOSSES`)."""
    return importlib.import_module(loss_module(loss))
