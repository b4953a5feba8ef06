"""ImageReward (Xu et al., 2023): BLIP ViT-L + a text encoder cross-attending to the image,
an MLP head and fixed standardisation (mean 0.16717, std 1.03334).

The ``image-reward`` package is an optional extra (it pins timm 0.6.13, needs torchvision and
the ``clip`` module of clip-anytorch, and imports transformers internals that moved in
recent releases), so install it in a separate environment. Scoring reuses the package's
model but batches (prompt, image) pairs with device-side preprocessing instead of its
one-PIL-image-at-a-time ``score``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffpref.config import RewardSource
from diffpref.rewards.base import require
from diffpref.rewards.clipbase import Preprocess

TEXT_LENGTH = 35  # ImageReward's tokenizer max_length


class ImageReward:
    name = "imagereward"
    DEFAULT_SOURCE = RewardSource(model="ImageReward-v1.0")

    def __init__(self, model, device: torch.device):
        self.model, self.device = model, device
        self.preprocess = Preprocess()  # 224 px, bicubic, OpenAI CLIP mean/std

    @classmethod
    def load(cls, source: RewardSource, device: torch.device, dtype: torch.dtype) -> ImageReward:
        rm = require("ImageReward", "imagereward", "imagereward")
        # BLIP stays float32: the package was only validated there
        return cls(rm.load(source.model, device=str(device)).eval(), device)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        blip = self.model.blip
        text = blip.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=TEXT_LENGTH,
            return_tensors="pt",
        ).to(self.device)
        emb = blip.visual_encoder(self.preprocess(images.to(self.device)))
        atts = torch.ones(emb.shape[:-1], dtype=torch.long, device=self.device)
        out = blip.text_encoder(
            text.input_ids,
            attention_mask=text.attention_mask,
            encoder_hidden_states=emb,
            encoder_attention_mask=atts,
            return_dict=True,
        )
        reward = self.model.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return (reward - self.model.mean) / self.model.std
