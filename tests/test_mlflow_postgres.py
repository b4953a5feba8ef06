"""A team MLflow server: ``mlflow server`` on a real PostgreSQL backend store with its own
artifact store, and the real smoke DAG (Snakemake, 2 parallel jobs) recording to it over HTTP.
What the team sees is read back through the server's REST API, as a browser would."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import psycopg
import pytest
from tests.daemon import free_port
from tests.mlflow_server import api, server
from tests.postgres import postgres
from tests.project import edit_params, expected_runs, make_project, sh

pytestmark = pytest.mark.slow

# a metric each stage logs (besides wall_time_s and start_s), and its artifacts
METRICS = {
    "world": "base_fidelity/all",
    "prompts": "n_train",
    "candidates": "n_candidates",
    "rewards": "mean_fidelity",
    "labels": "n_pairs",
    "train": "final_loss",
    "evaluate": "accuracy.fidelity.overall",
    "report": "dpo.win_vs_base",
}
ARTIFACTS = {
    "train": {"adapter"},
    "evaluate": {"scores.parquet", "metrics.json"},
    "report": {"report.html", "comparison.csv"},
}


@pytest.fixture
def team_server(tmp_path: Path):
    """PostgreSQL + ``mlflow server --artifacts-destination``; yields (URL, database URI,
    artifact folder). Both daemons stop when the test ends, passed or failed."""
    artifacts = tmp_path / "artifacts"
    # +psycopg: psycopg 3 under SQLAlchemy 2.0 too (whose plain postgresql:// means psycopg2)
    with (
        postgres() as db,
        server(db.replace("postgresql:", "postgresql+psycopg:"), artifacts) as url,
    ):
        yield url, db, artifacts


def test_smoke_dag_records_every_stage_on_a_postgres_backed_server(tmp_path, team_server):
    url, db, artifacts = team_server
    root = make_project(tmp_path / "smk")
    edit_params(root, lambda raw: raw.update(train_seeds=[0]))
    out = sh(["snakemake", "--cores", "2", "--config", "profile=smoke"], root,
             env={"MLFLOW_TRACKING_URI": url})  # fmt: skip
    assert f"MLflow store {url}: experiment diffpref" in out  # opened once, before the jobs
    assert not (root / "mlflow.db").exists()  # nothing went to a local store

    exp = api(url, "experiments/get-by-name?experiment_name=diffpref")["experiment"]
    found = api(url, "runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    by_name = {r["info"]["run_name"]: r for r in found}
    assert len(by_name) == len(found)  # one run per stage, one parent
    assert set(by_name) == expected_runs(0) | {"pipeline"}
    parent = by_name.pop("pipeline")["info"]
    assert parent["status"] == "FINISHED"
    for name, r in by_name.items():
        tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
        metrics = {m["key"] for m in r["data"]["metrics"]}
        assert r["info"]["status"] == "FINISHED", name
        assert tags["mlflow.parentRunId"] == parent["run_id"], name
        assert {"wall_time_s", "start_s", METRICS[tags["stage"]]} <= metrics, name
        assert r["data"]["params"], name
        files = {f["path"] for f in artifact_list(url, r["info"]["run_id"])}
        assert ARTIFACTS.get(tags["stage"], set()) <= files, (name, files)

    train = by_name["train@dpo/seed0"]["info"]["run_id"]
    loss = api(url, f"metrics/get-history?run_id={train}&metric_key=loss")["metrics"]
    assert len(loss) > 1  # the loss curve, step by step
    adapter = {f["path"] for f in artifact_list(url, train, "adapter")}
    assert "adapter/pytorch_lora_weights.safetensors" in adapter
    report = by_name["report"]["info"]["run_id"]
    served = get(f"{url}/get-artifact?path=comparison.csv&run_uuid={report}")
    assert served == (root / "results/report/comparison.csv").read_bytes()
    # the server stored the files under its --artifacts-destination, the runs in PostgreSQL
    assert list(artifacts.rglob("pytorch_lora_weights.safetensors"))
    with psycopg.connect(db) as conn:
        (n,) = conn.execute("SELECT count(*) FROM runs").fetchone()
    assert n == len(found)


def test_a_server_that_is_down_stops_the_workflow_before_any_stage(tmp_path):
    root = make_project(tmp_path / "smk")
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # the test need not wait for the retries
    cmd = ["snakemake", "--cores", "2", "--config", "profile=smoke"]
    out = sh(cmd, root, check=False, env=env)
    assert f"error: MLflow store {env['MLFLOW_TRACKING_URI']}: " in out
    assert not re.search(r"^(local)?rule \w+:", out, re.M)  # no job started


def artifact_list(url: str, run_id: str, path: str = "") -> list[dict]:
    return api(url, f"artifacts/list?run_id={run_id}&path={path}").get("files", [])


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()
