"""PickScore (Kirstain et al., 2023): a CLIP-H fine-tuned on Pick-a-Pic human preferences.

score = logit_scale · cos(image, prompt), as in the official README (≈ 100·cos; only
differences between images of the same prompt are meaningful). The model repository ships no
processor: tokenizer and image settings come from the CLIP-H repository it was tuned from.
"""

from __future__ import annotations

from torch import Tensor

from diffpref.config import RewardSource
from diffpref.rewards.clipbase import ClipReward


class PickScore(ClipReward):
    name = "pickscore"
    DEFAULT_SOURCE = RewardSource(
        model="yuvalkirstain/PickScore_v1", processor="laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    )

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.clip.logit_scale * self.clip.cosine(images, prompts)
