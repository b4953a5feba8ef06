"""MLflow records are always writable or cleanly set aside: names and values MLflow refuses are
made valid before logging (the originals kept), a record the store refuses for its content is
set aside in .mlflow-quarantine/ with one warning, a store that is down keeps it for later,
and no attempt leaves a run RUNNING. A real SQLite store throughout; the writer's own entry
point (``write_record``) and the real CLI, in-process."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
import yaml
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import SqlMetric, SqlParam, SqlRun, SqlTag
from mlflow.utils import validation
from tests.conftest import REPO
from tests.daemon import free_port

from diffpref import tracking
from diffpref.cli import main
from diffpref.config import deep_merge
from diffpref.tracking import names
from diffpref.tracking.store import is_content_error
from diffpref.tracking.writer import RECORD_TAG, write_record

NASTY = [
    "smoke test!",  # a profile name with a character MLflow refuses
    "profiles." + "p" * 300 + ".steps",  # longer than MLflow's key limit
    "n_eval_" + "c" * 300,
    "n_eval_" + "c" * 299,  # a second long one: must stay distinct
    "a/../b",
    "/abs",
    "trail/",
    "a//b",
    "..up",
    ".",
    "",
    'it\'s `odd` "quoted"',
    "nul\0and\udcffsurrogate",
    "Food & Beverage",
    "Food | Beverage",
]


def test_keys_are_made_valid_by_mlflows_own_checks_distinct_and_stable():
    """Every key passes the installed MLflow's validators for params, metrics and tags;
    distinct names stay distinct, the same name gives the same key, valid ones are kept."""
    keys = [names.key(n) for n in NASTY]
    for k in keys:
        validation._validate_param(k, "v")
        validation._validate_metric(k, 1.0, 0, 0)
        validation._validate_tag(k, "v")
        assert len(k) <= validation.MAX_ENTITY_KEY_LENGTH
    assert len(set(keys)) == len(NASTY)
    assert keys == [names.key(n) for n in NASTY]
    assert names.key("smoke test!") == f"smoke test_-{names._hash('smoke test!')}"
    for ok in ("train.lr", "n_eval_two object", "a/b:c-d", "ünïcode"):
        assert names.key(ok) == ok


def test_values_and_labels_fit_mlflows_limits():
    long = "v" * (validation.MAX_PARAM_VAL_LENGTH + 10)
    assert names.value(long, validation.MAX_PARAM_VAL_LENGTH) == long[:-10]
    assert names.value("a\0b\udcff", 100) == "a\ufffdb\ufffd"
    a, b = (names.label(c * 300, names.MAX_RUN_NAME_LENGTH) for c in "xy")
    assert len(a) == len(b) == names.MAX_RUN_NAME_LENGTH and a != b
    assert names.label("train@dpo/seed1", names.MAX_RUN_NAME_LENGTH) == "train@dpo/seed1"


def test_the_bounds_match_the_installed_sql_schema():
    """The run name has no constant in mlflow.utils.validation: its bound is the column's."""
    assert SqlRun.name.type.length >= names.MAX_RUN_NAME_LENGTH
    for model in (SqlParam, SqlMetric, SqlTag):
        assert model.key.type.length >= validation.MAX_ENTITY_KEY_LENGTH


def _all_runs(uri: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    return client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL) if exp else []


def _active(uri: str) -> list:
    return [r for r in _all_runs(uri) if r.info.lifecycle_stage == "active"]


def _assert_nothing_blocks(uri: str, capsys) -> None:
    """No run RUNNING (deleted ones included), nothing left to replay, and both commands that
    replay succeed."""
    assert not [r.info.run_name for r in _all_runs(uri) if r.info.status == "RUNNING"]
    capsys.readouterr()
    assert main(["tracking-init"]) == 0
    assert main(["tracking-replay"]) == 0
    assert "0 kept records written" in capsys.readouterr().out
    assert not list(tracking.pending_dir().glob("*.json"))


def _originals(uri: str, run) -> dict:
    client = mlflow.MlflowClient(tracking_uri=uri)
    return json.loads(
        Path(client.download_artifacts(run.info.run_id, names.ORIGINALS_FILE)).read_text()
    )


@pytest.fixture
def project(tmp_path, monkeypatch, store_uri) -> str:
    """``tmp_path`` as the project (``.mlflow-pending/`` lands there), its store configured."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.delenv("DIFFPREF_PIPELINE_ID", raising=False)
    return store_uri


def test_a_stage_with_names_mlflow_refuses_records_them_valid_with_the_originals(project, capsys):
    """At the tracking API, so it does not depend on what params validation lets through: a
    profile name with ``!`` and a long one (as param keys), long and odd metric names, a
    value over MLflow's limit, NaN and ±inf metrics."""
    long_profile = "p" * 300
    params = {
        "profiles": {"smoke test!": {"steps": 1}, long_profile: {"steps": 2}},
        "profile": "smoke test!",
        "prompts": {"file": "x" * 7000},
    }
    with tracking.stage_run("prompts", None, params, "h") as run:
        run.log_metric("n_eval_" + "c" * 300, 3)
        run.log_metric("n_eval_Food & Beverage", 2)
        run.log_metric("nan", math.nan)
        run.log_metric("inf", 10**400)  # an int no double holds: +inf
        run.tags["note"] = "t" * (validation.MAX_TAG_VAL_LENGTH + 1)
    assert not (Path.cwd() / ".mlflow-pending").exists()
    assert "WARNING" not in capsys.readouterr().err
    (r,) = _active(project)
    assert r.info.status == "FINISHED"
    orig = _originals(project, r)
    logged = {v: k for k, v in orig["param"].items()}
    assert r.data.params[logged["profiles.smoke test!.steps"]] == "1"
    assert r.data.params[logged[f"profiles.{long_profile}.steps"]] == "2"
    assert r.data.params["prompts.file"] == "x" * validation.MAX_PARAM_VAL_LENGTH
    assert orig["param value"]["prompts.file"] == "x" * 7000
    metric = {v: k for k, v in orig["metric"].items()}
    assert r.data.metrics[metric["n_eval_" + "c" * 300]] == 3
    assert r.data.metrics[metric["n_eval_Food & Beverage"]] == 2
    assert math.isnan(r.data.metrics["nan"]) and r.data.metrics["inf"] > 1e308
    assert r.data.tags["note"] == "t" * validation.MAX_TAG_VAL_LENGTH
    assert orig["tag value"] == {"note": "t" * (validation.MAX_TAG_VAL_LENGTH + 1)}
    assert r.data.tags[names.RENAMED_TAG] == names.ORIGINALS_FILE
    _assert_nothing_blocks(project, capsys)


def _head(**over) -> dict:
    """A record's head, as the stage sends it to its writer."""
    head = {
        "stage": "labels",
        "objective": None,
        "seed": None,
        "params": {"labels.reward": "fidelity"},
        "params_hash": "h",
        "start_ms": 1_700_000_000_000,
        "pipeline": None,
        "inputs": [],
        "options": {},
    }
    return head | over


def _tail(**over) -> dict:
    tail = {"status": "FINISHED", "end_ms": 1_700_000_001_000, "metrics": [["n", 1.0, 0]],
            "tags": {}, "artifacts": [], "scratch": None}  # fmt: skip
    return tail | over


def _write(head: dict, tail: dict) -> None:
    """The writer process's entry point, in-process."""
    write_record(head, io.StringIO(json.dumps(tail) + "\n"))


def test_stages_of_a_pipeline_id_with_odd_characters_nest_under_one_parent(project, capsys):
    """A quote ends MLflow's filter string (the parent run is searched by it); a long id is
    cut by MLflow, so it never matched again. Both become one valid id, the same for each
    stage of that execution."""
    for odd in ('it\'s "odd" `really`', "x" * 10_000):
        for stage in ("prompts", "labels"):
            _write(_head(stage=stage, pipeline=odd), _tail())
    assert "WARNING" not in capsys.readouterr().err
    runs = _active(project)
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in parents)
    for p in parents:
        kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
        assert sorted(r.info.run_name for r in kids) == ["labels", "prompts"]
        key = p.data.tags[tracking.PIPELINE_TAG]
        assert names.is_valid_key(key) and _originals(project, kids[0])["pipeline"][key]
    _assert_nothing_blocks(project, capsys)


def test_the_prompts_stage_records_a_file_with_a_long_category(project, tmp_path, capsys):
    """The real stage (CLI, in-process): each eval category is a metric name."""
    cats = ["c" * 300, "Food & Beverage", "a/../b"]
    data = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": [f"a photo of item {i}" for i in range(30)],
                  "category": [cats[i % 3] for i in range(30)],
                  "split": ["eval"] * 15 + ["train"] * 15}).to_csv(data, index=False)  # fmt: skip
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    over = {"results": str(tmp_path / "results"), "prompts": {"source": "file", "file": str(data)}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(deep_merge(raw, over)))
    assert main(["prompts", "--params", str(tmp_path / "params.yaml")]) == 0
    assert "WARNING: MLflow" not in capsys.readouterr().err
    (r,) = _active(project)
    metric = {v: k for k, v in _originals(project, r)["metric"].items()}
    assert {c: r.data.metrics[metric[f"n_eval_{c}"]] for c in cats} == {c: 5 for c in cats}
    _assert_nothing_blocks(project, capsys)


# --- records kept in .mlflow-pending/ ---------------------------------------------------------


def _old_record(folder: Path, start_ms: int, head: dict | None = None, **tail) -> Path:
    """A record spooled by an older diffpref (no sanitizer, no record id), as it left it."""
    folder.mkdir(exist_ok=True)
    head = (head or _head()) | {"start_ms": start_ms}
    record = folder / f"{start_ms}-4242.json"
    context = {"commit": "abc", "env_tags": {}, "datasets": []}
    rec = {"head": head, "tail": _tail(**tail), "context": context, "error": "old"}
    record.write_text(json.dumps(rec))
    return record


def test_a_poisoned_record_from_an_older_version_is_written_sanitized(project, capsys):
    """What an older diffpref spooled for good (a long category, an odd pipeline id, a
    profile name as a key) is written, valid, by the next replay."""
    head = _head(pipeline="it's", params={"profiles.smoke test!.steps": "1"})
    _old_record(tracking.pending_dir(), 7, head, metrics=[["n_eval_" + "c" * 300, 5.0, 0]])
    client, exp_id = tracking.open_experiment(project)
    for _ in range(2):  # what that version's failed attempts left: a RUNNING run each
        client.create_run(exp_id, start_time=7, run_name="labels")
    other = client.create_run(exp_id, start_time=7, run_name="prompts").info.run_id
    assert main(["tracking-replay"]) == 0
    assert "1 kept records written: labels" in capsys.readouterr().out
    (r,) = [r for r in _active(project) if r.info.run_name == "labels"]
    assert r.info.status == "FINISHED" and list(r.data.metrics.values()) == [5.0]
    stale = [r for r in _all_runs(project) if r.info.lifecycle_stage == "deleted"]
    assert [(r.info.run_name, r.info.status) for r in stale] == [("labels", "FAILED")] * 2
    assert client.get_run(other).info.status == "RUNNING"  # another stage's: not this record's
    client.set_terminated(other)
    assert _originals(project, r)["param"] == {
        names.key("profiles.smoke test!.steps"): "profiles.smoke test!.steps"
    }
    _assert_nothing_blocks(project, capsys)


def _set_aside_warning(record: Path, reason: str) -> str:
    moved = tracking.quarantine_dir() / record.name
    return (
        f"WARNING: MLflow record {record} was refused for its content ({reason}); set aside in "
        f"{moved} and not replayed (to retry it, fix it and move it back to {record.parent}/)"
    )


def test_records_the_store_refuses_are_set_aside_and_the_rest_written(project, capsys):
    """A metric value MLflow refuses (INVALID_PARAMETER_VALUE, met after the run was created:
    that run is discarded, FAILED and deleted) and a file that is no record (cut short): each
    set aside with one warning; the good record between them is written."""
    pending, aside = tracking.pending_dir(), tracking.quarantine_dir()
    bad = _old_record(pending, 1, metrics=[["loss", "not a number", 0]])
    good = _old_record(pending, 2)
    cut = pending / "3-4242.json"
    cut.write_text(good.read_text()[:40])
    assert main(["tracking-replay"]) == 0
    out = capsys.readouterr()
    assert "1 kept records written: labels" in out.out
    refused = (
        "MlflowException: Invalid value \"not a number\" for parameter 'metrics[0].value' "
        "supplied: (timestamp=1700000001000). Please specify value as a valid double (64-bit "
        "floating point)"
    )
    assert _set_aside_warning(bad, refused) in out.err.splitlines()
    (line,) = [w for w in out.err.splitlines() if w.startswith(f"WARNING: MLflow record {cut} ")]
    assert re.fullmatch(
        re.escape(_set_aside_warning(cut, "@")).replace("@", "JSONDecodeError: .+"), line
    )
    assert out.err.count("WARNING") == 2
    assert (aside / bad.name).with_suffix(".reason.txt").read_text() == refused + "\n"
    assert {f.name for f in aside.iterdir()} == {
        "1-4242.json",
        "1-4242.reason.txt",
        "3-4242.json",
        "3-4242.reason.txt",
    }
    (written,) = _active(project)
    assert written.info.status == "FINISHED"
    (discarded,) = [r for r in _all_runs(project) if r.info.lifecycle_stage == "deleted"]
    assert discarded.info.status == "FAILED"
    _assert_nothing_blocks(project, capsys)


def test_a_store_that_is_down_keeps_every_record_and_sets_none_aside(project, monkeypatch):
    """A connection failure says nothing about a record: all stay for the next replay, even
    one the store would refuse."""
    pending = tracking.pending_dir()
    records = [_old_record(pending, 1, metrics=[["loss", "not a number", 0]]),
               _old_record(pending, 2)]  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert main(["tracking-replay"]) == 1  # the CLI's own check of the store
    with pytest.raises(MlflowException, match="Connection refused"):
        tracking.replay()
    assert all(f.is_file() for f in records) and not tracking.quarantine_dir().exists()


def test_a_store_that_fails_mid_write_keeps_the_record_and_discards_the_run(
    project, tmp_path, capsys
):
    """Not the record's fault either: the store's artifact folder cannot be made (a file is
    in its place). The run already created is discarded, the record kept, and written whole
    once the store is fixed."""
    (tmp_path / "mlartifacts").write_text("in the way")
    (tmp_path / "metrics.json").write_text("{}")
    _write(_head(), _tail(artifacts=[[str(tmp_path / "metrics.json"), "metrics.json"]]))
    err = capsys.readouterr().err
    (record,) = tracking.pending_dir().glob("*.json")
    before, after = (
        f"WARNING: MLflow store {project} could not be written (NotADirectoryError: [Errno 20] "
        f"Not a directory: '{tmp_path}/mlartifacts/",
        f"'); the record of labels is kept in {record}: `diffpref tracking-replay` writes it "
        "once the store works\n",
    )
    assert re.fullmatch(re.escape(before) + r"\w+" + re.escape(after), err)
    assert not tracking.quarantine_dir().exists()
    assert [(r.info.status, r.info.lifecycle_stage) for r in _all_runs(project)] == [
        ("FAILED", "deleted")
    ]
    assert main(["tracking-replay"]) == 1  # still broken: kept, one clear error
    assert capsys.readouterr().err.startswith(
        f"error: MLflow store {project}: NotADirectoryError: [Errno 20] Not a directory: "
    )
    assert record.is_file() and not tracking.quarantine_dir().exists()
    (tmp_path / "mlartifacts").unlink()
    assert main(["tracking-replay"]) == 0
    (r,) = _active(project)
    client = mlflow.MlflowClient(tracking_uri=project)
    assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["metrics.json"]
    _assert_nothing_blocks(project, capsys)


def test_a_stage_record_the_store_refuses_is_set_aside_at_once(project, capsys):
    """The writer itself sets it aside (a replay could never write it): nothing pending,
    nothing RUNNING."""
    _write(_head(), _tail(metrics=[["loss", "not a number", 0]]))
    err = capsys.readouterr().err
    (moved,) = tracking.quarantine_dir().glob("*.json")
    reason = (moved.with_suffix(".reason.txt")).read_text().strip()
    assert reason.startswith('MlflowException: Invalid value "not a number"')
    assert err == _set_aside_warning(tracking.pending_dir() / moved.name, reason) + "\n"
    assert not _active(project)
    _assert_nothing_blocks(project, capsys)


def test_replaying_twice_writes_one_run(project, monkeypatch, capsys):
    """A replay cut short after it wrote a run, before it removed the record (here: the
    record put back), writes no second run; a run an earlier attempt left RUNNING (the
    store went down mid-write, too soon to discard it) is discarded before the record is
    written whole."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    _write(_head(), _tail())
    (record,) = tracking.pending_dir().glob("*.json")
    copy = record.read_bytes()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project)
    client, exp_id = tracking.open_experiment(project)
    rid = json.loads(copy)["record_id"]
    stale = client.create_run(exp_id, run_name="labels", tags={RECORD_TAG: rid}).info.run_id
    for _ in range(2):
        record.write_bytes(copy)
        assert main(["tracking-replay"]) == 0
    (r,) = _active(project)
    assert r.info.status == "FINISHED" and r.data.tags[RECORD_TAG] == rid
    assert client.get_run(stale).info.lifecycle_stage == "deleted"
    _assert_nothing_blocks(project, capsys)


def test_content_errors_are_told_from_a_store_that_cannot_answer():
    """The rule the quarantine rests on, on MLflow's own exceptions."""
    assert is_content_error(MlflowException.invalid_parameter_value("bad key"))
    assert is_content_error(json.JSONDecodeError("cut", "{", 1))
    assert is_content_error(KeyError("head"))
    assert not is_content_error(MlflowException("API request failed"))  # INTERNAL_ERROR
    assert not is_content_error(ConnectionError("refused"))
    assert not is_content_error(
        requests.exceptions.InvalidJSONError("a JSON error, and an OSError")
    )
