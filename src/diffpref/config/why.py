"""``diffpref why <job>``: why a job would rerun, in the terms both tools use.

- **params**: each key the job read last time (its ``_reads.json``) whose resolved value
  differs now, and keys it would now read that it did not (from :func:`dag.params`);
- **code**: the files of its computed code changed since it ran: by content against
  ``dvc.lock`` when DVC ran it (a config-picked module against the job's resolved file, so ask
  before ``dvc repro`` rewrites it), else by modification time against its outputs
  (Snakemake's rule);
- **inputs**: upstream outputs newer than its own (Snakemake; DVC hashes them, see
  ``dvc status``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from diffpref import settings
from diffpref.config import dag
from diffpref.config.dvc import digest, job_file
from diffpref.config.schema import Config

JOB = re.compile(
    r"(?P<row>\w+)(?:@(?P<objective>[A-Za-z0-9][\w-]*)-(?P<seed>\d+)(?:-round(?P<index>\d+))?)?"
)


def dvc_name(row: str, objective: str | None, seed: int | None, rnd: int = 1) -> str:
    """The job as DVC names it: ``train@dpo-0``; a round's job adds the index of its entry
    in ``online.rounds`` (``train_round@dpo-0-round0`` is round 2)."""
    if objective is None or row == "evaluate_base":
        return row
    return f"{row}@{objective}-{seed}" + (f"-round{rnd - 2}" if dag.STAGES[row].per_round else "")


def parse(job: str, cfg: Config) -> tuple[str, str | None, int | None, int]:
    """``train@dpo-0`` -> (row, objective, seed, round), as DVC names jobs; ValueError
    naming the jobs that exist."""
    m = JOB.fullmatch(job)
    known = [dvc_name(*j) for j in dag.jobs(cfg)]
    if not m or job not in known:
        raise ValueError(f"no job {job!r} in this DAG (jobs: {', '.join(known)})")
    seed, index = m["seed"], m["index"]
    rnd = 1 if index is None else int(index) + 2
    return m["row"], m["objective"], None if seed is None else int(seed), rnd


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def explain(job: str, cfg: Config, root: Path = Path(".")) -> list[str]:
    """Lines saying why ``job`` would rerun; empty when nothing it depends on changed."""
    row, objective, seed, rnd = parse(job, cfg)
    obj = "base" if row == "evaluate_base" else objective
    out_dir = root / dag.output_dir(row, cfg, obj, seed, rnd)
    reads_file = out_dir / settings.READS_FILE
    if not reads_file.is_file():
        return [f"{job}: never ran here ({reads_file} is missing): it runs"]
    lines = []
    recorded: dict[str, Any] = json.loads(reads_file.read_text())
    tree = dag.resolved(cfg)
    for key, old in sorted(recorded.items()):
        if (new := dag.value_at(tree, key)) != old:
            lines.append(f"params: {key}: {json.dumps(old)} -> {json.dumps(new)}")
    for key in dag.keys(row, cfg, obj):
        if not any(k == key or k.startswith(key + ".") for k in recorded):
            lines.append(f"params: {key}: now read (not read when it ran)")
    lock = _locked(root, job)
    code = dag.code(row, cfg, objective)
    if lock is not None:  # DVC: dvc.lock, and the config-picked modules' digests
        picked = _resolved_digests(root, row, objective)
        for f in code:
            if f in lock and _md5(root / f) != lock[f]:
                lines.append(f"code: {f} changed (content differs from dvc.lock)")
            elif f in picked and digest(str(root / f)) != picked[f]:
                lines.append(f"code: {f} changed (differs from its resolved file)")
            elif f not in lock and f not in picked:
                lines.append(f"code: {f} is new among its code")
        resolved = job_file(row, objective if dag.stage_of(row) == "train" else None)
        if resolved in lock and _md5(root / resolved) != lock[resolved] and not lines:
            lines.append(f"resolved: {resolved} differs from the one it ran with (`dvc status`)")
    else:
        ran = reads_file.stat().st_mtime
        lines += [
            f"code: {f} changed (newer than its outputs)"
            for f in code
            if (root / f).stat().st_mtime > ran
        ]
        for dep in dag.STAGES[row].deps:
            path = root / dep.format(objective=objective, seed=seed, round=rnd, after=rnd - 1)
            if path.exists() and path.stat().st_mtime > ran:
                lines.append(f"inputs: {path.relative_to(root)} is newer than its outputs")
    return lines


def _locked(root: Path, job: str) -> dict[str, str] | None:
    """The md5 of each file dependency DVC recorded for ``job`` (None: DVC never ran it)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    entry = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(job)
    if entry is None:
        return None
    return {d["path"]: d.get("md5", "") for d in entry.get("deps", [])}


def _resolved_digests(root: Path, row: str, objective: str | None) -> dict[str, str]:
    """Config-picked modules DVC follows through the job's resolved file, not dvc.lock."""
    path = root / job_file(row, objective if dag.stage_of(row) == "train" else None)
    return (yaml.safe_load(path.read_text()) or {}).get("code", {}) if path.is_file() else {}
