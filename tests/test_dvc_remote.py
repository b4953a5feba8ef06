"""Sharing results through a DVC remote, as a researcher and a colleague would: push the
smoke run's cache to a remote (a local folder; an S3 bucket on a local S3-compatible server),
`git clone` + `dvc pull` elsewhere, and the clone is complete: `dvc status` clean, `dvc repro`
runs nothing, the outputs are the same bytes. The session's clean smoke run by DVC
(`smoke_dvc`, tests/conftest.py) serves every test here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tests.daemon import daemon, free_port
from tests.project import sh

pytestmark = pytest.mark.slow

# outputs a colleague gets from the remote (cached by DVC) or from git (small, uncached)
SHARED = [
    "results/report/comparison.csv",
    "results/adapters/dpo/seed0/round1/pytorch_lora_weights.safetensors",
    "results/eval/base/scores.parquet",
    "results/metrics/dpo.json",
    "results/plots/win_vs_base.png",
]


def commit(root: Path, message: str) -> None:
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", message], root)


def check_clone(root: Path, dest: Path, env: dict[str, str] | None = None) -> None:
    """A fresh clone plus `dvc pull` is the pushed project: nothing to rerun, same files."""
    sh(["git", "clone", "-q", str(root), str(dest)], root)
    sh(["dvc", "pull"], dest, env=env)
    assert "Data and pipelines are up to date." in sh(["dvc", "status"], dest, env=env)
    assert "Running stage" not in sh(["dvc", "repro"], dest, env=env)
    for f in SHARED:
        assert (dest / f).read_bytes() == (root / f).read_bytes(), f


def test_local_remote_push_then_clone_and_pull(smoke_dvc, tmp_path):
    store = tmp_path / "store"
    sh(["dvc", "remote", "add", "-d", "store", str(store)], smoke_dvc)
    commit(smoke_dvc, "a local DVC remote")
    sh(["dvc", "push"], smoke_dvc)
    assert any(store.rglob("*"))
    check_clone(smoke_dvc, tmp_path / "clone")


def test_s3_remote_push_then_clone_and_pull(smoke_dvc, tmp_path):
    """The same through S3's API: dvc-s3 against moto's S3 server (in memory) on 127.0.0.1."""
    pytest.importorskip("dvc_s3", reason="pip install -e '.[dev]' installs dvc-s3")
    pytest.importorskip("moto.server", reason="pip install -e '.[dev]' installs moto[server]")
    import boto3

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    with daemon([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], url):
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
        s3.create_bucket(Bucket="lab")
        sh(["dvc", "remote", "add", "-d", "s3store", "s3://lab/diffpref"], smoke_dvc)
        sh(["dvc", "remote", "modify", "s3store", "endpointurl", url], smoke_dvc)
        commit(smoke_dvc, "an S3 DVC remote")
        sh(["dvc", "push"], smoke_dvc, env=env)
        assert s3.list_objects_v2(Bucket="lab", Prefix="diffpref/")["KeyCount"] > 0
        check_clone(smoke_dvc, tmp_path / "clone", env)
