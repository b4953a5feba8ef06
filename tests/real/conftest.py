"""Real-model tests' fixtures: tiny random SD1.5 / SDXL pipelines and CLIP reward models on
disk, plus a params writer.

Built once per test session (a few seconds) with ``diffpref.backbones.random_init``: the same
``save_pretrained`` layout as the real hub repositories, so the loaders under test are the
ones a user runs on real weights.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from tests.conftest import REPO

from diffpref import datasources as ds
from diffpref.backbones.random_init import build_clip, build_sd_pipeline
from diffpref.config import deep_merge
from diffpref.rewards.aesthetic import AestheticHead

PROJECTION = 16  # tiny CLIP embedding size (the aesthetic head takes it as input)


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: a second torch thread only adds contention
    (measured: a tiny UNet forward takes 30 ms on one thread, up to 2.5 s on two)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass(frozen=True)
class TinyModels:
    sd15: Path
    sd15_v: Path  # v-prediction
    sdxl: Path
    clip: Path  # serves pickscore, clip_score and the aesthetic's CLIP
    aesthetic_head: Path


@functools.cache
def tiny_models(root: Path) -> TinyModels:
    root.mkdir(parents=True, exist_ok=True)
    head = AestheticHead(PROJECTION)
    torch.save(head.state_dict(), root / "aesthetic_head.pth")
    return TinyModels(
        sd15=build_sd_pipeline(root / "sd15", "sd15", seed=0),
        sd15_v=build_sd_pipeline(root / "sd15_v", "sd15", prediction_type="v_prediction", seed=1),
        sdxl=build_sd_pipeline(root / "sdxl", "sdxl", seed=2),
        clip=build_clip(root / "clip", image_size=32, projection_dim=PROJECTION),
        aesthetic_head=root / "aesthetic_head.pth",
    )


def write_params(path: Path, models: TinyModels, pipeline: Path, kind: str, **over) -> Path:
    """A complete params.yaml for the tiny real-model DAG (device cpu, 2 sampling steps)."""
    train = {
        "steps": 2,
        "batch_size": 2,
        "lr": 1e-2,
        "warmup_steps": 1,
        "lora_rank": 4,
        "checkpoint_every": 1,
        "log_every": 1,
    }
    clip = str(models.clip)
    params = {
        "device": "cpu",
        "train_seeds": [0],
        "results": str(path.parent / "results"),
        "backbone": {"kind": kind, "pretrained": str(pipeline)},
        "sampling": {"steps": 2, "guidance": 3.0},
        "prompts": {
            "source": "file",
            "file": str(path.parent / "prompts.txt"),
            "eval_fraction": 0.4,
        },
        "candidates": {"k": 2, "batch_size": 8},
        "rewards": {
            "models": ["pickscore", "clip_score", "aesthetic"],
            "batch_size": 8,
            "sources": {
                "pickscore": clip,
                "clip_score": clip,
                "aesthetic": {"model": clip, "head": str(models.aesthetic_head)},
            },
        },
        "labels": {"reward": "pickscore", "tie_threshold": 0.0},
        "train": train,
        "objectives": {
            "dpo": {"loss": "dpo", "beta": 2500},
            "mapo": {"loss": "mapo"},
            "lair": {"loss": "lair", "beta": 250},
        },
        "evaluate": {"seeds": [0, 1], "batch_size": 8, "bootstrap": 20, "judge": "clip_score"},
        "report": {"grid_prompts": 2},
    }
    # the rest as params.yaml has it (where every default lives), its objectives replaced
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base.pop("profiles")
    base["objectives"] = {}
    path.write_text(yaml.safe_dump(deep_merge(deep_merge(base, params), over)))
    return path


PROMPTS = [
    "a red cube on a table",
    "two cats on a sofa",
    "a lighthouse at night",
    "a bowl of ramen",
    "an astronaut riding a horse",
    "a watercolor fox",
    "three apples in a row",
    "a blue car in the rain",
    "a castle on a hill",
    "a dog wearing sunglasses",
]


def jpeg(seed: int, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def pickapic(path, rows) -> str:
    pd.DataFrame(rows, columns=ds.PICKAPIC_COLUMNS).to_parquet(path)
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> TinyModels:
    return tiny_models(tmp_path_factory.getbasetemp() / "tiny_models")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield
