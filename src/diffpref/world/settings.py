"""Every knob of the embedded world, validated (``world:`` in params.yaml).

Defaults are the shipped world (pretrained on a 2-core CPU in ~15 min); :meth:`WorldParams.smoke`
gives tiny settings for tests and the smoke profile (``build_world`` in well under a minute).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from diffpref.settings import Settings
from diffpref.world.constants import CATEGORIES, DEFAULT_FASHION_MNIST_DIR


class WorldParams(Settings):
    """Parameters of the embedded world. ``source: packaged`` copies the shipped world;
    ``train`` pretrains it from Fashion-MNIST with these settings."""

    source: Literal["packaged", "train"]  # no default: params.yaml sets it
    fashion_mnist_dir: Path = DEFAULT_FASHION_MNIST_DIR
    seed: int = 0
    device: str = "cpu"
    threads: int | None = Field(None, description="torch threads; None keeps torch's default")

    # canvas
    item_size: int = 14
    jitter: int = 1

    # fidelity cell classifier (11-way)
    classifier_width: int = 32
    classifier_steps: int = 500
    classifier_batch: int = 256
    classifier_lr: float = 3e-3

    # quality discriminator
    quality_width: int = 16
    quality_steps: int = 500
    quality_batch: int = 256
    quality_lr: float = 3e-3

    # VAE (AutoencoderKL, 1 -> 4 channels, 32x32 -> 8x8)
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_steps: int = 800
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-4

    # base-model training data
    category_mix: dict[str, float] = Field(
        default_factory=lambda: {
            "single": 0.4,
            "two_object": 0.15,
            "counting": 0.15,
            "position": 0.15,
            "brightness": 0.15,
        }
    )
    n_canvases: int = 20_000
    n_captions: int = 3_000
    text_max_length: int = 16
    caption_dropout: float = 0.1

    # UNet (UNet2DConditionModel on 8x8x4 latents, cross-attention on MiniLM states)
    unet_channels: tuple[int, ...] = (64, 128)
    unet_heads: int = 8
    unet_layers_per_block: int = 1
    unet_steps: int = 450
    unet_batch: int = 128
    unet_lr: float = 1e-3
    unet_warmup: int = 50
    unet_ema_decay: float = 0.0  # 0 disables EMA
    unet_snr_gamma: float | None = 5.0  # Min-SNR-gamma loss weighting; None: plain MSE

    # evaluation of the world (sampling with CFG)
    sampler: Literal["ddim", "dpm"] = "ddim"
    sample_steps: int = 20
    guidance_scale: float = 4.0
    eval_prompts_per_category: int = 64
    eval_test_canvases_per_category: int = 200
    eval_test_items: int | None = None  # classifier accuracy on the first N test items (all)

    @field_validator("category_mix")
    @classmethod
    def _check_mix(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; allowed: {list(CATEGORIES)}")
        if sum(max(x, 0.0) for x in v.values()) <= 0:
            raise ValueError("category_mix needs a positive weight")
        return v

    @classmethod
    def smoke(cls, **overrides: object) -> WorldParams:
        """Tiny settings: every part trains for a handful of steps (seconds on a CPU)."""
        small: dict[str, object] = {
            "source": "train",
            "classifier_width": 8,
            "classifier_steps": 30,
            "classifier_batch": 64,
            "quality_width": 8,
            "quality_steps": 20,
            "quality_batch": 64,
            "vae_channels": (8, 16, 16),
            "vae_steps": 10,
            "vae_batch": 16,
            "n_canvases": 256,
            "n_captions": 64,
            "unet_channels": (16, 32),
            "unet_heads": 2,
            "unet_steps": 10,
            "unet_batch": 16,
            "unet_warmup": 2,
            "sample_steps": 4,
            "eval_prompts_per_category": 4,
            "eval_test_canvases_per_category": 16,
            "eval_test_items": 1000,
        }
        small.update(overrides)
        return cls(**small)
