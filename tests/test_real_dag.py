"""The whole DAG on tiny random SD1.5- and SDXL-architecture pipelines with CLIP rewards, run
in-process stage by stage; the trained LoRA then loads into the stock diffusers pipeline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from tests.tiny_sd import PROMPTS, tiny_models, write_params

from diffpref.cli import main

OBJECTIVES = ["dpo", "mapo", "lair"]


@pytest.fixture
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.getbasetemp() / "tiny_models")


@pytest.fixture(autouse=True)
def _mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def run(params, *args) -> None:
    assert main([*args, "--params", str(params)]) == 0, args


def run_dag(params, results) -> None:
    for stage in ("prompts", "candidates", "rewards", "labels"):
        run(params, stage)
    for o in OBJECTIVES:
        run(params, "train", "--objective", o)
    for o in ["base", *OBJECTIVES]:
        run(params, "evaluate", "--objective", o)
    # the report also shows the embedded world's reward metrics; real backbones have none
    (results / "world").mkdir(exist_ok=True)
    (results / "world" / "metrics.json").write_text("{}")
    run(params, "report")


def stock_pipeline(kind, path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    return cls.from_pretrained(path).to("cpu")


def pipe_images(pipe, prompt):
    out = pipe(prompt, num_inference_steps=2, guidance_scale=3.0, height=32, width=32,
               generator=torch.Generator().manual_seed(0), output_type="np")
    return out.images


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_dag_runs_on_tiny_real_architectures_and_lora_loads_in_stock_pipeline(
    kind, models, tmp_path
):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    pipeline = models.sd15 if kind == "sd15" else models.sdxl
    params = write_params(tmp_path / "params.yaml", models, pipeline, kind,
                          evaluate={"export_geneval": True})
    results = tmp_path / "results"
    run_dag(params, results)

    with safe_open(results / "candidates" / "text.safetensors", "pt") as f:
        text = set(f.keys())
    want = {"hidden", "pooled", "time_ids"} if kind == "sdxl" else {"hidden"}
    assert text == want | {f"uncond.{k}" for k in want}
    rewards = pd.read_parquet(results / "rewards" / "rewards.parquet")
    assert set(rewards.reward) == {"pickscore", "clip_score", "aesthetic"}
    assert np.isfinite(rewards.score).all()
    for o in OBJECTIVES:
        tm = json.loads((results / "adapters" / o / "train_metrics.json").read_text())
        assert np.isfinite(tm["summary"]["final_loss"]), o
        assert tm["summary"]["groups_per_s"] > 0 and tm["summary"]["peak_memory_mb"] > 0
        m = json.loads((results / "eval" / o / "metrics.json").read_text())
        assert set(m["win_vs_base"]) == {"pickscore", "clip_score", "aesthetic"}
    assert (results / "report" / "report.md").is_file()
    table = pd.read_csv(results / "report" / "comparison.csv")
    assert sorted(table.model) == sorted(["base", *OBJECTIVES])
    n_eval = len(pd.read_parquet(results / "prompts" / "eval.parquet"))
    assert len(list((results / "eval" / "dpo" / "geneval").iterdir())) == n_eval

    pipe = stock_pipeline(kind, pipeline)
    before = pipe_images(pipe, PROMPTS[0])
    pipe.load_lora_weights(str(results / "adapters" / "dpo"),
                           weight_name="pytorch_lora_weights.safetensors")
    after = pipe_images(pipe, PROMPTS[0])
    assert before.shape == after.shape == (1, 32, 32, 3)
    assert np.abs(after - before).max() > 1e-4
