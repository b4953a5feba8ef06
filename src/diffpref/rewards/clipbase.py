"""What PickScore, CLIP score and the LAION aesthetic predictor share: a transformers CLIP.

Preprocessing runs batched on the device with torch (resize the shortest side, center crop,
CLIP mean/std), as the CLIP image processor does on CPU one PIL image at a time; the official
processors' PIL path is the throughput bottleneck of reward scoring. The sizes, mean and std
come from the source's ``preprocessor_config.json``.

transformers >= 5 returns an output object from ``get_image_features`` /
``get_text_features`` (the projected embedding is its ``pooler_output``); 4.x returns the
tensor. :func:`unwrap` accepts both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diffpref.config import RewardSource

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def unwrap(out) -> Tensor:
    return out if isinstance(out, Tensor) else out.pooler_output


def _edge(value, key: str) -> int:
    """``size``/``crop_size`` appear as an int or as a dict across processor versions."""
    if isinstance(value, int):
        return value
    return int(value.get(key) or value.get("height") or value.get("shortest_edge"))


@dataclass(frozen=True)
class Preprocess:
    """Images [B,C,H,W] in [0,1] (any size, 1 or 3 channels) -> normalised CLIP pixels."""

    resize: int = 224
    crop: int = 224
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    @classmethod
    def from_source(cls, path: str) -> Preprocess:
        from transformers.image_processing_base import ImageProcessingMixin

        cfg, _ = ImageProcessingMixin.get_image_processor_dict(path)
        return cls(
            resize=_edge(cfg.get("size", 224), "shortest_edge"),
            crop=_edge(cfg.get("crop_size", cfg.get("size", 224)), "height"),
            mean=tuple(cfg.get("image_mean", CLIP_MEAN)),
            std=tuple(cfg.get("image_std", CLIP_STD)),
        )

    def __call__(self, images: Tensor) -> Tensor:
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        # the processor's rule: shortest side -> resize, longest side truncated to int
        nh, nw = (
            (self.resize, int(self.resize * w / h))
            if h <= w
            else (int(self.resize * h / w), self.resize)
        )
        nh, nw = max(nh, self.crop), max(nw, self.crop)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - self.crop) // 2, (nw - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop].clamp(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


class ClipEncoder:
    """A CLIP model with its tokenizer and device-side preprocessing; unit-norm embeddings."""

    def __init__(self, source: RewardSource, device: torch.device, dtype: torch.dtype):
        from transformers import AutoTokenizer, CLIPModel

        proc = source.processor or source.model
        self.device, self.dtype = device, dtype
        self.model = CLIPModel.from_pretrained(source.model, torch_dtype=dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(proc)
        self.preprocess = Preprocess.from_source(proc)
        self.max_length = min(
            self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings
        )

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp().float()

    @torch.no_grad()
    def image_embeds(self, images: Tensor) -> Tensor:
        px = self.preprocess(images.to(self.device)).to(self.dtype)
        return F.normalize(unwrap(self.model.get_image_features(pixel_values=px)).float(), dim=-1)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> Tensor:
        """One encoder pass per distinct prompt (a batch repeats each prompt K times)."""
        uniq = list(dict.fromkeys(prompts))
        enc = self.tokenizer(
            uniq, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        emb = unwrap(
            self.model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        )
        emb = F.normalize(emb.float(), dim=-1)
        pos = {p: i for i, p in enumerate(uniq)}
        return emb[torch.tensor([pos[p] for p in prompts], device=emb.device)]

    def cosine(self, images: Tensor, prompts: list[str]) -> Tensor:
        return (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)


class ClipReward:
    """A reward computed from one :class:`ClipEncoder` (PickScore, CLIP score): subclasses set
    ``name``, ``DEFAULT_SOURCE`` and ``score``."""

    name: str
    DEFAULT_SOURCE: RewardSource

    def __init__(self, clip: ClipEncoder):
        self.clip = clip

    @classmethod
    def load(cls, source: RewardSource, device: torch.device, dtype: torch.dtype) -> ClipReward:
        return cls(ClipEncoder(source, device, dtype))
