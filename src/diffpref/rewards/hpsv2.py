"""HPSv2.1 (Wu et al., 2023): an open_clip ViT-H/14 fine-tuned on human preference data.

score = cos(image, prompt) (no logit scale), as ``hpsv2.score``. The ``hpsv2`` package (its
vendored open_clip builds the model) is an optional extra: it pins pytest 7 and protobuf<4,
so install it in a separate environment. Unlike ``hpsv2.score``, which reloads the checkpoint
on every call and scores one image at a time, the checkpoint is loaded once and batches are
preprocessed on the device. The released checkpoint is a pickle: it is unpickled with
``weights_only`` (tensors only; a file carrying code is refused) unless
``rewards.sources.hpsv2.trust_pickle: true`` says the file is trusted.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from diffpref.config import RewardSource
from diffpref.io import load_weights
from diffpref.rewards.base import require
from diffpref.rewards.clipbase import Preprocess


def load_checkpoint(path: Path, trust_pickle: bool = False) -> dict:
    """The checkpoint's state (``{'state_dict': ...}`` or the state dict itself)."""
    if trust_pickle:  # the user vouches for the file: any objects in it are rebuilt
        return torch.load(path, map_location="cpu", weights_only=False)
    return load_weights(
        path,
        "rewards.sources.hpsv2.model",
        fix="if you trust its source, set rewards.sources.hpsv2.trust_pickle: true",
    )


class HPSv2:
    name = "hpsv2"
    DEFAULT_SOURCE = RewardSource(model="xswu/HPSv2")
    CHECKPOINT = "HPS_v2.1_compressed.pt"

    def __init__(self, model, tokenizer, device: torch.device, dtype: torch.dtype):
        self.model, self.tokenizer, self.device, self.dtype = model, tokenizer, device, dtype
        self.preprocess = Preprocess()  # open_clip ViT-H-14: 224 px, bicubic, OpenAI mean/std

    @classmethod
    def load(cls, source: RewardSource, device: torch.device, dtype: torch.dtype) -> HPSv2:
        oc = require("hpsv2.src.open_clip", "hpsv2", "hpsv2")
        path = Path(source.model)
        if not path.is_file():  # a hub repository holding the released checkpoint
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source.model, cls.CHECKPOINT))
        model, _, _ = oc.create_model_and_transforms(
            "ViT-H-14",
            pretrained=None,
            precision="fp32",
            device="cpu",
            jit=False,
            force_quick_gelu=False,
            force_custom_text=False,
            force_patch_dropout=False,
            force_image_size=None,
            pretrained_image=False,
            image_mean=None,
            image_std=None,
            light_augmentation=True,
            aug_cfg={},
            output_dict=True,
            with_score_predictor=False,
            with_region_predictor=False,
        )
        state = load_checkpoint(path, source.trust_pickle)
        model.load_state_dict(state.get("state_dict", state))
        return cls(model.to(device, dtype).eval(), oc.get_tokenizer("ViT-H-14"), device, dtype)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        px = self.preprocess(images.to(self.device)).to(self.dtype)
        img = self.model.encode_image(px, normalize=True).float()
        txt = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True)
        return (img * txt.float()).sum(-1)
