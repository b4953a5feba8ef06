"""A real ``mlflow server`` on 127.0.0.1 (over a project's SQLite store, or a PostgreSQL one
with its own artifact store), for tests that read what a person would browse (REST API).
Bounded: it is stopped when the ``with`` block ends."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.daemon import daemon, free_port


def serve(store: Path, timeout: float = 90):
    """``mlflow server`` over the SQLite file ``store``; yields its base URL."""
    return server(f"sqlite:///{store}", timeout=timeout)


@contextmanager
def server(backend: str, artifacts: Path | None = None, timeout: float = 90) -> Iterator[str]:
    """``mlflow server`` over the backend store URI ``backend``, serving the artifacts it
    stores under ``artifacts`` (when given); yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend]
    cmd += ["--artifacts-destination", str(artifacts)] if artifacts else []
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job workers: starts faster
    with daemon(cmd, f"{url}/health", env, timeout):
        yield url


def api(url: str, path: str, body: dict | None = None) -> dict:
    """One REST call (GET without a body, POST with one)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())
