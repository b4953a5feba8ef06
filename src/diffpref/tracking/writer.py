"""The writer process (``python -m diffpref.tracking``): writes a stage's run in one batch,
nested under its pipeline execution's parent run, or keeps it in ``.mlflow-pending/`` for
:func:`replay` when the store cannot be written."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TextIO

from diffpref.tracking.provenance import DVC_TAGS, digest, disk_size, git_commit
from diffpref.tracking.stage import now_ms, run_name
from diffpref.tracking.store import flock, open_experiment, pending_dir, store_lock, tracking_uri

PIPELINE_TAG = "diffpref.pipeline"


class Writer:
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
        size = disk_size(path)
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


def write_record(head: dict, stdin: TextIO) -> None:
    """The helper process of :func:`stage_run`: connect while the stage works, then write the
    run from the stage's final message, or as KILLED when its pipe closes without one (or
    the stage is gone by the time its record is written). When the store cannot be written
    the record is spooled and the stage gets a warning."""
    writer = Writer(head, stage_pid=os.getppid())
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
    return {"status": "KILLED", "end_ms": now_ms(), "metrics": [], "tags": {}, "artifacts": []}


def replay() -> list[str]:
    """Write the spooled records to the store configured now, oldest first, each removed once
    written; the names of the runs written. Raises what the store raises (the rest stay)."""
    folder = pending_dir()
    if not folder.is_dir():
        return []
    done = []
    with flock(folder / ".lock"):  # two replays at once would write each record twice
        for f in sorted(folder.glob("*.json")):
            rec = json.loads(f.read_text())
            writer = Writer(rec["head"], rec["context"])
            writer.connect()
            writer.write(rec["tail"])
            f.unlink()
            shutil.rmtree(f.with_suffix(""), ignore_errors=True)
            done.append(_name(rec["head"]))
    return done
