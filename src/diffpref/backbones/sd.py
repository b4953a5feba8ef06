"""Stable Diffusion 1.x/2.x and SDXL backbones, loaded from a diffusers pipeline directory.

Components are read one by one with ``from_pretrained(path, subfolder=...)`` so that a stage
loads only what it uses: training from cached latents and text embeddings never loads the
text encoders, and the VAE is loaded on first use. Text conditioning reproduces what the
stock pipelines compute (so a LoRA trained here behaves the same in ``load_lora_weights``):

- SD1.x/2.x: the text encoder's last hidden state, ``hidden`` [B, 77, D];
- SDXL: penultimate hidden states of both encoders concatenated (``hidden`` [B, 77, 2048]),
  the pooled projection of ``text_encoder_2`` (``pooled``) and the micro-conditioning
  ``time_ids = [H, W, 0, 0, H, W]``; with ``force_zeros_for_empty_prompt`` (SDXL base) the
  empty prompt is all zeros, as the pipeline's unconditional branch.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor

from diffpref.backbones.base import Backbone, Cond

TEXT_BATCH = 64  # prompts per text-encoder call: bounds memory on large prompt files


class SDBackbone(Backbone):
    """Shared loading for SD-family pipelines; subclasses define the text conditioning."""

    lora_pipeline = "StableDiffusionPipeline"

    def __init__(
        self,
        pretrained: str,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        vae: str | None = None,
        variant: str | None = None,
        resolution: int | None = None,
    ):
        self.pretrained, self.device, self.dtype = str(pretrained), device, dtype
        self._vae_source, self._variant = vae, variant
        self.unet = (
            UNet2DConditionModel.from_pretrained(
                self.pretrained, subfolder="unet", torch_dtype=dtype, variant=variant
            )
            .to(device)
            .eval()
        )
        self.unet.requires_grad_(False)
        # latent diffusion never clips x0 to [-1, 1]: old SD configs leave clip_sample unset
        self.noise_scheduler = DDPMScheduler.from_pretrained(
            self.pretrained, subfolder="scheduler", clip_sample=False, thresholding=False
        )
        path, sub = self._vae_location()
        self._vae_config = AutoencoderKL.load_config(path, subfolder=sub)
        self.vae_scale_factor = 2 ** (len(self._vae_config["block_out_channels"]) - 1)
        self.resolution = resolution or self.unet.config.sample_size * self.vae_scale_factor
        if self.resolution % self.vae_scale_factor:
            raise ValueError(
                f"backbone.resolution {self.resolution} is not a multiple of the VAE's "
                f"downsampling factor {self.vae_scale_factor}"
            )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.resolution // self.vae_scale_factor
        return (self.unet.config.in_channels, size, size)

    def _vae_location(self) -> tuple[str, str | None]:
        """(path, subfolder): a replacement VAE (fp16-fix) has its config at the root."""
        return (self._vae_source, None) if self._vae_source else (self.pretrained, "vae")

    @cached_property
    def vae(self) -> AutoencoderKL:
        path, sub = self._vae_location()
        # the original SDXL VAE overflows in fp16 (NaN images); its config says force_upcast
        dtype = (
            torch.float32
            if (self.dtype == torch.float16 and self._vae_config.get("force_upcast", False))
            else self.dtype
        )
        variant = None if self._vae_source else self._variant
        vae = AutoencoderKL.from_pretrained(path, subfolder=sub, torch_dtype=dtype, variant=variant)
        vae.enable_slicing()  # one image at a time: a 512-1024 px decode batch can exhaust memory
        return vae.to(self.device).eval().requires_grad_(False)

    def _load_text(self, tok_sub: str, enc_sub: str, cls):
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(self.pretrained, subfolder=tok_sub)
        enc = cls.from_pretrained(
            self.pretrained, subfolder=enc_sub, torch_dtype=self.dtype, variant=self._variant
        )
        return tok, enc.to(self.device).eval().requires_grad_(False)

    def _ids(self, tokenizer, prompts: list[str]) -> Tensor:
        return tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Cond:
        parts = [
            self._encode(prompts[s : s + TEXT_BATCH]) for s in range(0, len(prompts), TEXT_BATCH)
        ]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _encode(self, prompts: list[str]) -> Cond:
        raise NotImplementedError


class SD15Backbone(SDBackbone):
    """SD1.x/2.x (ε or v prediction, per the scheduler config): one CLIP text encoder."""

    @cached_property
    def _text(self):
        from transformers import CLIPTextModel

        return self._load_text("tokenizer", "text_encoder", CLIPTextModel)

    def _encode(self, prompts: list[str]) -> Cond:
        tok, enc = self._text
        return {"hidden": enc(self._ids(tok, prompts))[0].to(self.dtype)}


class SDXLBackbone(SDBackbone):
    """SDXL: two text encoders, pooled text embeddings and size/crop micro-conditioning."""

    lora_pipeline = "StableDiffusionXLPipeline"

    @cached_property
    def _texts(self):
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return [
            self._load_text("tokenizer", "text_encoder", CLIPTextModel),
            self._load_text("tokenizer_2", "text_encoder_2", CLIPTextModelWithProjection),
        ]

    @cached_property
    def force_zeros_for_empty_prompt(self) -> bool:
        index = Path(self.pretrained) / "model_index.json"
        if index.is_file():
            return bool(json.loads(index.read_text()).get("force_zeros_for_empty_prompt", True))
        from diffusers import DiffusionPipeline

        return bool(
            DiffusionPipeline.load_config(self.pretrained).get("force_zeros_for_empty_prompt", True)
        )

    def time_ids(self, n: int) -> Tensor:
        r = self.resolution
        return torch.tensor([[r, r, 0, 0, r, r]], dtype=self.dtype, device=self.device).repeat(n, 1)

    def _encode(self, prompts: list[str]) -> Cond:
        hidden, pooled = [], None
        for tok, enc in self._texts:
            out = enc(self._ids(tok, prompts), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            if out[0].ndim == 2:  # the projected pooled output of text_encoder_2
                pooled = out[0]
        cond = {
            "hidden": torch.cat(hidden, -1).to(self.dtype),
            "pooled": pooled.to(self.dtype),
            "time_ids": self.time_ids(len(prompts)),
        }
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=self.device)
            for k in ("hidden", "pooled"):
                cond[k] = torch.where(
                    empty.view(-1, *[1] * (cond[k].dim() - 1)), torch.zeros_like(cond[k]), cond[k]
                )
        return cond

    def unet_kwargs(self, cond: Cond) -> dict:
        return {
            "encoder_hidden_states": cond["hidden"],
            "added_cond_kwargs": {"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]},
        }
