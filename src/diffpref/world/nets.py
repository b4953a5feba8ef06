"""Small CNNs on 16x16 canvas cells, shared by the world's reward models."""

from __future__ import annotations

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
