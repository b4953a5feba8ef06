# Shared wiring: the objectives to expand, the command prefix and each rule's params sections.
from pathlib import Path

from diffpref.config import stage_params

PROFILE = config.get("profile", "default")
OBJECTIVES = list(config.get("objectives") or {})
DIFFPREF = f"diffpref {{stage}} --params params.yaml --profile {PROFILE} --threads {{threads}}"


def cmd(stage, objective=None):
    suffix = f" --objective {objective}" if objective else ""
    return DIFFPREF.format(stage=stage, threads="{threads}") + suffix


def params_of(stage, objective=None):
    """The params sections a stage reads: Snakemake reruns a job when they change."""
    return stage_params(config, stage, objective)


wildcard_constraints:
    objective="(?!base$)[A-Za-z0-9_.-]+",


def py(path):
    """A source folder as its .py files: Snakemake sees file edits, not just folder mtimes."""
    p = Path(path)
    return sorted(str(f) for f in p.rglob("*.py")) if p.is_dir() else [str(p)]
