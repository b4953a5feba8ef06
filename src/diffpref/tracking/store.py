"""Which MLflow store, opened how: the URI, the experiment, the writers' lock, and the
queries the report makes."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffpref.tracking.provenance import git_root

EXPERIMENT = "diffpref"
KIND_TAG = "mlflow.experimentKind"
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute SQLite file at the project root.

    Absolute because ``dvc exp run --temp`` runs stages in a copy of the repo, where a relative
    ``sqlite:///mlflow.db`` would land inside the throw-away copy.
    """
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    return f"sqlite:///{(project_root() / 'mlflow.db').resolve()}"


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or git_root() or Path.cwd())


def pending_dir() -> Path:
    """Where records that could not be written wait for :func:`replay`: at the project root,
    outside every stage output, so neither DVC nor Snakemake removes them."""
    return (project_root() / ".mlflow-pending").resolve()


def quarantine_dir() -> Path:
    """Where records the store refused for their content are set aside: never replayed, so
    none blocks a later pipeline, and kept, so nothing is lost (beside :func:`pending_dir`)."""
    return (project_root() / ".mlflow-quarantine").resolve()


# What a store answers when it refuses a request for what it holds (a key, a value, a
# duplicate), as opposed to a store that cannot answer now (down, locked, out of date,
# unauthorised: INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE, ...), where the record must wait.
# BAD_REQUEST: a SQL store's integrity and data errors (a value too long for its column).
CONTENT_ERRORS = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST"})


def is_content_error(error: BaseException) -> bool:
    """Whether ``error``, met writing (or reading) a record, is the record's own fault, so
    that writing it again can never succeed: a store's refusal (:data:`CONTENT_ERRORS`), or a
    record that is not one (unreadable JSON, missing fields, wrong types: ``ValueError``,
    ``KeyError``, ``TypeError``). Connection failures (``OSError``, which includes requests'
    errors) never are."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code in CONTENT_ERRORS
    return isinstance(error, ValueError | KeyError | TypeError) and not isinstance(error, OSError)


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store go to ``mlartifacts/`` beside it (absolute, like the
    store, so runs from ``dvc exp run --temp`` copies land there too); a server decides its
    own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


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
    return flock(_lock_path(uri))


@contextmanager
def flock(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _lock_path(uri: str) -> Path:
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///") + ".lock")
    return Path(os.environ.get("TMPDIR", "/tmp")) / "diffpref-mlflow.lock"


def latest_runs(
    keys: list[tuple[str, str, int | None, str, str]],
) -> dict[tuple, dict[str, str]]:
    """For each (stage, objective, train seed, params hash, model), the newest FINISHED run
    that produced it: its id, its page in the MLflow UI and its artifacts folder. ``model``:
    a later online round's or a control's (``round2``, ``matched2``; "" for round 1, whose
    params hash a later round's evaluation shares). Runs whose params differ from the current
    ones (another ``dvc exp``, an older setting) never match."""
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
            t.get("model", ""),
        )
        if key in wanted and key not in out:
            out[key] = {
                "run_id": r.info.run_id,
                "url": f"{ui.rstrip('/')}/#/experiments/{exp.experiment_id}/runs/{r.info.run_id}",
                "artifacts": r.info.artifact_uri,
            }
    return out
