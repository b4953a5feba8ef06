"""The one interface every reward model implements, plus shared helpers for saving them.

Rewards take plain images and prompt strings, so the same stages score candidates from the
embedded world or from Stable Diffusion; anything structured (e.g. a GenEval-style spec) is
recovered from the prompt by the reward itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


@runtime_checkable
class RewardModel(Protocol):
    """``score(images [B,C,H,W] float in [0,1], prompts) -> [B]`` float; higher is better."""

    name: str

    def score(self, images: Tensor, prompts: list[str]) -> Tensor: ...


def save_module(
    module: nn.Module, directory: Path, config: dict[str, Any], dtype: torch.dtype = torch.float32
) -> None:
    """Write ``model.safetensors`` (in ``dtype``) and ``config.json`` to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in module.state_dict().items()
    }
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_config(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "config.json").read_text())


def load_state(module: nn.Module, directory: Path) -> None:
    """Load ``model.safetensors`` into ``module``, casting to the module's float dtype."""
    state = load_file(str(Path(directory) / "model.safetensors"))
    ref = module.state_dict()
    module.load_state_dict(
        {k: (v.to(ref[k].dtype) if v.is_floating_point() else v) for k, v in state.items()}
    )


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
