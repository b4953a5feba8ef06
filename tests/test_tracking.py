"""MLflow records: a real SQLite store, one run per stage with params, metrics and tags."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest
from tests.daemon import free_port

from diffpref import tracking


def test_stage_run_writes_params_metrics_and_tags(tmp_path, monkeypatch, store_uri):
    uri = store_uri
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
    assert exp.tags[tracking.KIND_TAG] == "custom_model_development"  # UI: runs table view


def test_failed_stage_is_recorded_as_failed(tmp_path, monkeypatch, store_uri):
    uri = store_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(RuntimeError), tracking.stage_run("labels", None, {}, "h"):
        raise RuntimeError("boom")
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.status == "FAILED"


def test_run_times_are_the_stages_own(tmp_path, monkeypatch, store_uri):
    uri = store_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with tracking.stage_run("rewards", None, {}, "h"):
        time.sleep(1.5)
    client = mlflow.MlflowClient(tracking_uri=uri)
    (r,) = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    assert 1500 <= r.info.end_time - r.info.start_time < 10_000


def _orphaned_run(uri: str):
    """The only run of a killed stage, once its orphaned writer, which finishes on its own, has
    ended it (a run is created RUNNING and then ended, so one seen in between is not yet its
    record); RUNNING still after a minute is a run left RUNNING forever."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + 60
    runs = []
    while (not runs or runs[0].info.status == "RUNNING") and time.monotonic() < deadline:
        time.sleep(0.5)
        exp = client.get_experiment_by_name(tracking.EXPERIMENT)
        runs = client.search_runs([exp.experiment_id]) if exp else []
    (r,) = runs
    return r


def test_a_killed_stage_leaves_a_killed_run_not_a_running_one(tmp_path, store_uri):
    uri = store_uri
    code = (
        "import os, signal\n"
        "from diffpref import tracking\n"
        "with tracking.stage_run('train', 'dpo', {'train': {'lr': 0.1}}, 'h', 1):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL
    r = _orphaned_run(uri)
    assert r.info.status == "KILLED" and r.info.run_name == "train@dpo/seed1"
    assert r.data.params["train.lr"] == "0.1" and r.data.tags["train_seed"] == "1"


@pytest.mark.parametrize("params_kb", [1, 200])
def test_a_stage_killed_the_moment_its_writer_exists_is_killed(tmp_path, store_uri, params_kb):
    """The earliest kill that can leave a record: as soon as the writer process has started
    (Popen returned), before the stage does anything else. The run's identity is already in
    the writer's pipe, so it records the run as KILLED; also with params larger than the
    pipe's buffer (the rest follows once the writer reads)."""
    uri = store_uri
    code = (
        "import os, signal, subprocess\n"
        "from diffpref import tracking\n"
        "class Popen(subprocess.Popen):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__(*args, **kwargs)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "tracking.stage.subprocess.Popen = Popen\n"
        f"params = {{'labels': {{f'k{{i}}': 'v' * 1000 for i in range({params_kb})}}}}\n"
        "with tracking.stage_run('labels', None, params, 'h'):\n"
        "    print('the stage ran on', flush=True)\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                       text=True)  # fmt: skip
    assert p.returncode == -signal.SIGKILL and "ran on" not in p.stdout, p.stderr
    r = _orphaned_run(uri)
    assert r.info.run_name == "labels" and r.info.status == "KILLED"
    assert len(r.data.params) == params_kb and r.data.params["labels.k0"] == "v" * 1000


def test_artifacts_land_beside_a_sqlite_store(tmp_path, monkeypatch, store_uri):
    uri = store_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "weights.safetensors").write_bytes(b"w")
    (tmp_path / "scores.parquet").write_bytes(b"s")
    with tracking.stage_run("train", "dpo", {}, "h", 0) as run:
        run.log_artifact(tmp_path / "adapter", "adapter")
        run.log_artifact(tmp_path / "scores.parquet")
    client = mlflow.MlflowClient(tracking_uri=uri)
    (r,) = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"adapter", "scores.parquet"}
    assert [a.path for a in client.list_artifacts(r.info.run_id, "adapter")] == [
        "adapter/weights.safetensors"
    ]
    assert r.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_stage_runs_nest_under_one_parent_run_per_pipeline_execution(
    tmp_path, monkeypatch, store_uri
):
    uri = store_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DIFFPREF_PIPELINE_ID", "run-a")
    for stage in ("prompts", "labels"):
        with tracking.stage_run(stage, None, {}, "h"):
            pass
    monkeypatch.setenv("DIFFPREF_PIPELINE_ID", "run-b")
    with pytest.raises(RuntimeError), tracking.stage_run("labels", None, {}, "h"):
        raise RuntimeError("boom")
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    parents = {r.data.tags[tracking.PIPELINE_TAG]: r for r in runs if r.info.run_name == "pipeline"}
    assert set(parents) == {"run-a", "run-b"}
    children = [r for r in runs if r.info.run_name != "pipeline"]
    by_parent = Counter(r.data.tags["mlflow.parentRunId"] for r in children)
    assert by_parent == {parents["run-a"].info.run_id: 2, parents["run-b"].info.run_id: 1}
    a = parents["run-a"].info
    a_children = [r for r in children if r.data.tags["mlflow.parentRunId"] == a.run_id]
    assert a.status == "FINISHED" and a.end_time == max(r.info.end_time for r in a_children)
    assert parents["run-b"].info.status == "FAILED"  # a failed stage marks its execution


def test_a_stage_under_dvc_finds_its_dvc_process(tmp_path):
    # a fake `dvc` ancestor: python -m dvc is matched by name, pid and start time
    (tmp_path / "dvc").mkdir()
    (tmp_path / "dvc" / "__init__.py").write_text("")  # a regular package wins the import
    (tmp_path / "dvc" / "__main__.py").write_text(
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', 'from diffpref import tracking; "
        "print(tracking.pipeline_id())'], check=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DIFFPREF_PIPELINE_ID"}
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    run = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "dvc"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    one, two = run(), run()
    assert one.startswith("dvc-") and two.startswith("dvc-") and one != two


def _only_run(uri: str):
    client = mlflow.MlflowClient(tracking_uri=uri)
    (r,) = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    return client, r


def test_inputs_are_datasets_with_content_digests(tmp_path, monkeypatch, store_uri):
    uri = store_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "pairs.parquet").write_bytes(b"pairs v1")
    copy = tmp_path / "elsewhere" / "labels"
    copy.mkdir(parents=True)
    (copy / "pairs.parquet").write_bytes(b"pairs v1")
    assert tracking.digest(labels) == tracking.digest(copy)  # content, not place
    (copy / "pairs.parquet").write_bytes(b"pairs v2")
    assert tracking.digest(labels) != tracking.digest(copy)
    with tracking.stage_run("train", "dpo", {}, "h", 0, inputs={"labels": labels}):
        pass
    _, r = _only_run(uri)
    (ds,) = r.inputs.dataset_inputs
    assert ds.dataset.name == "labels" and ds.dataset.digest == tracking.digest(labels)
    assert labels.as_uri() in ds.dataset.source
    assert {t.key: t.value for t in ds.tags} == {"mlflow.data.context": "training"}


DRAWN: list[Path] = []


def draw_png(content: bytes, path: Path) -> None:
    """A figure function as stages name one (``module:function``)."""
    path.write_bytes(content)
    DRAWN.append(path)


def test_figures_are_logged_and_their_scratch_folder_removed(tmp_path, monkeypatch, store_uri):
    uri = store_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    DRAWN.clear()
    with tracking.stage_run("evaluate", "dpo", {}, "h", 0) as run:
        run.log_figure("samples.png", f"{__name__}:draw_png", lambda: (b"png",))
    client, r = _only_run(uri)
    assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["samples.png"]
    assert not DRAWN[0].parent.exists()


def test_large_artifacts_can_be_logged_by_reference(tmp_path, monkeypatch, store_uri):
    uri = store_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "weights.safetensors").write_bytes(b"w" * 3 * (1 << 20))
    (tmp_path / "metrics.json").write_text("{}")
    opts = {"tracking": {"log_large_artifacts": False, "large_artifact_mb": 1}}
    with tracking.stage_run("train", "dpo", {}, "h", 0, options=opts) as run:
        run.log_artifact(adapter, "adapter")
        run.log_artifact(tmp_path / "metrics.json")  # small: copied as usual
    client, r = _only_run(uri)
    assert {a.path for a in client.list_artifacts(r.info.run_id)} == {
        "adapter.ref.json",
        "metrics.json",
    }
    ref = json.loads(Path(client.download_artifacts(r.info.run_id, "adapter.ref.json")).read_text())
    assert ref == {
        "path": str(adapter.resolve()),
        "bytes": 3 * (1 << 20),
        "digest": tracking.digest(adapter),
    }


def test_latest_runs_match_stage_objective_seed_and_params(tmp_path, monkeypatch, store_uri):
    uri = store_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for phash in ("old", "new", "other"):
        with tracking.stage_run("train", "dpo", {}, phash, 1):
            pass
    with pytest.raises(RuntimeError), tracking.stage_run("train", "dpo", {}, "new", 1):
        raise RuntimeError("a failed rerun is not the one that made the adapter")
    # a later online round of the same model, with the same params hash: not round 1's run
    with tracking.stage_run("train", "dpo", {}, "new", 1, rnd=2, variant="round2"):
        pass
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    finished = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    by_hash = {
        r.data.tags["params_hash"]: r.info.run_id for r in finished if "model" not in r.data.tags
    }
    (round2,) = [r.info.run_id for r in finished if r.data.tags.get("model") == "round2"]
    key, later = ("train", "dpo", 1, "new", ""), ("train", "dpo", 1, "new", "round2")
    found = tracking.latest_runs([key, ("train", "dpo", 2, "new", ""), later])
    assert set(found) == {key, later}
    assert found[key]["run_id"] == by_hash["new"] and found[later]["run_id"] == round2
    assert found[key]["url"] == (
        f"{tracking.UI_DEFAULT}/#/experiments/{exp.experiment_id}/runs/{by_hash['new']}"
    )
    assert found[key]["artifacts"].startswith((tmp_path / "mlartifacts").as_uri())


def test_many_stages_starting_at_once_on_a_brand_new_store_all_record(tmp_path):
    """Parallel jobs creating the SQLite store together (concurrent schema migrations break a
    new store for good without the writers' lock): every run lands, under one parent."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    code = (
        "import pathlib, sys, time\n"
        "from diffpref import tracking\n"
        f"pathlib.Path({str(tmp_path)!r}, 'ready' + sys.argv[1]).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
        "with tracking.stage_run('train', 'dpo', {'train': {'lr': 0.1}}, 'h', int(sys.argv[1])):\n"
        "    pass\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DIFFPREF_PIPELINE_ID": "at-once"}
    n = 6
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stderr=subprocess.PIPE)
        for i in range(n)
    ]
    # all started (or one failed: reported below), then all at once
    while len(list(tmp_path.glob("ready*"))) < n and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    go.touch()
    errors = [err for p in procs if (err := p.communicate()[1].decode()) and p.returncode]
    assert not errors, errors
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    names = Counter(r.info.run_name for r in runs)
    assert names == {"pipeline": 1, **{f"train@dpo/seed{i}": 1 for i in range(n)}}
    assert all(r.info.status == "FINISHED" for r in runs)


def tracking_init(uri: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffpref.cli", "tracking-init"],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, **env},
        capture_output=True,
        text=True,
    )


def test_tracking_init_creates_the_store_and_stops_on_an_outdated_one(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = tracking_init(uri)
    assert p.returncode == 0 and "experiment diffpref (id 1)" in p.stdout, p.stderr
    exp = mlflow.MlflowClient(uri).get_experiment_by_name("diffpref")
    assert exp.tags[tracking.KIND_TAG] == "custom_model_development"
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # as if made by an older MLflow
        db.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")
    p = tracking_init(uri)
    assert p.returncode == 1 and "mlflow db upgrade" in p.stderr and "Traceback" not in p.stderr


def test_tracking_init_fails_cleanly_when_the_server_is_down():
    # nothing listens on port 9; the test need not wait for the retries
    p = tracking_init("http://127.0.0.1:9", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    assert p.returncode == 1
    assert p.stderr.startswith("error: MLflow store http://127.0.0.1:9: ")
    assert "Traceback" not in p.stderr


def test_a_record_kept_while_the_store_is_down_keeps_its_figures(tmp_path, monkeypatch, store_uri):
    """Figures made for the record alone live in a scratch folder the stage deletes when it
    ends: a record kept for later (the store down) keeps copies, and the replay logs them."""
    monkeypatch.chdir(tmp_path)  # the project root: .mlflow-pending/ is made here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with tracking.stage_run("evaluate", "dpo", {}, "h", 0) as run:
        run.log_figure("samples.png", f"{__name__}:draw_png", lambda: (b"png",))
    (record,) = (tmp_path / ".mlflow-pending").glob("*.json")
    uri = store_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.replay() == ["evaluate@dpo/seed0"]
    client, r = _only_run(uri)
    assert r.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["samples.png"]
    assert not record.exists() and not record.with_suffix("").exists()


def test_a_stage_killed_while_its_record_is_written_is_killed_not_finished(tmp_path, store_uri):
    """Its work done and its final report sent, the stage waits for its writer; killed then,
    its tool sees it fail, so its run must not say FINISHED. The store's lock, held here,
    keeps the writer from writing until the stage is dead."""
    uri = store_uri
    code = (
        "from diffpref import tracking\n"
        "with tracking.stage_run('labels', None, {}, 'h'):\n"
        "    print('done', flush=True)\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    tracking.open_experiment(uri)  # made now, not while the writer makes it
    with tracking.store_lock(uri):
        stage = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path,
                                 stdout=subprocess.PIPE)  # fmt: skip
        assert stage.stdout.readline() == b"done\n"
        time.sleep(0.5)  # its final report is in the writer's pipe; it waits for the writer
        stage.kill()
        assert stage.wait() == -signal.SIGKILL
    r = _orphaned_run(uri)
    assert r.info.run_name == "labels" and r.info.status == "KILLED"
    assert "wall_time_s" in r.data.metrics  # the final report was received
