"""MLflow records: a real SQLite store, one run per stage with params, metrics and tags."""

from __future__ import annotations

import mlflow
import pytest

from diffpref import tracking


def test_stage_run_writes_params_metrics_and_tags(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with tracking.stage_run("train", "dpo", {"train": {"lr": 0.1}}, "abc123") as run:
        run.log_metric("loss", 0.5, step=1)
        run.log_metric("loss", 0.25, step=2)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    (r,) = client.search_runs([exp.experiment_id])
    assert r.data.params["train.lr"] == "0.1"
    assert r.data.tags["stage"] == "train"
    assert r.data.tags["objective"] == "dpo"
    assert r.data.tags["params_hash"] == "abc123"
    assert r.data.tags["git_commit"]
    assert r.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(r.info.run_id, "loss")] == [0.5, 0.25]
    assert "wall_time_s" in r.data.metrics


def test_failed_stage_is_recorded_as_failed(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(RuntimeError), tracking.stage_run("labels", None, {}, "h"):
        raise RuntimeError("boom")
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.status == "FAILED"
