"""One MLflow run per executed stage, tagged so runs join with git and DVC.

Metrics are buffered in memory and written in one batch when the stage ends, under a file lock:
parallel Snakemake jobs share one SQLite store, and SQLite plus concurrent schema migrations
is the known way to get ``database is locked``. A crashed stage still gets a FAILED run.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPERIMENT = "diffpref"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute SQLite file at the project root.

    Absolute because ``dvc exp run --temp`` runs stages in a copy of the repo, where a relative
    ``sqlite:///mlflow.db`` would land inside the throw-away copy.
    """
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    root = Path(os.environ.get("DVC_ROOT") or _git_root() or Path.cwd())
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def _git_root() -> Path | None:
    out = _git("rev-parse", "--show-toplevel")
    return Path(out) if out else None


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> str:
    sha = _git("rev-parse", "HEAD") or "unknown"
    return sha + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def run_name(stage: str, objective: str | None, seed: int | None = None) -> str:
    """``train@dpo/seed1``: the stage, its objective and its training replicate."""
    return stage + (f"@{objective}" if objective else "") + ("" if seed is None else f"/seed{seed}")


@dataclass
class StageRun:
    """Collects what a stage reports; written to MLflow when the stage ends."""

    stage: str
    objective: str | None
    params: dict[str, Any]
    params_hash: str
    seed: int | None = None
    metrics: list[tuple[str, float, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.metrics.append((key, float(value), int(step)))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        for k, v in metrics.items():
            if isinstance(v, int | float):
                self.log_metric(k, v, step)

    def log_artifact(self, path: Path) -> None:
        self.artifacts.append(Path(path))


@contextmanager
def stage_run(
    stage: str,
    objective: str | None,
    params: dict[str, Any],
    params_hash: str,
    seed: int | None = None,
) -> Iterator[StageRun]:
    run = StageRun(stage, objective, params, params_hash, seed)
    start = time.perf_counter()
    status = "FINISHED"
    try:
        yield run
    except BaseException:
        status = "FAILED"
        raise
    finally:
        run.log_metric("wall_time_s", time.perf_counter() - start)
        if os.environ.get("DIFFPREF_MLFLOW", "1") != "0":
            _flush(run, status)


def _flush(run: StageRun, status: str) -> None:
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    uri = tracking_uri()
    lock_path = _lock_path(uri)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
        name = run_name(run.stage, run.objective, run.seed)
        tags = {
            "stage": run.stage,
            "objective": run.objective or "",
            "train_seed": "" if run.seed is None else str(run.seed),
            "git_commit": git_commit(),
            "params_hash": run.params_hash,
            "mlflow.runName": name,
            **{k: os.environ[k] for k in ("DVC_STAGE", "DVC_EXP_NAME") if k in os.environ},
            **run.tags,
        }
        mlrun = client.create_run(exp_id, run_name=name, tags=tags)
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in flatten(run.params).items()]
        metrics = [Metric(k, v, now, s) for k, v, s in run.metrics]
        rid = mlrun.info.run_id
        for i in range(0, max(len(params), 1), 100):
            client.log_batch(rid, params=params[i : i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i : i + 1000])
        client.log_batch(rid, tags=[RunTag(k, v) for k, v in tags.items()])
        for path in run.artifacts:
            if path.exists():
                client.log_artifact(rid, str(path))
        client.set_terminated(rid, status=status)


def _lock_path(uri: str) -> Path:
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///") + ".lock")
    return Path(os.environ.get("TMPDIR", "/tmp")) / "diffpref-mlflow.lock"
