"""What a text-to-image model is to the objectives, independent of which model it is.

A backbone owns a diffusers ``UNet2DConditionModel`` (where adapters attach), a VAE, a
training noise scheduler and a text encoder. Text conditioning is a ``dict[str, Tensor]`` with
the batch first (``hidden`` for every backbone; SDXL adds ``pooled`` and ``time_ids``), so the
candidates stage can cache it and the training loop can index and concatenate it blindly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
)
from torch import Tensor

Cond = dict[str, Tensor]


def cond_index(cond: Cond, idx: Tensor | slice) -> Cond:
    return {k: v[idx] for k, v in cond.items()}


def cond_cat(conds: Sequence[Cond]) -> Cond:
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


def cond_to(cond: Cond, device: torch.device | str, dtype: torch.dtype | None = None) -> Cond:
    return {
        k: v.to(device, dtype=dtype if dtype is not None and v.is_floating_point() else None)
        for k, v in cond.items()
    }


class Backbone(ABC):
    # the diffusers pipeline whose ``save_lora_weights`` writes this model's adapters, so the
    # saved file loads with that pipeline's ``load_lora_weights``
    lora_pipeline: str = "StableDiffusionPipeline"
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    noise_scheduler: DDPMScheduler
    device: torch.device
    dtype: torch.dtype

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """[C, H, W] of decoded images (imported images are resized to it)."""
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        _, h, w = self.latent_shape
        return (self.vae.config.in_channels, h * f, w * f)

    @abstractmethod
    def encode_text(self, prompts: list[str]) -> Cond:
        """Conditioning for ``prompts`` (``[""]`` gives the unconditional embedding)."""

    def unet_kwargs(self, cond: Cond) -> dict:
        return {"encoder_hidden_states": cond["hidden"]}

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        return self.unet(x_t, t, **self.unet_kwargs(cond)).sample

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target of the training loss for this model's parameterisation."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(x0, noise, t)
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """Images in [0,1] -> scaled latents (distribution mean: cached once, deterministic)."""
        x = images.to(self.device, self.vae.dtype) * 2 - 1
        lat = self.vae.encode(x).latent_dist.mode()
        return (lat - (self.vae.config.shift_factor or 0)) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        lat = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        lat = lat + (self.vae.config.shift_factor or 0)
        return ((self.vae.decode(lat).sample.float() + 1) / 2).clamp(0, 1)

    def inference_scheduler(self, kind: str):
        cls = {"ddim": DDIMScheduler, "dpmsolver": DPMSolverMultistepScheduler}[kind]
        return cls.from_config(self.noise_scheduler.config)

    @torch.no_grad()
    def sample_latents(
        self,
        cond: Cond,
        uncond: Cond,
        seeds: Sequence[int],
        steps: int,
        guidance: float,
        scheduler: str = "dpmsolver",
    ) -> Tensor:
        """Clean latents for ``cond`` with classifier-free guidance.

        Each sample's initial noise comes from its own seeded generator, so a (prompt, seed)
        gives the same image whatever else is in the batch: base and every adapter are
        compared on identical starting points.
        """
        sched = self.inference_scheduler(scheduler)
        sched.set_timesteps(steps, device=self.device)
        noise = torch.stack(
            [
                torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s)))
                for s in seeds
            ]
        )
        x = noise.to(self.device, self.dtype) * sched.init_noise_sigma
        n = x.shape[0]
        cfg = guidance != 1.0
        c = cond_to(cond, self.device, self.dtype)
        if cfg:
            u = cond_to(uncond, self.device, self.dtype)
            u = {k: v.expand(n, *v.shape[1:]) for k, v in u.items()}
            c = cond_cat([u, c])
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]) if cfg else x, t)
            out = self.predict(inp, t.expand(inp.shape[0]), c)
            if cfg:
                out_u, out_c = out.chunk(2)
                out = out_u + guidance * (out_c - out_u)
            x = sched.step(out, t, x).prev_sample
        return x
