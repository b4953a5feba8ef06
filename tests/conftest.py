"""Shared fixtures: a tiny random backbone for loop tests, and paths into the repo."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from diffpref.backbones.base import Backbone, Cond

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class TinyBackbone(Backbone):
    """Random tiny UNet/VAE with hashed prompt embeddings: the loop's contract, no world."""

    def __init__(self, seed: int = 0, prediction_type: str = "epsilon"):
        torch.manual_seed(seed)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16,
            layers_per_block=1,
            attention_head_dim=8,
            norm_num_groups=8,
        ).eval()
        self.vae = AutoencoderKL(
            in_channels=1,
            out_channels=1,
            latent_channels=4,
            block_out_channels=(8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=1,
            norm_num_groups=4,
            sample_size=32,
        ).eval()
        self.unet.requires_grad_(False)
        self.vae.requires_grad_(False)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction_type
        )

    def encode_text(self, prompts: list[str]) -> Cond:
        out = []
        for p in prompts:
            seed = int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)
            out.append(torch.randn(4, 16, generator=torch.Generator().manual_seed(seed)))
        return {"hidden": torch.stack(out)}


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created once (the migrations take seconds)."""
    import mlflow

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store_uri(tmp_path, _empty_store) -> str:
    """A fresh project's MLflow store at ``tmp_path/mlflow.db`` (schema only, no experiment:
    the first stage creates it, artifacts beside this copy), without the migrations' cost."""
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    return TinyBackbone()
