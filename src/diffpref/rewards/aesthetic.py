"""LAION aesthetic predictor v2 ("improved-aesthetic-predictor"): a linear MLP head on
L2-normalised CLIP ViT-L/14 image embeddings, trained to regress AVA-style 1-10 ratings.

The prompt is ignored. The head's weights (``sac+logos+ava1-l14-linearMSE.pth`` in
christophschuhmann/improved-aesthetic-predictor, also shipped by the Diffusion-DPO and
Flow-GRPO repositories) are not on the model hub: point ``rewards.sources.aesthetic.head`` at
the downloaded file (``.pth`` state dict or ``.safetensors``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from diffpref.config import RewardSource
from diffpref.io import InputError, load_tensors, load_weights
from diffpref.rewards.clipbase import ClipEncoder

HEAD_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
    "sac+logos+ava1-l14-linearMSE.pth"
)


class AestheticHead(nn.Module):
    """The original ``MLP``: Linear layers with dropout and no activations; same state-dict
    keys (``layers.0`` ... ``layers.7``) so the released file loads strictly."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def load_head(path: str | Path) -> AestheticHead:
    """The head from ``.safetensors``, or from a ``.pth`` state dict unpickled with
    ``weights_only`` (a file carrying anything but tensors is refused, not run)."""
    path = Path(path)
    key = "rewards.sources.aesthetic.head"
    if not path.is_file():
        raise InputError(f"{key}: {path}: no such file (download {HEAD_URL})")
    state = load_tensors(path, key) if path.suffix == ".safetensors" else load_weights(path, key)
    if not isinstance(state, dict) or "layers.0.weight" not in state:
        raise InputError(f"{key}: {path}: not an aesthetic MLP head (no 'layers.0.weight' key)")
    head = AestheticHead(state["layers.0.weight"].shape[1])
    head.load_state_dict(state)
    return head.eval()


class Aesthetic:
    name = "aesthetic"
    DEFAULT_SOURCE = RewardSource(model="openai/clip-vit-large-patch14")

    def __init__(self, clip: ClipEncoder, head: AestheticHead):
        dim = clip.model.config.projection_dim
        if head.layers[0].in_features != dim:
            raise ValueError(
                f"aesthetic head expects {head.layers[0].in_features}-d embeddings; "
                f"the CLIP model gives {dim}-d (the head needs CLIP ViT-L/14)"
            )
        self.clip, self.head = clip, head.to(clip.device)

    @classmethod
    def load(cls, source: RewardSource, device: torch.device, dtype: torch.dtype) -> Aesthetic:
        if source.head is None:
            raise ValueError(
                "reward 'aesthetic' needs rewards.sources.aesthetic.head: the MLP head weights "
                f"(download {HEAD_URL})"
            )
        return cls(ClipEncoder(source, device, dtype), load_head(source.head))

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.head(self.clip.image_embeds(images)).squeeze(-1)
