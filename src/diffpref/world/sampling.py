"""Sampling the world's latent diffusion model with classifier-free guidance.

Each sample's initial noise comes from its own ``torch.Generator().manual_seed(seed)`` and
the schedulers used here are deterministic after that, so a (prompt, seed) pair always gives
the same image whatever else is in the batch - the property the candidates and evaluate
stages rely on to compare objectives on identical seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    SchedulerMixin,
    UNet2DConditionModel,
)
from torch import Tensor

SAMPLERS = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}


def make_sampler(train_scheduler: SchedulerMixin, kind: str = "ddim") -> SchedulerMixin:
    """A deterministic inference scheduler with the training scheduler's noise schedule."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; allowed: {sorted(SAMPLERS)}")
    cls = SAMPLERS[kind]
    extra = {"set_alpha_to_one": False, "steps_offset": 1} if kind == "ddim" else {}
    return cls.from_config(train_scheduler.config, **extra)


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> Tensor:
    """``[B,*shape]`` standard normal noise, sample ``i`` drawn from its own seed (CPU)."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    )


def decode(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """Latents -> images in [0,1] (undoing the VAE scaling factor)."""
    x = vae.decode(latents / vae.config.scaling_factor).sample
    return ((x.float() + 1) / 2).clamp(0, 1)


@torch.no_grad()
def sample(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler: SchedulerMixin,
    cond: Tensor,
    uncond: Tensor,
    seeds: Sequence[int] | torch.Generator,
    steps: int = 20,
    guidance: float = 4.0,
    return_latents: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Generate ``[B,1,32,32]`` images in [0,1] for text states ``cond`` [B,L,D].

    ``uncond`` [1,L,D] is the empty-prompt context; ``guidance`` <= 1 skips the
    unconditional pass. ``seeds`` are per-sample seeds (reproducible per sample); a single
    ``torch.Generator`` draws the whole batch instead (not batch-independent).
    ``scheduler`` is an inference scheduler (see :func:`make_sampler`; a stochastic
    ``DDPMScheduler`` is swapped for DDIM so results stay a function of the seeds); its
    timesteps are reset here.
    """
    if isinstance(scheduler, DDPMScheduler):
        scheduler = make_sampler(scheduler, "ddim")
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    b = cond.shape[0]
    c = unet.config.in_channels
    s = unet.config.sample_size
    shape = (c, s, s)
    if isinstance(seeds, torch.Generator):
        latents = torch.randn((b, *shape), generator=seeds)
    else:
        if len(seeds) != b:
            raise ValueError(f"got {len(seeds)} seeds for {b} prompts")
        latents = initial_noise(seeds, shape)
    latents = latents.to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma
    cond = cond.to(device=device, dtype=dtype)
    guided = guidance > 1.0
    if guided:
        ctx = torch.cat([uncond.to(device=device, dtype=dtype).expand(b, -1, -1), cond])
    scheduler.set_timesteps(steps, device=device)
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(latents, t)
        if guided:
            eps = unet(torch.cat([inp, inp]).to(dtype), t, encoder_hidden_states=ctx).sample
            e_u, e_c = eps.float().chunk(2)
            eps = e_u + guidance * (e_c - e_u)
        else:
            eps = unet(inp.to(dtype), t, encoder_hidden_states=cond).sample.float()
        latents = scheduler.step(eps, t, latents).prev_sample
    images = decode(vae, latents.to(next(vae.parameters()).dtype))
    return (images, latents) if return_latents else images
