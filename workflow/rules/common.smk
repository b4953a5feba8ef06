# Shared wiring: the objectives and training seeds to expand, the command prefix, each
# rule's params sections and its job resources.
import os
import uuid
from pathlib import Path

from diffpref.config import (
    DEFAULT_TRAIN_SEEDS,
    job_resources,
    stage_params,
    user_data,
    with_profile,
)

# one id per `snakemake` invocation: every stage's MLflow run nests under that execution's run
os.environ.setdefault("DIFFPREF_PIPELINE_ID", f"snakemake-{uuid.uuid4().hex[:12]}")
PROFILE = config.get("profile", "default")
OBJECTIVES = list(config.get("objectives") or {})
# the active profile's seeds (DVC, which cannot see profiles, expands the top-level list)
SEEDS = with_profile(dict(config)).get("train_seeds", DEFAULT_TRAIN_SEEDS)
DIFFPREF = f"diffpref {{stage}} --params params.yaml --profile {PROFILE} --threads {{threads}}"


def cmd(stage, objective=None, seed=None):
    suffix = f" --objective {objective}" if objective else ""
    suffix += f" --seed {seed}" if seed is not None else ""
    return DIFFPREF.format(stage=stage, threads="{threads}") + suffix


def params_of(stage, objective=None):
    """The params sections a stage reads: Snakemake reruns a job when they change."""
    return stage_params(config, stage, objective)


def data_of(stage):
    """The user's data files the stage reads (a prompt file, a Pick-a-Pic shard): an edit
    reruns it. dvc.yaml depends on their folders instead (config.DATA_DIRS)."""
    return user_data(config, stage)


def res(stage):
    """The stage's job resources from params.yaml, by backbone kind: ``.cpus`` for threads,
    ``.scheduler`` for the rule's resources (what SLURM is asked for)."""
    return job_resources(config, stage)


wildcard_constraints:
    objective="(?!base(?![A-Za-z0-9_-]))[A-Za-z0-9][A-Za-z0-9_-]*",
    seed=r"\d+",


def py(path):
    """A source folder as its .py files: Snakemake sees file edits, not just folder mtimes."""
    p = Path(path)
    return sorted(str(f) for f in p.rglob("*.py")) if p.is_dir() else [str(p)]


onstart:
    # the MLflow store, created once before parallel jobs (or the run stops if it is unusable)
    shell("diffpref tracking-init")
