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
``diffpref tracking-replay`` (or the next ``tracking-init``) writes it later. Every name and
value is made valid for MLflow before it is logged (:mod:`~diffpref.tracking.names`); a record
the store still refuses for its content is set aside in ``.mlflow-quarantine/`` with one
warning, so no record blocks a later replay, and an attempt that fails discards the runs it
created.

Modules: :mod:`~diffpref.tracking.stage` (the stage's side), :mod:`~diffpref.tracking.writer`
(the helper process), :mod:`~diffpref.tracking.store` (which store, its lock, the report's
queries), :mod:`~diffpref.tracking.provenance` (git commit, pipeline execution, data digests).
"""

from diffpref.tracking.provenance import digest, pipeline_id
from diffpref.tracking.stage import StageRun, run_name, stage_run
from diffpref.tracking.store import (
    EXPERIMENT,
    KIND_TAG,
    UI_DEFAULT,
    latest_runs,
    open_experiment,
    pending_dir,
    quarantine_dir,
    store_lock,
    tracking_uri,
)
from diffpref.tracking.writer import PIPELINE_TAG, replay

__all__ = [
    "EXPERIMENT",
    "KIND_TAG",
    "PIPELINE_TAG",
    "UI_DEFAULT",
    "StageRun",
    "digest",
    "latest_runs",
    "open_experiment",
    "pending_dir",
    "pipeline_id",
    "quarantine_dir",
    "replay",
    "run_name",
    "stage_run",
    "store_lock",
    "tracking_uri",
]
