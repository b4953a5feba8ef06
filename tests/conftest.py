"""Shared fixtures: a tiny random backbone for loop tests, paths into the repo, and clean smoke
runs of the DAG that several test modules compare against."""

from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from diffpref.backbones.base import Backbone, Cond

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest_plugins = ["tests.require_tools"]  # .ci/run: a skipped test fails


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


def train_params(**kw):
    """Training settings for loop tests: params.yaml's ``train:`` (where every default lives)
    with ``kw`` over it."""
    import yaml

    from diffpref.config import TrainParams

    return TrainParams(**{**yaml.safe_load((REPO / "params.yaml").read_text())["train"], **kw})


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


# Bitwise equality needs the same torch thread count (summation order): Snakemake passes its
# --cores 1 to every stage, DVC's stages get DIFFPREF_THREADS=1.
ONE_THREAD = {"DIFFPREF_THREADS": "1"}


@pytest.fixture(scope="session")
def clean_runs(tmp_path_factory) -> dict[str, Path]:
    """Two clean smoke runs (one objective, one training seed), each in a fresh copy of the
    project, side by side (each pipeline keeps one core busy): `snakemake --cores 1` with its
    MLflow records, and `dvc repro` without, committed with its dvc.lock and the uncached
    metrics and plots."""
    from tests.project import sh, smoke_project

    def snakemake(root: Path) -> Path:
        sh(["snakemake", "--cores", "1"], smoke_project(root))
        return root

    def dvc(root: Path) -> Path:
        sh(["dvc", "repro"], smoke_project(root), env={"DIFFPREF_MLFLOW": "0", **ONE_THREAD})
        sh(["git", "add", "-A"], root)
        sh(["git", "commit", "-qm", "smoke run"], root)
        return root

    with ThreadPoolExecutor(2) as pool:
        runs = {tool.__name__: pool.submit(tool, tmp_path_factory.mktemp(tool.__name__) / "p")
                for tool in (snakemake, dvc)}  # fmt: skip
    return {tool: run.result() for tool, run in runs.items()}


@pytest.fixture(scope="session")
def smoke_reference(clean_runs) -> Path:
    """The clean run by Snakemake: what a run through faults must end equal to."""
    return clean_runs["snakemake"]


@pytest.fixture(scope="session")
def smoke_dvc(clean_runs) -> Path:
    """The clean run by DVC: shared through DVC remotes (test_dvc_remote.py), and the second
    clean run of the determinism test."""
    return clean_runs["dvc"]
