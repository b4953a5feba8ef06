"""Every knob of the embedded world, validated (``world:`` in params.yaml).

Defaults are the shipped world (pretrained on a 2-core CPU in ~15 min); :meth:`WorldParams.smoke`
gives tiny settings for tests and the smoke profile (``build_world`` in well under a minute).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from diffpref.settings import (
    BatchSize,
    Float,
    Int,
    LearningRate,
    Name,
    Probability,
    Seed,
    Settings,
    Steps,
)
from diffpref.world.constants import CATEGORIES, DEFAULT_FASHION_MNIST_DIR

# bounds (see diffpref.settings): far above the shipped world, far below what exhausts memory
Width = Annotated[Int, Field(ge=1, le=4096)]  # channels, hidden widths
Channels = Annotated[tuple[Width, ...], Field(min_length=1, max_length=8)]
Count = Annotated[Int, Field(ge=1, le=1_000_000)]  # things built in memory at once


class WorldParams(Settings):
    """Parameters of the embedded world. ``source: packaged`` copies the shipped world;
    ``train`` pretrains it from Fashion-MNIST with these settings."""

    source: Literal["packaged", "train"]  # no default: params.yaml sets it
    fashion_mnist_dir: Path = DEFAULT_FASHION_MNIST_DIR
    seed: Seed = 0
    device: Name = "cpu"
    threads: Int | None = Field(
        None, ge=1, le=1024, description="torch threads; None keeps torch's default"
    )

    # canvas
    item_size: Int = Field(14, ge=1, le=16, description="item pixels; a canvas cell is 16")
    jitter: Int = Field(1, ge=0, le=8)

    # fidelity cell classifier (11-way)
    classifier_width: Width = 32
    classifier_steps: Steps = 500
    classifier_batch: BatchSize = 256
    classifier_lr: LearningRate = 3e-3

    # the independent judge's cell classifier (LeNet-style; Fashion-MNIST test items
    # [0, JUDGE_TRAIN_ITEMS): no item or weight shared with the fidelity classifier)
    judge_width: Width = 32
    judge_steps: Steps = 1000
    judge_batch: BatchSize = 256
    judge_lr: LearningRate = 2e-3

    # quality discriminator
    quality_width: Width = 16
    quality_steps: Steps = 500
    quality_batch: BatchSize = 256
    quality_lr: LearningRate = 3e-3

    # VAE (AutoencoderKL, 1 -> 4 channels, 32x32 -> 8x8)
    vae_channels: Channels = (16, 32, 64)
    vae_steps: Steps = 800
    vae_batch: BatchSize = 32
    vae_lr: LearningRate = 2e-3
    vae_kl_weight: Float = Field(1e-4, ge=0)

    # base-model training data
    category_mix: dict[str, Float] = Field(
        default_factory=lambda: {
            "single": 0.4,
            "two_object": 0.15,
            "counting": 0.15,
            "position": 0.15,
            "brightness": 0.15,
        }
    )
    n_canvases: Count = 20_000
    n_captions: Count = 3_000
    text_max_length: Int = Field(16, ge=1, le=512, description="MiniLM tokens (at most 512)")
    caption_dropout: Probability = 0.1

    # UNet (UNet2DConditionModel on 8x8x4 latents, cross-attention on MiniLM states)
    unet_channels: Channels = (64, 128)
    unet_heads: Int = Field(8, ge=1, le=64)
    unet_layers_per_block: Int = Field(1, ge=1, le=16)
    unet_steps: Steps = 450
    unet_batch: BatchSize = 128
    unet_lr: LearningRate = 1e-3
    unet_warmup: Int = Field(50, ge=0, le=1_000_000)
    unet_ema_decay: Float = Field(0.0, ge=0, lt=1)  # 0 disables EMA
    unet_snr_gamma: Float | None = Field(5.0, gt=0)  # Min-SNR-gamma weighting; None: plain MSE

    # evaluation of the world (sampling with CFG)
    sampler: Literal["ddim", "dpm"] = "ddim"
    sample_steps: Int = Field(20, ge=1, le=1000)
    guidance_scale: Float = Field(4.0, ge=0, le=100)
    eval_prompts_per_category: Count = 64
    eval_test_canvases_per_category: Count = 200
    eval_test_items: Count | None = None  # classifier accuracy on the first N test items (all)

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
            "judge_width": 8,
            "judge_steps": 30,
            "judge_batch": 64,
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
