"""One MLflow run per executed stage, tagged so runs join with git and DVC.

The record is written by a small helper process (``python -m diffpref.tracking``) started with
the stage: it imports MLflow (about a second) on the other core while the stage imports torch
and works, then waits. The stage sends it the run's identity at the start and the metrics at
the end; the helper writes everything in one batch under a file lock (parallel Snakemake jobs
share one SQLite store, and SQLite plus concurrent schema migrations is the known way to get
``database is locked``), with the stage's real start and end times. A stage that raises gets a
FAILED run; one killed outright (the helper sees its pipe close with no final record) a KILLED
run, so no run stays RUNNING forever.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffpref import launch

EXPERIMENT = "diffpref"
KIND_TAG = "mlflow.experimentKind"
PIPELINE_TAG = "diffpref.pipeline"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute SQLite file at the project root.

    Absolute because ``dvc exp run --temp`` runs stages in a copy of the repo, where a relative
    ``sqlite:///mlflow.db`` would land inside the throw-away copy.
    """
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    root = Path(os.environ.get("DVC_ROOT") or _git_root() or Path.cwd())
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store go to ``mlartifacts/`` beside it (absolute, like the
    store, so runs from ``dvc exp run --temp`` copies land there too); a server decides its
    own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


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


def pipeline_id() -> str | None:
    """Which pipeline execution a stage belongs to, so its run nests under that execution's
    parent run: ``DIFFPREF_PIPELINE_ID`` (the Snakefile sets one per ``snakemake`` invocation)
    or else the nearest ``dvc`` process above this one (its pid and start time, unique per
    ``dvc repro`` / ``dvc exp run``); None for a stage run by hand."""
    if key := os.environ.get("DIFFPREF_PIPELINE_ID"):
        return key
    try:
        stat = _proc_stat(os.getpid())
        for _ in range(12):
            pid = int(stat[1])  # the parent
            if pid <= 1:
                return None
            stat = _proc_stat(pid)
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            names = [Path(a.decode(errors="replace")).name for a in argv[:3]]
            if "dvc" in names[:2] or names[1:3] == ["-m", "dvc"]:
                return f"dvc-{pid}-{stat[19]}"  # field 22: the process's start time
    except (OSError, IndexError, ValueError):
        pass
    return None


def _proc_stat(pid: int) -> list[str]:
    """Fields 3.. of ``/proc/<pid>/stat`` (after the command name, which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def run_name(stage: str, objective: str | None, seed: int | None = None) -> str:
    """``train@dpo/seed1``: the stage, its objective and its training replicate."""
    return stage + (f"@{objective}" if objective else "") + ("" if seed is None else f"/seed{seed}")


@dataclass
class StageRun:
    """Collects what a stage reports; written to MLflow when the stage ends. ``inputs``: the
    data folders the stage reads (name, path), recorded as MLflow datasets with their content
    digests so a result can be traced to the data it came from."""

    stage: str
    objective: str | None
    params: dict[str, Any]
    params_hash: str
    seed: int | None = None
    inputs: list[tuple[str, str]] = field(default_factory=list)
    enabled: bool = True
    metrics: list[tuple[str, float, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    _scratch: str | None = None

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.metrics.append((key, float(value), int(step)))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        for k, v in metrics.items():
            if isinstance(v, int | float):
                self.log_metric(k, v, step)

    def log_artifact(self, path: Path, name: str | None = None) -> None:
        """Copy a file (or a folder, as ``name``) into the run's artifacts when it ends."""
        self.artifacts.append((str(path), name or Path(path).name))

    def log_figure(self, name: str, draw: Callable[[Path], None]) -> None:
        """A figure for the record only (not a stage output, so its plotting code is no stage
        dependency): ``draw(path)`` writes it to a scratch folder kept until the record is
        written. Skipped when nothing is recorded."""
        if not self.enabled:
            return
        self._scratch = self._scratch or tempfile.mkdtemp(prefix="diffpref-run-")
        path = Path(self._scratch, name)
        draw(path)
        self.log_artifact(path)


@contextmanager
def stage_run(
    stage: str,
    objective: str | None,
    params: dict[str, Any],
    params_hash: str,
    seed: int | None = None,
    inputs: dict[str, Path] | None = None,
    options: dict[str, Any] | None = None,
) -> Iterator[StageRun]:
    """``options``: the ``tracking:`` params and ``pipeline_params_hash`` (the whole resolved
    params file's hash, tagged on the execution's parent run)."""
    # none with DIFFPREF_MLFLOW=0, and none but rank 0's when a stage runs as several
    # processes (one run per stage, whatever N)
    enabled = os.environ.get("DIFFPREF_MLFLOW", "1") != "0" and launch.is_main()
    items = [(k, str(v)) for k, v in (inputs or {}).items()]
    run = StageRun(stage, objective, params, params_hash, seed, items, enabled)
    start, start_ms = time.perf_counter(), _now_ms()
    writer = _start_writer(run, start_ms, options or {}) if enabled else None
    status = "FINISHED"
    try:
        yield run
    except BaseException:
        status = "FAILED"
        raise
    finally:
        run.log_metric("wall_time_s", time.perf_counter() - start)
        try:
            if writer is not None:
                _finish_writer(writer, run, status)
        finally:
            if run._scratch:
                shutil.rmtree(run._scratch, ignore_errors=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _start_writer(run: StageRun, start_ms: int, options: dict[str, Any]) -> subprocess.Popen:
    writer = subprocess.Popen(
        [sys.executable, "-m", "diffpref.tracking"], stdin=subprocess.PIPE, text=True
    )
    head = {
        "stage": run.stage,
        "objective": run.objective,
        "seed": run.seed,
        "params": flatten(run.params),
        "params_hash": run.params_hash,
        "start_ms": start_ms,
        "pipeline": pipeline_id(),
        "inputs": run.inputs,
        "options": options,
    }
    assert writer.stdin is not None
    writer.stdin.write(json.dumps(head) + "\n")
    writer.stdin.flush()
    return writer


def _finish_writer(writer: subprocess.Popen, run: StageRun, status: str) -> None:
    tail = {
        "status": status,
        "end_ms": _now_ms(),
        "metrics": run.metrics,
        "tags": run.tags,
        "artifacts": run.artifacts,
    }
    writer.communicate(json.dumps(tail) + "\n")
    if writer.returncode != 0:
        raise RuntimeError(f"writing the MLflow run failed (exit {writer.returncode}); see above")


class _Writer:
    """The helper process's side: everything that does not need the stage's results (MLflow
    import, store, experiment, git commit) is done while the stage works."""

    def __init__(self, head: dict):
        self.head, self.uri = head, tracking_uri()
        self.client, self.exp_id = open_experiment(self.uri)
        self.commit = git_commit()
        # the inputs do not change while the stage runs: hash them now, on the other core
        self.datasets = [
            (name, path, digest(Path(path))) for name, path in head["inputs"] if Path(path).exists()
        ]

    def write(self, tail: dict | None) -> None:
        """Write the run; ``tail`` None: the stage died before reporting (KILLED)."""
        from mlflow.entities import Metric, Param, RunTag

        head, client = self.head, self.client
        tail = tail or {
            "status": "KILLED",
            "end_ms": _now_ms(),
            "metrics": [],
            "tags": {},
            "artifacts": [],
        }
        name = run_name(head["stage"], head["objective"], head["seed"])
        tags = {
            "stage": head["stage"],
            "objective": head["objective"] or "",
            "train_seed": "" if head["seed"] is None else str(head["seed"]),
            "git_commit": self.commit,
            "params_hash": head["params_hash"],
            "mlflow.runName": name,
            **{k: os.environ[k] for k in ("DVC_STAGE", "DVC_EXP_NAME") if k in os.environ},
            **tail["tags"],
        }
        params = [Param(k, v) for k, v in head["params"].items()]
        end = tail["end_ms"]
        metrics = [Metric(k, v, end, s) for k, v, s in tail["metrics"]]
        with store_lock(self.uri):
            parent = self._parent(head.get("pipeline"), head["start_ms"])
            if parent:
                tags |= {"mlflow.parentRunId": parent, PIPELINE_TAG: head["pipeline"]}
            mlrun = client.create_run(
                self.exp_id, start_time=head["start_ms"], run_name=name, tags=tags
            )
            rid = mlrun.info.run_id
            for i in range(0, max(len(params), 1), 100):
                client.log_batch(rid, params=params[i : i + 100])
            for i in range(0, len(metrics), 1000):
                client.log_batch(rid, metrics=metrics[i : i + 1000])
            client.log_batch(rid, tags=[RunTag(k, v) for k, v in tags.items()])
            if self.datasets:
                client.log_inputs(rid, datasets=self._dataset_inputs())
            for path, name in tail["artifacts"]:
                self._log_artifact(rid, Path(path), name)
            client.set_terminated(rid, status=tail["status"], end_time=end)
            if parent:  # the execution ends with its last stage; any failure marks it FAILED
                info = client.get_run(parent).info
                failed = tail["status"] != "FINISHED" or info.status == "FAILED"
                client.set_terminated(
                    parent, "FAILED" if failed else "FINISHED", max(end, info.end_time or 0)
                )

    def _dataset_inputs(self) -> list:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        context = {"train": "training", "evaluate": "evaluation"}.get(self.head["stage"], "input")
        out = []
        for name, path, dig in self.datasets:
            with warnings.catch_warnings():  # a file URI matches its source class, registered twice
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(Path(path).resolve().as_uri())
            entity = MetaDataset(source, name, dig)._to_mlflow_entity()
            out.append(DatasetInput(entity, [InputTag("mlflow.data.context", context)]))
        return out

    def _log_artifact(self, rid: str, path: Path, name: str) -> None:
        """Copy it into the run's artifacts, or, when ``tracking.log_large_artifacts`` is off
        and it is large, log a reference (``<name>.ref.json``: where it is, its size and
        digest) so a store of many SDXL adapters does not hold a second copy of each."""
        if not path.exists():
            return
        opts = self.head.get("options", {}).get("tracking", {})
        size = _size(path)
        if not opts.get("log_large_artifacts", True) and size > opts.get(
            "large_artifact_mb", 100
        ) * (1 << 20):
            ref = {"path": str(path.resolve()), "bytes": size, "digest": digest(path)}
            with tempfile.TemporaryDirectory() as tmp:
                f = Path(tmp, f"{name}.ref.json")
                f.write_text(json.dumps(ref, indent=1))
                self.client.log_artifact(rid, str(f))
        elif path.is_dir():
            self.client.log_artifacts(rid, str(path), artifact_path=name)
        else:
            self.client.log_artifact(rid, str(path))

    def _parent(self, key: str | None, start_ms: int) -> str | None:
        """The run of pipeline execution ``key``, created by its first stage (under the lock)."""
        if not key:
            return None
        found = self.client.search_runs(
            [self.exp_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = '{key}' and tags.`mlflow.runName` = 'pipeline'",
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        tags = {PIPELINE_TAG: key, "git_commit": self.commit}
        if phash := self.head.get("options", {}).get("pipeline_params_hash"):
            tags["params_hash"] = phash
        tags |= {k: os.environ[k] for k in ("DVC_EXP_NAME",) if k in os.environ}
        run = self.client.create_run(
            self.exp_id, start_time=start_ms, run_name="pipeline", tags=tags
        )
        return run.info.run_id


UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def latest_runs(keys: list[tuple[str, str, int | None, str]]) -> dict[tuple, dict[str, str]]:
    """For each (stage, objective, train seed, params hash), the newest FINISHED run that
    produced it: its id, its page in the MLflow UI and its artifacts folder. Runs whose params
    differ from the current ones (another ``dvc exp``, an older setting) never match."""
    import mlflow

    uri = tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return {}
    ui = uri if uri.startswith(("http://", "https://")) else UI_DEFAULT
    found = client.search_runs(
        [exp.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=50_000,
    )
    out: dict[tuple, dict[str, str]] = {}
    wanted = set(keys)
    for r in found:
        t = r.data.tags
        key = (
            t.get("stage"),
            t.get("objective"),
            int(t["train_seed"]) if t.get("train_seed") else None,
            t.get("params_hash"),
        )
        if key in wanted and key not in out:
            out[key] = {
                "run_id": r.info.run_id,
                "url": f"{ui.rstrip('/')}/#/experiments/{exp.experiment_id}/runs/{r.info.run_id}",
                "artifacts": r.info.artifact_uri,
            }
    return out


def _files(path: Path) -> list[Path]:
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in _files(path))


def digest(path: Path) -> str:
    """Content digest of a file or folder (relative names and bytes), 16 hex characters: equal
    digests, equal data, whichever machine or checkout produced it."""
    h = hashlib.sha256()
    for f in _files(path):
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:16]


def open_experiment(uri: str) -> tuple[Any, str]:
    """An ``MlflowClient`` on ``uri`` and the id of the ``diffpref`` experiment, creating the
    store and the experiment if they are new.

    Under :func:`store_lock`: a brand-new SQLite store created by several jobs at once gets
    concurrent schema migrations and breaks for good. A store from an older MLflow fails here
    with MLflow's own advice (``mlflow db upgrade``), which is why the Snakefile calls this once
    (``diffpref tracking-init``) before any job runs.
    """
    import mlflow

    with store_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        exp_id = (
            exp.experiment_id
            if exp
            else client.create_experiment(EXPERIMENT, artifact_location=artifact_location(uri))
        )
        if exp is None or KIND_TAG not in exp.tags:  # open the UI on runs, not GenAI traces
            client.set_experiment_tag(exp_id, KIND_TAG, "custom_model_development")
    return client, exp_id


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialises this machine's writers of one store (schema creation, pipeline parent runs)."""
    with open(_lock_path(uri), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _lock_path(uri: str) -> Path:
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///") + ".lock")
    return Path(os.environ.get("TMPDIR", "/tmp")) / "diffpref-mlflow.lock"


if __name__ == "__main__":  # the writer process of :func:`stage_run`
    head_line = sys.stdin.readline()
    if head_line:
        writer = _Writer(json.loads(head_line))
        tail_line = sys.stdin.readline()
        writer.write(json.loads(tail_line) if tail_line else None)
