"""Image-quality reward of the embedded world: cell realism and cleanliness, prompt-blind.

A different signal from fidelity (as an aesthetic / PickScore model is to a GenEval
detector): a small discriminator tells real Fashion-MNIST item cells and clean empty cells
from degraded ones (blur, noise, ghosted blends, scrambled parts, textured blobs, dirty
backgrounds). The canvas score is the geometric mean over its cells of p(real), times a soft
"shows at least one item" factor so a blank canvas cannot win.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from diffpref.world.nets import CellCNN, load_config, load_state, save_module
from diffpref.world.render import split_cells
from diffpref.world.spec import NUM_CELLS

OCCUPIED_THRESHOLD = 0.2  # top-4 brightness above which a cell shows something
OCCUPIED_TEMPERATURE = 0.04


class QualityReward(torch.nn.Module):
    """``score(images, prompts) -> [B]`` in [0,1]; ignores the prompts."""

    name = "quality"

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.discriminator = CellCNN(1, width=width)
        self.eval()

    def cell_logits(self, cells: Tensor) -> Tensor:
        """Real-vs-degraded logits ``[N]`` for cells ``[N,1,16,16]``."""
        return self.discriminator(cells)[:, 0]

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str] | None = None) -> Tensor:
        images = images.to(next(self.parameters()).device).float().clamp(0, 1)
        cells = split_cells(images)
        b = cells.shape[0]
        logit = self.cell_logits(cells.reshape(b * NUM_CELLS, *cells.shape[2:]))
        realism = F.logsigmoid(logit).reshape(b, NUM_CELLS).mean(1).exp()
        level = cells.flatten(2).topk(4, dim=2).values.mean(2)
        occupied = torch.sigmoid((level - OCCUPIED_THRESHOLD) / OCCUPIED_TEMPERATURE)
        any_item = 1 - (1 - occupied).prod(1)
        return realism * any_item

    def save(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        save_module(self, Path(directory), {"kind": "quality", "width": self.width}, dtype)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> QualityReward:
        cfg = load_config(Path(directory))
        model = cls(width=int(cfg["width"]))
        load_state(model, Path(directory))
        return model.to(device).eval()
