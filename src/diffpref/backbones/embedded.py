"""The embedded world's latent diffusion model: small VAE + UNet, MiniLM token states as text."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from diffpref.backbones.base import Backbone, Cond
from diffpref.world.text import MiniLMEncoder


class EmbeddedBackbone(Backbone):
    def __init__(self, world_dir: Path, device: torch.device, dtype: torch.dtype = torch.float32):
        base = Path(world_dir) / "base"
        if not (base / "unet").is_dir():
            raise FileNotFoundError(f"{base}: no world base model (run `diffpref world` first)")
        self.device, self.dtype = device, dtype
        self.vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=dtype).to(device).eval()
        self.unet = UNet2DConditionModel.from_pretrained(base / "unet", torch_dtype=dtype)
        self.unet = self.unet.to(device).eval()
        self.noise_scheduler = DDPMScheduler.from_pretrained(base / "scheduler")
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        meta = json.loads((base / "text_encoder.json").read_text())
        self._max_length = int(meta["max_length"])
        self._text: MiniLMEncoder | None = None

    def encode_text(self, prompts: list[str]) -> Cond:
        if self._text is None:  # lazy: training from cached embeddings never loads MiniLM
            self._text = MiniLMEncoder(max_length=self._max_length, device=self.device)
        return {"hidden": self._text.encode(prompts).to(self.dtype)}
