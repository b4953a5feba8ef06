"""CLIP score (Hessel et al., 2021) as torchmetrics computes it: ``100 · max(cos, 0)``.

OpenAI CLIP ViT-L/14 by default; implemented on transformers directly because torchmetrics
1.9's ``CLIPScore`` breaks on transformers 5.
"""

from __future__ import annotations

from torch import Tensor

from diffpref.config import RewardSource
from diffpref.rewards.clipbase import ClipReward


class ClipScore(ClipReward):
    name = "clip_score"
    DEFAULT_SOURCE = RewardSource(model="openai/clip-vit-large-patch14")

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return 100 * self.clip.cosine(images, prompts).clamp(min=0)
