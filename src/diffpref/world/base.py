"""The world's base text-to-image model as one object: VAE, UNet, scheduler, text encoder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import Tensor

from diffpref.world.sampling import make_sampler, sample
from diffpref.world.text import ENCODER_NAME, MiniLMEncoder


@dataclass
class WorldBase:
    """Loaded base model (fp32 by default) with a convenience ``generate``."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler
    text_encoder: MiniLMEncoder

    @classmethod
    def load(
        cls,
        base_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> WorldBase:
        base_dir = Path(base_dir)
        cfg = json.loads((base_dir / "text_encoder.json").read_text())
        if cfg.get("name") != ENCODER_NAME:
            raise ValueError(
                f"{base_dir}/text_encoder.json names {cfg.get('name')!r}; "
                f"the embedded world supports {ENCODER_NAME!r}"
            )
        vae = AutoencoderKL.from_pretrained(base_dir / "vae", torch_dtype=dtype).to(device)
        unet = UNet2DConditionModel.from_pretrained(base_dir / "unet", torch_dtype=dtype)
        scheduler = DDPMScheduler.from_pretrained(base_dir / "scheduler")
        enc = MiniLMEncoder(max_length=int(cfg["max_length"]), device=device)
        return cls(vae.eval(), unet.to(device).eval(), scheduler, enc)

    def save(self, base_dir: str | Path, dtype: torch.dtype = torch.float32) -> None:
        save_base(
            base_dir, self.vae, self.unet, self.scheduler, self.text_encoder.max_length, dtype
        )

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int = 20,
        guidance: float = 4.0,
        sampler: str = "ddim",
        batch_size: int = 128,
    ) -> Tensor:
        """Images ``[B,1,32,32]`` in [0,1]; one seed per prompt."""
        cond = self.text_encoder.encode(list(prompts))
        uncond = self.text_encoder.uncond()
        sched = make_sampler(self.scheduler, sampler)
        out = []
        for i in range(0, len(prompts), batch_size):
            out.append(
                sample(
                    self.unet,
                    self.vae,
                    sched,
                    cond[i : i + batch_size],
                    uncond,
                    list(seeds[i : i + batch_size]),
                    steps,
                    guidance,
                ).cpu()
            )
        return torch.cat(out) if out else torch.zeros(0, 1, 32, 32)


def save_base(
    base_dir: str | Path,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    max_length: int,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write the diffusers layout ``vae/ unet/ scheduler/ text_encoder.json``."""
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    for name, model in (("vae", vae), ("unet", unet)):
        model.save_pretrained(base_dir / name, safe_serialization=True)
        if dtype != torch.float32:  # cast the file, not the live model
            path = base_dir / name / "diffusion_pytorch_model.safetensors"
            state = {
                k: v.to(dtype) if v.is_floating_point() else v
                for k, v in load_file(str(path)).items()
            }
            save_file(state, str(path), metadata={"format": "pt"})
    scheduler.save_pretrained(base_dir / "scheduler")
    (base_dir / "text_encoder.json").write_text(
        json.dumps({"name": ENCODER_NAME, "max_length": max_length}, indent=2) + "\n"
    )
