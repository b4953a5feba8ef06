"""The measured comparison behind the online defaults (docs/online-rounds.md): each option of
an online round (candidates per prompt ``online.k``, pairs ``online.pairs``, the margin
``online.tie_threshold``, ``online.prompts``) against the defaults, on dpo's round 2.

It goes on from a finished ``rounds`` run (``snakemake --cores 2 --config profile=rounds``):
each variant is a copy of that project (times kept, so Snakemake sees what is up to date) with
one online setting changed and the rounds cut to dpo's round 2; Snakemake then reruns only
dpo's round-2 jobs (its own samples, rewards, labels, training, evaluation: the online
settings are all they read) and the report. Round 1 and the compute-matched control
``matched2`` are the run's own, so every variant is judged against the same models.

    python3 workflow/scripts/online_options.py --project . --work /tmp/options

prints the README's table: per variant, round 2's win rate vs the base and head-to-head vs
``matched2`` (the report's seed-aware intervals, from its ``results/metrics``), and the images
round 2 sampled with their sampling time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import yaml

# one change each from the defaults (params.yaml online:); "defaults": the run's own round 2
VARIANTS: dict[str, dict] = {
    "defaults (k 4, all pairs, margin 0.05, same prompts)": {},
    "k 8": {"k": 8},
    "best_worst pairs": {"pairs": "best_worst"},
    "margin 0.2": {"tie_threshold": 0.2},
    "fresh prompts": {"prompts": "fresh"},
}
OBJECTIVE, PROFILE = "dpo", "rounds"


def variant_project(src: Path, dst: Path, change: dict) -> Path:
    """A copy of the finished project with the rounds profile cut to dpo's round 2 and
    ``change`` made to its online settings."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("mlruns"))
    params = dst / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    online = raw["profiles"][PROFILE]["online"]
    online.update(objectives=[OBJECTIVE], rounds=[{"round": 2, "after": 1}], **change)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dst


def run(root: Path, cores: str) -> float:
    start = time.perf_counter()
    cmd = ["snakemake", "--cores", cores, "--config", f"profile={PROFILE}"]
    env = os.environ | {"DIFFPREF_MLFLOW": "0"}  # the copy's store points at the original's
    subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def measured(root: Path) -> dict:
    metrics = json.loads((root / f"results/metrics/{OBJECTIVE}.round2.json").read_text())
    folder = root / "results" / "online" / OBJECTIVE
    sampled = [
        json.loads(f.read_text()) for f in folder.glob("seed*/round2/candidates/sampling.json")
    ]
    metrics["images"] = sum(s["images"] for s in sampled)
    metrics["sampling_time_s"] = sum(s["sampling_time_s"] for s in sampled)
    return metrics


def interval(m: dict, key: str) -> str:
    return f"{m[key]:.3f} [{m[key + '_low']:.3f}, {m[key + '_high']:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=Path("."), help="a finished rounds run")
    ap.add_argument("--work", type=Path, required=True, help="where the variants' copies go")
    ap.add_argument("--cores", default="2")
    args = ap.parse_args()
    rows = []
    for name, change in VARIANTS.items():
        if not change:
            root, wall = args.project.resolve(), 0.0
        else:
            slug = "-".join(f"{k}{v}" for k, v in change.items())
            root = variant_project(args.project.resolve(), args.work / slug, change)
            wall = run(root, args.cores)
            print(f"{name}: rerun in {wall:.0f} s", flush=True)
        rows.append((name, measured(root), wall))
    print(
        "\n| round 2 of dpo | win vs base | vs matched2 | images sampled | sampling time | rerun |"
    )
    print("|---|---|---|---|---|---|")
    for name, m, wall in rows:
        print(
            f"| {name} | {interval(m, 'win')} | {interval(m, 'vs_matched')} | {m['images']} | "
            f"{m['sampling_time_s']:.0f} s | {'the run itself' if not wall else f'{wall:.0f} s'} |"
        )


if __name__ == "__main__":
    main()
