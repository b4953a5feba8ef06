"""Small CNNs on 16x16 canvas cells, shared by the world's judges, and how they are saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class CellCNN(nn.Module):
    """conv-BN-ReLU stack, 16x16 -> 4x4, then a linear head with ``n_out`` outputs."""

    def __init__(self, n_out: int, width: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_block(1, w),
            *_block(w, w),
            nn.MaxPool2d(2),
            *_block(w, 2 * w),
            *_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_block(2 * w, 4 * w),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w * 16, n_out))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [N,1,16,16] in [0,1] -> logits [N,n_out]."""
        return self.head(self.features(x * 2.0 - 1.0))


class CellLeNet(nn.Module):
    """A LeNet-style net of another design than :class:`CellCNN` (two 5x5 convolutions with
    GELU and average pooling, an MLP head), so that the independent judge does not share the
    label reward's architecture, and with it its blind spots. Batch norm: without it the net
    underfit (0.79 on its own training items and held-out ones alike; 0.85 with it)."""

    def __init__(self, n_out: int, width: int = 32, dropout: float = 0.3) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 5, padding=2, bias=False),
            nn.BatchNorm2d(w),
            nn.GELU(),
            nn.AvgPool2d(2),
            nn.Conv2d(w, 2 * w, 5, padding=2, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.GELU(),
            nn.AvgPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * w * 16, 4 * w),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * w, n_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [N,1,16,16] in [0,1] -> logits [N,n_out]."""
        return self.head(self.features(x - 0.5))


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
