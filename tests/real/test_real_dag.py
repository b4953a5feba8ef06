"""The whole DAG on tiny random SD1.5- and SDXL-architecture pipelines with CLIP rewards, run
in-process stage by stage; the trained LoRA then loads into the stock diffusers pipeline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open
from tests.project import check_reads
from tests.real.conftest import PROMPTS, jpeg, pickapic, write_params

from diffpref.cli import main
from diffpref.config import dag

OBJECTIVES = ["dpo", "mapo", "lair"]
# The losses see only denoising errors, whatever the backbone: SD1.5 runs all three, SDXL (its
# own conditioning: pooled text, time ids) one
TRAINED = {"sd15": OBJECTIVES, "sdxl": ["dpo"]}


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("DIFFPREF_THREADS", "1")


def run(params, *args) -> None:
    assert main([*args, "--params", str(params)]) == 0, args


def run_dag(params, results, objectives=OBJECTIVES, online=()) -> None:
    """The DAG's jobs in order; ``online``: objectives that also take online round 2 (its
    samples, rewards, labels, training, evaluation and compute-matched control)."""
    for stage in ("prompts", "candidates", "rewards", "labels"):
        run(params, stage)
    for o in objectives:
        run(params, "train", "--objective", o, "--seed", "0")
    run(params, "evaluate", "--objective", "base")
    for o in objectives:
        run(params, "evaluate", "--objective", o, "--seed", "0")
    rows = [r for r in dag.STAGES if dag.STAGES[r].per_round]
    for o in online:
        for row in rows:
            extra = ["--matched"] if row.endswith("_matched") else []
            run(params, dag.stage_of(row), "--objective", o, "--seed", "0", "--round", "2", *extra)
    # the report also shows the embedded world's reward metrics; real backbones have none
    (results / "world").mkdir(exist_ok=True)
    (results / "world" / "metrics.json").write_text("{}")
    run(params, "report")
    # the real-model keys (weights, prompt file, reward sources) read as the DAG table says
    jobs = [(s, None, None, 1) for s in ("prompts", "candidates", "rewards", "labels", "report")]
    jobs += [(s, o, 0, 1) for s in ("train", "evaluate") for o in objectives]
    jobs += [(row, o, 0, 2) for row in rows for o in online]
    check_reads(params, [*jobs, ("evaluate", "base", None, 1)], results.parent)


def stock_pipeline(kind, path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    return cls.from_pretrained(path).to("cpu")


def pipe_images(pipe, prompt):
    out = pipe(
        prompt,
        num_inference_steps=2,
        guidance_scale=3.0,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return out.images


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_dag_runs_on_tiny_real_architectures_and_lora_loads_in_stock_pipeline(
    kind, models, tmp_path
):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    # SDXL reads a PartiPrompts-style TSV, whose free-text categories must survive MLflow
    pd.DataFrame({"Prompt": PROMPTS, "Category": ["Food & Beverage", "Animals"] * 5}).to_csv(
        tmp_path / "parti.tsv", sep="\t", index=False
    )
    prompts = (
        {}
        if kind == "sd15"
        else {
            "file": str(tmp_path / "parti.tsv"),
            "column": "Prompt",
            "category_column": "Category",
        }
    )
    pipeline = models.sd15 if kind == "sd15" else models.sdxl
    params = write_params(
        tmp_path / "params.yaml",
        models,
        pipeline,
        kind,
        prompts=prompts,
        evaluate={"export_geneval": True},
    )
    raw = yaml.safe_load(params.read_text())
    raw["objectives"] = {o: raw["objectives"][o] for o in TRAINED[kind]}
    # one online round of dpo, as small as round 1 (k 2, random CLIP scores: no tie threshold)
    raw["online"] |= {"objectives": ["dpo"], "rounds": [{"round": 2, "after": 1}], "k": 2}
    raw["online"]["tie_threshold"] = 0.0
    params.write_text(yaml.safe_dump(raw))
    results = tmp_path / "results"
    run_dag(params, results, TRAINED[kind], online=["dpo"])
    # online round 2 on the real architecture: sampled from round 1's policy, trained from it
    # with it as the reference; its control continued round 1 with the base as reference
    model = results / "adapters" / "dpo" / "seed0"
    rnd = json.loads((model / "round2" / "train_metrics.json").read_text())
    ctl = json.loads((model / "matched2" / "train_metrics.json").read_text())
    assert rnd["reference"] == str(model / "round1") and ctl["reference"] == "base"
    n_train = len(pd.read_parquet(results / "prompts" / "train.parquet"))
    assert rnd["sampling"]["images"] == 2 * n_train  # online.k per training prompt
    assert rnd["total_steps"] == ctl["total_steps"] == 2 * rnd["summary"]["steps"]
    assert rnd["summary"]["peak_memory_mb"] > 0

    with safe_open(results / "candidates" / "text.safetensors", "pt") as f:
        text = set(f.keys())
    want = {"hidden", "pooled", "time_ids"} if kind == "sdxl" else {"hidden"}
    assert text == want | {f"uncond.{k}" for k in want}
    rewards = pd.read_parquet(results / "rewards" / "rewards.parquet")
    assert set(rewards.reward) == {"pickscore", "clip_score", "aesthetic"}
    assert np.isfinite(rewards.score).all()
    for o in TRAINED[kind]:
        tm = json.loads(
            (results / "adapters" / o / "seed0" / "round1" / "train_metrics.json").read_text()
        )
        assert np.isfinite(tm["summary"]["final_loss"]), o
        assert tm["summary"]["groups_per_s"] > 0 and tm["summary"]["peak_memory_mb"] > 0
        m = json.loads((results / "eval" / o / "seed0" / "round1" / "metrics.json").read_text())
        assert set(m["win_vs_base"]) == {"pickscore", "clip_score", "aesthetic"}
    assert (results / "report" / "report.md").is_file()
    table = pd.read_csv(results / "report" / "comparison.csv")
    assert sorted(table.model) == sorted(["base", *TRAINED[kind]])
    n_eval = len(pd.read_parquet(results / "prompts" / "eval.parquet"))
    assert (
        len(list((results / "eval" / "dpo" / "seed0" / "round1" / "geneval").iterdir())) == n_eval
    )

    pipe = stock_pipeline(kind, pipeline)
    before = pipe_images(pipe, PROMPTS[0])
    pipe.load_lora_weights(
        str(results / "adapters" / "dpo" / "seed0" / "round1"),
        weight_name="pytorch_lora_weights.safetensors",
    )
    after = pipe_images(pipe, PROMPTS[0])
    assert before.shape == after.shape == (1, 32, 32, 3)
    assert np.abs(after - before).max() > 1e-4


def test_v_prediction_pipeline_trains_through_the_stages(models, tmp_path):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    params = write_params(
        tmp_path / "params.yaml",
        models,
        models.sd15_v,
        "sd15",
        rewards={"models": ["pickscore"]},
        objectives={"dpo": {"loss": "dpo"}},
    )
    for stage in ("prompts", "candidates", "rewards", "labels"):
        run(params, stage)
    run(params, "train", "--objective", "dpo", "--seed", "0")
    adapter = tmp_path / "results" / "adapters" / "dpo" / "seed0" / "round1"
    tm = json.loads((adapter / "train_metrics.json").read_text())
    assert np.isfinite(tm["summary"]["final_loss"]) and tm["summary"]["steps"] == 2


def test_pickapic_import_gives_trainable_human_pairs(models, tmp_path):
    captions = PROMPTS[:6]
    rows = [(c, jpeg(2 * i), jpeg(2 * i + 1), float(i % 2)) for i, c in enumerate(captions)]
    rows += [(captions[0], jpeg(0), jpeg(99), 1.0), (captions[1], jpeg(5), jpeg(7), 0.5)]
    pref = pickapic(tmp_path / "pickapic.parquet", rows)
    params = write_params(
        tmp_path / "params.yaml",
        models,
        models.sd15,
        "sd15",
        prompts={"file": str(pref), "column": "caption", "eval_fraction": 0.3},
        candidates={"source": "pickapic", "preference_file": str(pref)},
        rewards={"models": ["clip_score"]},
        labels={"reward": "human"},
        objectives={"dpo": {"loss": "dpo"}},
    )
    for stage in ("prompts", "candidates", "rewards", "labels"):
        run(params, stage)
    run(params, "train", "--objective", "dpo", "--seed", "0")
    res = tmp_path / "results"
    held_out = set().union(  # test and validation prompts: never trained on
        *(pd.read_parquet(res / "prompts" / f"{s}.parquet").prompt for s in ("eval", "val"))
    )
    cands = pd.read_parquet(res / "candidates" / "prompts.parquet")
    assert held_out and not held_out & set(cands.prompt)
    prefs = pd.read_parquet(res / "candidates" / "preferences.parquet")
    pairs = pd.read_parquet(res / "labels" / "pairwise.parquet")
    assert prefs[["prompt_id", "winner", "loser"]].equals(pairs[["prompt_id", "winner", "loser"]])
    # each kept row is one pair; the tie and the eval and validation captions are gone
    train_rows = [r for r in rows if r[0] not in held_out and r[3] != 0.5]
    assert len(pairs) == len(train_rows)
    assert np.load(res / "candidates" / "images.npy").shape[1:] == (3, 32, 32)
    tm = json.loads(
        (res / "adapters" / "dpo" / "seed0" / "round1" / "train_metrics.json").read_text()
    )
    assert tm["n_examples"] == len(pairs) and np.isfinite(tm["summary"]["final_loss"])
