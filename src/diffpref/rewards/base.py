"""The one interface every reward model implements, and the optional-dependency import.

Rewards take plain images and prompt strings, so the same stages score candidates from the
embedded world or from Stable Diffusion; anything structured (e.g. a GenEval-style spec) is
recovered from the prompt by the reward itself.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class RewardModel(Protocol):
    """``score(images [B,C,H,W] float in [0,1], prompts) -> [B]`` float; higher is better."""

    name: str

    def score(self, images: Tensor, prompts: list[str]) -> Tensor: ...


def require(module: str, reward: str, extra: str) -> Any:
    """Import an optional reward dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"reward {reward!r} needs the optional dependency {module!r} ({e}); install it with "
            f"pip install 'diffpref[{extra}]', preferably in a separate environment "
            f"(see README 'Running on real models')"
        ) from None
