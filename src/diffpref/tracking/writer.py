"""The writer process (``python -m diffpref.tracking``): writes a stage's run in one batch,
nested under its pipeline execution's parent run, or keeps it in ``.mlflow-pending/`` for
:func:`replay` when the store cannot be written. A record the store refuses for its content
(:func:`~diffpref.tracking.store.is_content_error`), which no later attempt could write, is
set aside in ``.mlflow-quarantine/`` with one warning instead, so it never blocks a replay."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from contextlib import suppress
from pathlib import Path
from typing import TextIO

from diffpref.tracking.provenance import DVC_TAGS, digest, disk_size, git_commit
from diffpref.tracking.stage import now_ms, run_name
from diffpref.tracking.store import (
    flock,
    is_content_error,
    open_experiment,
    pending_dir,
    quarantine_dir,
    store_lock,
    tracking_uri,
)

PIPELINE_TAG = "diffpref.pipeline"
RECORD_TAG = "diffpref.record"  # the record a run was written from (its spooled file's name)


class Writer:
    """The helper process's side: everything that does not need the stage's results (MLflow
    import, store, experiment, git commit) is done while the stage works. ``context``: the
    facts of the stage's time and place (commit, DVC tags, input digests), from a spooled
    record when it is replayed. ``stage_pid``: the stage process, which waits for its record
    (None on a replay). ``record_id``: the record's identity, tagged on its run (and the name
    of its file once spooled), by which a replay finds what an earlier attempt wrote."""

    def __init__(
        self,
        head: dict,
        context: dict | None = None,
        stage_pid: int | None = None,
        record_id: str | None = None,
    ):
        from diffpref.tracking import names  # imports MLflow: the writer's, never the stage's

        self.head, self.uri, self.stage_pid = head, tracking_uri(), stage_pid
        self.record_id = names.key(record_id or f"{head['start_ms']}-{os.getpid()}")
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
        """Write the run, in one batch under the store's lock, every name and value made valid
        for MLflow first (:mod:`~diffpref.tracking.names`). Runs this attempt created are
        discarded if it fails (ended FAILED, then deleted: none is left RUNNING, and a later
        replay writes the record whole). A replay whose run an earlier attempt completed
        writes nothing (replayed twice, one run); one it left RUNNING is discarded first."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

        from diffpref.tracking import names

        head, client, fix = self.head, self.client, names.Names()
        name = fix.label("run name", _name(head), names.MAX_RUN_NAME_LENGTH)
        pipeline = fix.key("pipeline", head["pipeline"]) if head.get("pipeline") else None
        tags = fix.tags(
            {
                "stage": head["stage"],
                "objective": head["objective"] or "",
                "train_seed": "" if head["seed"] is None else str(head["seed"]),
                **({} if head.get("round") is None else {"round": str(head["round"])}),
                **({"model": head["variant"]} if head.get("variant") else {}),
                "git_commit": self.context["commit"],
                "params_hash": head["params_hash"],
                **self.context["env_tags"],
                **tail["tags"],
            }
        )
        tags |= {"mlflow.runName": name, RECORD_TAG: self.record_id}
        params = [Param(k, v) for k, v in fix.params(head["params"]).items()]
        end = tail["end_ms"]
        metrics = [Metric(k, v, end, s) for k, v, s in fix.metrics(tail["metrics"])]
        datasets = [(*fix.dataset(n, d), p) for n, p, d in self.context["datasets"]]
        if fix.originals:
            tags[names.RENAMED_TAG] = names.ORIGINALS_FILE
        status = tail["status"]
        created: list[str] = []
        with store_lock(self.uri):
            if self.stage_pid is None and self._written_before(name):
                return
            try:
                parent = self._parent(pipeline, head["start_ms"], created)
                if parent:
                    tags |= {"mlflow.parentRunId": parent, PIPELINE_TAG: pipeline}
                mlrun = client.create_run(
                    self.exp_id, start_time=head["start_ms"], run_name=name, tags=tags
                )
                rid = mlrun.info.run_id
                created.append(rid)
                for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
                    client.log_batch(rid, params=params[i : i + MAX_PARAMS_TAGS_PER_BATCH])
                for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                    client.log_batch(rid, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
                batch = [RunTag(k, v) for k, v in tags.items()]
                for i in range(0, len(batch), MAX_PARAMS_TAGS_PER_BATCH):
                    client.log_batch(rid, tags=batch[i : i + MAX_PARAMS_TAGS_PER_BATCH])
                if datasets:
                    client.log_inputs(rid, datasets=self._dataset_inputs(datasets))
                for path, artifact in tail["artifacts"]:
                    self._log_artifact(rid, Path(path), artifact)
                if fix.originals:
                    with tempfile.TemporaryDirectory() as tmp:
                        client.log_artifact(rid, str(fix.write(Path(tmp))))
                if status == "FINISHED" and self.stage_pid and os.getppid() != self.stage_pid:
                    status = "KILLED"  # killed while it waited for its record: its tool saw it fail
                client.set_terminated(rid, status=status, end_time=end)
                if parent:
                    self._end_parent(parent, status, end)
            except BaseException:
                self._discard(created)
                raise

    def _written_before(self, name: str) -> bool:
        """Whether an earlier attempt completed this record's run. Runs an attempt left
        RUNNING (cut short where the store could not even discard them; or by a diffpref
        before this one, which did not tag its record: the stage's own name and start time
        tell them) are discarded now."""
        tagged = self.client.search_runs(
            [self.exp_id], filter_string=f"tags.`{RECORD_TAG}` = '{self.record_id}'"
        )
        untagged = self.client.search_runs(
            [self.exp_id],
            filter_string=f"attributes.start_time = {int(self.head['start_ms'])} "
            "and attributes.status = 'RUNNING'",
        )
        stale = [r for r in tagged if r.info.status == "RUNNING"] + [
            r for r in untagged if r.info.run_name == name and RECORD_TAG not in r.data.tags
        ]
        self._discard([r.info.run_id for r in stale])
        return any(r.info.status != "RUNNING" for r in tagged)

    def _discard(self, run_ids: list[str]) -> None:
        """End runs FAILED and delete them, as far as the store lets (it may be down)."""
        for rid in reversed(run_ids):
            with suppress(Exception):
                self.client.set_terminated(rid, status="FAILED")
                self.client.delete_run(rid)

    def _end_parent(self, parent: str, status: str, end: int) -> None:
        """The execution ends with its last stage; any failure marks it FAILED."""
        info = self.client.get_run(parent).info
        failed = status != "FINISHED" or info.status == "FAILED"
        self.client.set_terminated(
            parent, "FAILED" if failed else "FINISHED", max(end, info.end_time or 0)
        )

    def _dataset_inputs(self, datasets: list[tuple[str, str, str]]) -> list:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        context = {"train": "training", "evaluate": "evaluation"}.get(self.head["stage"], "input")
        out = []
        for name, dig, path in datasets:
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

    def _parent(self, key: str | None, start_ms: int, created: list[str]) -> str | None:
        """The run of pipeline execution ``key`` (a valid key, so safe in the filter string),
        created by its first stage (under the lock; its id then added to ``created``)."""
        from diffpref.tracking import names

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
            self.exp_id, start_time=start_ms, run_name="pipeline", tags=names.Names().tags(tags)
        )
        created.append(run.info.run_id)
        return run.info.run_id

    def spool(self, tail: dict, error: Exception) -> Path:
        """Keep the record for :func:`replay`, with copies of the figures made for it alone
        (the stage deletes its scratch folder); the stage outputs it names stay where they
        are. Returns the record's file."""
        from diffpref.io import write_json_atomic

        folder = pending_dir()
        folder.mkdir(exist_ok=True)
        record = folder / f"{self.record_id}.json"
        if scratch := tail.get("scratch"):
            kept = shutil.copytree(scratch, record.with_suffix(""), dirs_exist_ok=True)
            for artifact in tail["artifacts"]:  # [path, name]
                if Path(artifact[0]).is_relative_to(scratch):
                    artifact[0] = str(kept / Path(artifact[0]).relative_to(scratch))
        rec = {"head": self.head, "tail": tail, "context": self.context, "error": str(error)}
        write_json_atomic(record, rec | {"record_id": self.record_id})
        return record


def write_record(head: dict, stdin: TextIO) -> None:
    """The helper process of :func:`stage_run`: connect while the stage works, then write the
    run from the stage's final message, or as KILLED when its pipe closes without one (or
    the stage is gone by the time its record is written). When the store cannot be written
    the record is spooled and the stage gets a warning; when it refuses the record for its
    content, the record is set aside (:func:`set_aside`)."""
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
    if is_content_error(failure):
        set_aside(record, failure)
        return
    print(
        f"WARNING: MLflow store {writer.uri} could not be written ({type(failure).__name__}: "
        f"{failure}); the record of {_name(head)} is kept in {record}: `diffpref tracking-replay` "
        "writes it once the store works",
        file=sys.stderr,
    )


def set_aside(record: Path, error: Exception) -> Path:
    """Move a spooled record the store refused for its content (and its figures) out of the
    replay's way, into :func:`quarantine_dir`, with the reason beside it; one warning."""
    folder = quarantine_dir()
    folder.mkdir(exist_ok=True)
    moved = folder / record.name
    figures = record.with_suffix("")
    if figures.is_dir():
        shutil.rmtree(moved.with_suffix(""), ignore_errors=True)
        figures.rename(moved.with_suffix(""))
    record.replace(moved)
    reason = f"{type(error).__name__}: {error}"
    moved.with_suffix(".reason.txt").write_text(reason + "\n")
    print(
        f"WARNING: MLflow record {record} was refused for its content ({reason}); set aside in "
        f"{moved} and not replayed (to retry it, fix it and move it back to {record.parent}/)",
        file=sys.stderr,
    )
    return moved


def _name(head: dict) -> str:
    return run_name(head["stage"], head["objective"], head["seed"], head.get("variant"))


def _killed() -> dict:
    return {"status": "KILLED", "end_ms": now_ms(), "metrics": [], "tags": {}, "artifacts": []}


def replay() -> list[str]:
    """Write the spooled records to the store configured now, oldest first, each removed once
    written; the names of the runs written. A record the store refuses for its content (or
    that is no record: unreadable, another format) is set aside (:func:`set_aside`) and the
    rest go on; any other failure (the store down) is raised, the records kept."""
    folder = pending_dir()
    if not folder.is_dir():
        return []
    done: list[str] = []
    store = None
    with flock(folder / ".lock"):  # two replays at once would write each record twice
        for f in sorted(folder.glob("*.json")):
            try:
                rec = json.loads(f.read_text())
                writer = Writer(rec["head"], rec["context"], record_id=rec.get("record_id", f.stem))
                name = _name(rec["head"])
            except Exception as e:
                _set_aside_or_raise(f, e)
                continue
            store = store or open_experiment(writer.uri)  # fails: the store's fault, all kept
            writer.client, writer.exp_id = store
            try:
                writer.write(rec["tail"])
            except Exception as e:
                _set_aside_or_raise(f, e)
                continue
            f.unlink()
            shutil.rmtree(f.with_suffix(""), ignore_errors=True)
            done.append(name)
    return done


def _set_aside_or_raise(record: Path, error: Exception) -> None:
    if not is_content_error(error):
        raise error
    set_aside(record, error)
