"""One MLflow run per executed stage, tagged so runs join with git and DVC.

The record is written by a small helper process (``python -m diffpref.tracking``) started with
the stage: it imports MLflow (about a second) on the other core while the stage imports torch
and works, then waits. The run's identity is in the helper's pipe before it starts (a helper
never runs without a run to record), the metrics follow at the end; the helper writes
everything in one batch under a file lock (parallel Snakemake jobs share one SQLite store, and
SQLite plus concurrent schema migrations is the known way to get ``database is locked``), with
the stage's real start and end times. A stage that raises gets a FAILED run; one killed
outright (the helper sees its pipe close with no final record) a KILLED run, so no run stays
RUNNING forever. A store that cannot be written (a server that is down) costs the stage
nothing: the helper keeps the record in ``.mlflow-pending/`` at the project root, warns, and
``diffpref tracking-replay`` (or the next ``tracking-init``) writes it later.
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
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from diffpref import launch

EXPERIMENT = "diffpref"
KIND_TAG = "mlflow.experimentKind"
PIPELINE_TAG = "diffpref.pipeline"
DVC_TAGS = ("DVC_STAGE", "DVC_EXP_NAME")  # a stage's DVC environment, kept as run tags


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute SQLite file at the project root.

    Absolute because ``dvc exp run --temp`` runs stages in a copy of the repo, where a relative
    ``sqlite:///mlflow.db`` would land inside the throw-away copy.
    """
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{(_project_root() / 'mlflow.db').resolve()}"


def _project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or _git_root() or Path.cwd())


def pending_dir() -> Path:
    """Where records that could not be written wait for :func:`replay`: at the project root,
    outside every stage output, so neither DVC nor Snakemake removes them."""
    return (_project_root() / ".mlflow-pending").resolve()


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
    data = (json.dumps(head) + "\n").encode()
    # The run's identity is in the helper's pipe before the helper exists: once it runs, a
    # kill of the stage at any moment leaves it a run to record as KILLED (sent after it
    # started, a kill in between left a helper with an empty pipe, and no run at all). The
    # pipe grows to hold it (64 KiB by default, 1 MiB allowed); what still does not fit
    # follows once the helper reads.
    read_end, write_end = os.pipe()
    if len(data) > 1 << 16:
        with suppress(OSError):
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, len(data))
    os.set_blocking(write_end, False)
    try:
        sent = os.write(write_end, data)
    except BlockingIOError:
        sent = 0
    os.set_blocking(write_end, True)
    try:
        # its own session: a kill of the stage's process group (Ctrl-C, `kill -9 -PGID`)
        # leaves it to record the run as FAILED or KILLED
        writer = subprocess.Popen(
            [sys.executable, "-m", "diffpref.tracking"], stdin=read_end, start_new_session=True
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    while sent < len(data):
        sent += os.write(write_end, data[sent:])
    writer.stdin = open(write_end, "w")  # noqa: SIM115 (closed by _finish_writer)
    return writer


def _finish_writer(writer: subprocess.Popen, run: StageRun, status: str) -> None:
    """Hand the helper the results and wait for the record. A helper that failed outright (it
    spools the record itself when only the store fails) is a warning: the stage's outputs are
    written, and failing the stage would make DVC or Snakemake discard them."""
    tail = {
        "status": status,
        "end_ms": _now_ms(),
        "metrics": run.metrics,
        "tags": run.tags,
        "artifacts": run.artifacts,
        "scratch": run._scratch,
    }
    assert writer.stdin is not None
    try:
        with writer.stdin:
            writer.stdin.write(json.dumps(tail) + "\n")
    except BrokenPipeError:  # the helper is gone: its exit code below says so
        pass
    writer.wait()
    if writer.returncode != 0:
        name = run_name(run.stage, run.objective, run.seed)
        print(
            f"WARNING: the MLflow record of {name} was not written (its writer exited with "
            f"{writer.returncode}; see above)",
            file=sys.stderr,
        )


class _Writer:
    """The helper process's side: everything that does not need the stage's results (MLflow
    import, store, experiment, git commit) is done while the stage works. ``context``: the
    facts of the stage's time and place (commit, DVC tags, input digests), from a spooled
    record when it is replayed. ``stage_pid``: the stage process, which waits for its record
    (None on a replay)."""

    def __init__(self, head: dict, context: dict | None = None, stage_pid: int | None = None):
        self.head, self.uri, self.stage_pid = head, tracking_uri(), stage_pid
        self.context = context or {
            "commit": git_commit(),
            "env_tags": {k: os.environ[k] for k in DVC_TAGS if k in os.environ},
            # the inputs do not change while the stage runs: hash them now, on the other core
            "datasets": [
                (name, path, digest(Path(path)))
                for name, path in head["inputs"]
                if Path(path).exists()
            ],
        }

    def connect(self) -> None:
        self.client, self.exp_id = open_experiment(self.uri)

    def write(self, tail: dict) -> None:
        """Write the run, in one batch under the store's lock."""
        from mlflow.entities import Metric, Param, RunTag

        head, client = self.head, self.client
        name = _name(head)
        tags = {
            "stage": head["stage"],
            "objective": head["objective"] or "",
            "train_seed": "" if head["seed"] is None else str(head["seed"]),
            "git_commit": self.context["commit"],
            "params_hash": head["params_hash"],
            "mlflow.runName": name,
            **self.context["env_tags"],
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
            if self.context["datasets"]:
                client.log_inputs(rid, datasets=self._dataset_inputs())
            for path, name in tail["artifacts"]:
                self._log_artifact(rid, Path(path), name)
            status = tail["status"]
            if status == "FINISHED" and self.stage_pid and os.getppid() != self.stage_pid:
                status = "KILLED"  # killed while it waited for its record: its tool saw it fail
            client.set_terminated(rid, status=status, end_time=end)
            if parent:  # the execution ends with its last stage; any failure marks it FAILED
                info = client.get_run(parent).info
                failed = status != "FINISHED" or info.status == "FAILED"
                client.set_terminated(
                    parent, "FAILED" if failed else "FINISHED", max(end, info.end_time or 0)
                )

    def _dataset_inputs(self) -> list:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        context = {"train": "training", "evaluate": "evaluation"}.get(self.head["stage"], "input")
        out = []
        for name, path, dig in self.context["datasets"]:
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
        tags = {PIPELINE_TAG: key, "git_commit": self.context["commit"]}
        if phash := self.head.get("options", {}).get("pipeline_params_hash"):
            tags["params_hash"] = phash
        if exp := self.context["env_tags"].get("DVC_EXP_NAME"):
            tags["DVC_EXP_NAME"] = exp
        run = self.client.create_run(
            self.exp_id, start_time=start_ms, run_name="pipeline", tags=tags
        )
        return run.info.run_id

    def spool(self, tail: dict, error: Exception) -> Path:
        """Keep the record for :func:`replay`, with copies of the figures made for it alone
        (the stage deletes its scratch folder); the stage outputs it names stay where they
        are. Returns the record's file."""
        from diffpref.io import write_json_atomic

        folder = pending_dir()
        folder.mkdir(exist_ok=True)
        record = folder / f"{self.head['start_ms']}-{os.getpid()}.json"
        if scratch := tail.get("scratch"):
            kept = shutil.copytree(scratch, record.with_suffix(""))
            for artifact in tail["artifacts"]:  # [path, name]
                if Path(artifact[0]).is_relative_to(scratch):
                    artifact[0] = str(kept / Path(artifact[0]).relative_to(scratch))
        write_json_atomic(
            record, {"head": self.head, "tail": tail, "context": self.context, "error": str(error)}
        )
        return record


def _record(head: dict, stdin: TextIO) -> None:
    """The helper process of :func:`stage_run`: connect while the stage works, then write the
    run from the stage's final message, or as KILLED when its pipe closes without one (or
    the stage is gone by the time its record is written). When the store cannot be written
    the record is spooled and the stage gets a warning."""
    writer = _Writer(head, stage_pid=os.getppid())
    try:
        writer.connect()
        failure = None
    except Exception as e:  # a server that is down: met again below, as a spooled record
        failure = e
    line = stdin.readline()
    tail = json.loads(line) if line else _killed()
    if failure is None:
        try:
            writer.write(tail)
            return
        except Exception as e:
            failure = e
    record = writer.spool(tail, failure)
    print(
        f"WARNING: MLflow store {writer.uri} could not be written ({type(failure).__name__}: "
        f"{failure}); the record of {_name(head)} is kept in {record}: `diffpref tracking-replay` "
        "writes it once the store works",
        file=sys.stderr,
    )


def _name(head: dict) -> str:
    return run_name(head["stage"], head["objective"], head["seed"])


def _killed() -> dict:
    return {"status": "KILLED", "end_ms": _now_ms(), "metrics": [], "tags": {}, "artifacts": []}


def replay() -> list[str]:
    """Write the spooled records to the store configured now, oldest first, each removed once
    written; the names of the runs written. Raises what the store raises (the rest stay)."""
    folder = pending_dir()
    if not folder.is_dir():
        return []
    done = []
    with _flock(folder / ".lock"):  # two replays at once would write each record twice
        for f in sorted(folder.glob("*.json")):
            rec = json.loads(f.read_text())
            writer = _Writer(rec["head"], rec["context"])
            writer.connect()
            writer.write(rec["tail"])
            f.unlink()
            shutil.rmtree(f.with_suffix(""), ignore_errors=True)
            done.append(_name(rec["head"]))
    return done


UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def latest_runs(keys: list[tuple[str, str, int | None, str]]) -> dict[tuple, dict[str, str]]:
    """For each (stage, objective, train seed, params hash), the newest FINISHED run that
    produced it: its id, its page in the MLflow UI and its artifacts folder. Runs whose params
    differ from the current ones (another ``dvc exp``, an older setting) never match."""
    import mlflow

    bounded_retries()
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

    bounded_retries()
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


def bounded_retries() -> None:
    """A server that is down: fail in seconds, not after MLflow's default ~4 min of retries
    (set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` to wait longer)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")


def store_lock(uri: str):
    """Serialises this machine's writers of one store (schema creation, pipeline parent runs)."""
    return _flock(_lock_path(uri))


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _lock_path(uri: str) -> Path:
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///") + ".lock")
    return Path(os.environ.get("TMPDIR", "/tmp")) / "diffpref-mlflow.lock"


if __name__ == "__main__" and (head_line := sys.stdin.readline()):
    _record(json.loads(head_line), sys.stdin)
